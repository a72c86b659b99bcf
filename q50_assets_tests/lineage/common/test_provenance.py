"""Provenance: the database named without credentials, the window, the folds, the result settings' hash."""

from types import SimpleNamespace

import pandas as pd

from q50_assets.lineage.common.provenance import database_label, model_folds_label, provenance, window_label
from q50_assets.settings import Settings

HIDDEN = "hidden-part"  # stands for a password: it must never reach a label


def test_the_database_is_named_without_its_credentials():
    url = ("postgresql+psycopg2://trader:" + HIDDEN + "@db.internal:5433/collector?sslpassword=" + HIDDEN)
    label = database_label(url)
    assert label == "postgresql+psycopg2://db.internal:5433/collector"
    assert HIDDEN not in label and "trader" not in label
    assert database_label("sqlite:////data/collector.sqlite") == "sqlite:////data/collector.sqlite"


def test_provenance_names_window_folds_run_and_the_ledgers_hash():
    from q50_assets.lineage.portfolio.trials import config_hash

    settings = Settings()
    start, end = pd.Timestamp("2025-09-01 10:00", tz="UTC"), pd.Timestamp("2025-10-05 12:00", tz="UTC")
    folds = pd.DataFrame({"boundary": [start, end]})
    model = SimpleNamespace(run_id="r1", result=SimpleNamespace(folds=folds))
    made = provenance(settings, window=(start, end), model_folds=model_folds_label(model), run_id="run-9")
    assert made["data_window"] == "2025-09-01 10:00 UTC to 2025-10-05 12:00 UTC"
    assert made["model_folds"].startswith("2 folds, boundaries 2025-09-01 10:00 UTC") and "model run r1" in made["model_folds"]
    assert made["config_hash"] == config_hash(settings)[:12] and made["run_id"] == "run-9"
    other = Settings.model_validate({"signals": {"swap_fee": 0.003}})
    assert provenance(other)["config_hash"] != made["config_hash"]
    assert window_label(None, end) == "none" and model_folds_label(None) is None


def test_the_report_header_names_where_it_came_from():
    from q50_assets.lineage.common.uncertainty import BootstrapConfig
    from q50_assets.lineage.portfolio.portfolio import research_report
    from q50_assets_tests.lineage.portfolio.test_portfolio import _results, _with_evidence

    made = {"run_id": "run-9", "database": "sqlite:////x.sqlite", "data_window": "a to b", "config_hash": "abc"}
    report, _ = research_report(_with_evidence(_results(), ["A", "B"]), trials=2, bar_seconds=3600,
                                bootstrap=BootstrapConfig(bootstrap_samples=200, bootstrap_seed=0), provenance=made)
    assert "Made from: run run-9; database sqlite:////x.sqlite; data window a to b" in report.markdown
    assert "run-9" in report.html
