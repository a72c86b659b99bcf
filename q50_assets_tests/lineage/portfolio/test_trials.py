"""The trial ledger's rules: which settings make a configuration, the rows one run adds, the
deflated Sharpe's trial count; and the portfolio step recording the run's trials before the DSR."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from q50_assets.lineage.backtest.step import GROSS_VARIANTS

from q50_assets.lineage.portfolio.portfolio import dsr_trials
from q50_assets.lineage.portfolio.step import report_step
from q50_assets.lineage.portfolio.trials import (EXCLUDED_SECTIONS, RESULT_SECTIONS, config_hash, count_trials,
                                                 result_settings, trial_rows)
from q50_assets.settings import Settings
from q50_assets.storage.project_tables import ProjectTables
from q50_assets_tests.lineage.portfolio.test_portfolio import _results, _with_evidence


# Assembled at run time: no URL with a password sits in a committed file.
HIDDEN = "hidden-part"
URL_WITH_LOGIN = "postgresql://reader:" + HIDDEN + "@db.example/collector"


def _settings(**sections) -> Settings:
    return Settings.model_validate(sections)


def test_every_setting_is_classified_and_only_result_settings_change_the_hash():
    assert set(RESULT_SECTIONS) | set(EXCLUDED_SECTIONS) == set(Settings.model_fields)
    assert not set(RESULT_SECTIONS) & set(EXCLUDED_SECTIONS)
    base = config_hash(_settings())
    assert len(base) == 64 and base == config_hash(_settings())
    # Paths, credentials, batching, automation, intervals and the permutation draws change no trade.
    for unchanged in ({"data_dir": "/elsewhere"}, {"database": {"url": URL_WITH_LOGIN}},
                      {"batches": {"pools_per_run": 7, "runs_at_once": 3}},
                      {"automation": {"nightly": {"hour_utc": 5}}}, {"execution": {"executor": "celery"}},
                      {"evaluation": {"bootstrap_samples": 5000, "prior_configurations": 9}},
                      {"nautilus_trader": {"backtest": {"permutations": 2000, "permutation_seed": 1}}}):
        assert config_hash(_settings(**unchanged)) == base, unchanged
    from_database = {"signal_source": "database"}
    with_uri = {**from_database, "database_uri": URL_WITH_LOGIN}
    assert (config_hash(_settings(nautilus_trader={"strategy_config": with_uri}))
            == config_hash(_settings(nautilus_trader={"strategy_config": from_database})))
    for changed in ({"timeframe": "4h"}, {"signals": {"swap_fee": 0.003}}, {"model": {"seed": 1}},
                    {"nautilus_trader": {"backtest": {"fill_latency_bars": 2}}},
                    {"nautilus_trader": {"risk_management": {"max_position_size": 0.3}}}):
        assert config_hash(_settings(**changed)) != base, changed
    assert HIDDEN not in str(result_settings(_settings(nautilus_trader={"strategy_config": with_uri})))


def test_trial_rows_one_per_q50_variant_on_the_evidence_window():
    from q50_assets.lineage.portfolio.portfolio import q50_round_trip_counts, stored_evidence

    results = _with_evidence(_results(), ["A", "B"])
    bar_returns, trips, _ = stored_evidence(results, ["A", "B"])
    rows = trial_rows(bar_returns, _settings(), trips, q50_round_trip_counts(results, ["A", "B"]))
    assert sorted(rows["variant"]) == sorted(v for v in bar_returns["A"].columns
                                             if v.startswith("q50") and v not in GROSS_VARIANTS)
    assert (rows["config_hash"] == config_hash(_settings())).all() and (rows["pools"] == 2).all()
    grid = bar_returns["A"].index
    assert (rows["window_start"] == grid.min()).all() and (rows["window_end"] == grid.max()).all()
    q50 = rows.set_index("variant").loc["q50"]
    assert q50["round_trips"] == 6 and q50["mean_round_trip_return"] == pytest.approx(trips["net_return"].mean())
    assert rows.set_index("variant")["mean_round_trip_return"].drop("q50").isna().all()  # not stored: not made up
    assert trial_rows({}, _settings()).empty


def test_trial_count_is_distinct_configurations_times_variants_plus_prior():
    ledger = pd.DataFrame({"config_hash": ["a", "a", "b", "b", "a"], "variant": ["q50", "q50_close", "q50", "q50", "q50"]})
    assert count_trials(ledger, 0)["trials"] == 3 and count_trials(ledger, 4)["trials"] == 7
    assert count_trials(ledger.iloc[:0], 0)["trials"] == 1
    assert dsr_trials(_settings(), ledger)["trials"] == 3
    assert dsr_trials(_settings())["trials"] == 5  # no ledger: this run's q50 variants, the horizon rule included


class _Files:
    def write(self, report, name="backtest_portfolio"):
        return Path("report.html")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_report_step_records_the_runs_trials_before_the_dsr(collector_url):
    tables = ProjectTables(url=collector_url)
    results = _with_evidence(_results(), ["A", "B"])
    settings = _settings(evaluation={"bootstrap_samples": 200, "prior_configurations": 1})
    report, facts, _ = report_step(results, None, tables, settings, _Files())
    # Five q50 variants (the horizon rule among them; not the zero-cost replays) of one configuration
    # in the ledger, plus the one prior configuration.
    assert facts["trials_detail"]["ledger_trials"] == 5 and facts["trials"] == 6
    assert (report.tables["headline"]["trials"] == 6).all()
    assert "Trials counted by the deflated Sharpe" in report.markdown and len(report.tables["trials"]) == 5
    # The same configuration again: no new trial. Another threshold: five more.
    _, again, _ = report_step(results, None, tables, settings, _Files())
    assert again["trials"] == 6
    other = _settings(evaluation={"bootstrap_samples": 200, "prior_configurations": 1},
                      signals={"base_threshold": 0.001})
    report, third, _ = report_step(results, None, tables, other, _Files())
    assert third["trials_detail"]["ledger_configurations"] == 2 and third["trials"] == 11
    assert np.isfinite(report.tables["headline"].loc[("all pools", "buy_and_hold"), "dsr"])
