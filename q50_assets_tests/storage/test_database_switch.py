"""One local store per database: a checkout that ran on one collector database, then another,
then the first again, gives the first database the outputs a clean checkout gives it.

Two collector databases made from the bundled sample (the test plays the collector: each keeps
other pools' bars and trades), the lineage's own batch steps and stores
(``lineage/without_dagster.py``: the assets' steps, IO managers and QLib store) in one data dir."""

from __future__ import annotations

import shutil
import sqlite3

import pandas as pd

from q50_assets.definitions import build_resources
from q50_assets.lineage.without_dagster import run_without_dagster
from q50_assets_tests.conftest import settings_for

SIGNAL_COLUMNS = ["q10", "q50", "q90", "side", "tradeable"]


def _collector_with(sample, path, keep: slice) -> str:
    """A copy of the sample keeping only some pools' bars and trades (the others never collected)."""
    shutil.copy(sample, path)
    with sqlite3.connect(path) as con:
        pools = [p for (p,) in con.execute("SELECT DISTINCT pool_id FROM ohlcv_data ORDER BY pool_id")]
        kept = pools[keep]
        marks = ",".join("?" * len(kept))
        for table in ("ohlcv_data", "trades"):
            con.execute(f"DELETE FROM {table} WHERE pool_id NOT IN ({marks})", kept)
    return f"sqlite:///{path}"


def _run(url: str, data_dir) -> dict:
    settings = settings_for(url, data_dir)
    resources = build_resources(settings)
    resources["project_tables"].migrate()
    pools = resources["collector"].pools_with_bars(settings.timeframe)
    run = run_without_dagster(pools, resources, settings, run_id="switch")
    signals = resources["project_tables"].signal_rows_many(settings.timeframe, pools)
    frame = pd.concat({p: f[SIGNAL_COLUMNS] for p, f in signals.items() if len(f)}, names=["pool_id", "open_time"])
    predictions = run.model.result.predictions
    return {"store": settings.database_dir, "signals": frame.sort_index(),
            "model_pools": sorted(set(predictions.index.get_level_values("pool_id"))),
            "predictions": len(predictions)}


def test_switching_databases_and_back_equals_a_clean_checkout(sqlite_sample_file, tmp_path):
    url_a = _collector_with(sqlite_sample_file, tmp_path / "a.sqlite", slice(0, 8))
    url_b = _collector_with(sqlite_sample_file, tmp_path / "b.sqlite", slice(8, 16))
    shared = tmp_path / "checkout"

    first_a = _run(url_a, shared)
    b = _run(url_b, shared)
    again_a = _run(url_a, shared)
    clean_a = _run(url_a, tmp_path / "clean")

    assert first_a["store"] != b["store"] and first_a["store"] == again_a["store"]
    assert not set(first_a["model_pools"]) & set(b["model_pools"])  # never trained on the other's pools
    for run in (again_a, clean_a):
        assert run["model_pools"] == first_a["model_pools"] and run["predictions"] == first_a["predictions"]
        pd.testing.assert_frame_equal(run["signals"], first_a["signals"])
    # The store and the reports of each database are apart under the data dir.
    assert sorted(p.name for p in (shared / "databases").iterdir()) == sorted([first_a["store"].name, b["store"].name])


def test_the_store_key_ignores_credentials_and_separates_databases():
    from q50_assets.settings import database_key

    hidden = "hidden-part"  # stands for a password: the key must not depend on it, nor show it
    one = database_key("postgresql://alice:" + hidden + "@db:5432/collector")
    assert one == database_key("postgresql://bob:" + hidden[::-1] + "@db:5432/collector") and hidden not in one
    assert one != database_key("postgresql://alice@db:5432/collector_2")
    assert one != database_key("postgresql://alice@other-host:5432/collector")
    assert database_key("sqlite:////data/collector.sqlite").startswith("collector-")

