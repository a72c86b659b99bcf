"""The scale benchmarks' generator and drivers (correctness only; their speed is the benchmark's):
P4 runs the lineage's batch steps without Dagster, P5 materializes the same pools through
Dagster on PostgreSQL run storage, and both store the same results."""

import numpy as np
import pandas as pd

from q50_assets.lineage.backtest.step import variants_for
from q50_assets.settings import BacktestSettings
from q50_assets.lineage.ohlcv.rules import BarRules, validate_bars
from q50_assets.lineage.trades.rules import TradeRules, analyse_trades
from q50_assets.storage.collector import CollectorReader
from q50_assets.storage.project_tables import ProjectTables
from benchmarks.scale import (
    BARS_PER_POOL,
    END,
    TRADE_DAYS,
    _source_bars,
    run_nightly_dagster,
    run_scale,
    synthesize_pool,
    synthesize_trades,
    write_collector,
    write_trades,
)
from q50_assets_tests.conftest import create_pg_database, drop_pg_database, settings_for


def test_synthetic_pools_are_resampled_real_bars(tmp_path):
    settings = settings_for(f"sqlite:///{tmp_path / 'unused.sqlite'}", tmp_path)
    sources = _source_bars(settings, tmp_path)
    assert len(sources) >= 20  # the sample's safe pools without a rug or pump
    source = sources[0]
    bars = synthesize_pool(source, np.random.default_rng(7))
    again = synthesize_pool(source, np.random.default_rng(7))
    pd.testing.assert_frame_equal(bars, again)  # seeded: the same pools every run

    assert len(bars) == BARS_PER_POOL
    assert bars.index[-1] == END - pd.Timedelta(hours=1)
    assert (bars.index.to_series().diff().dropna() == pd.Timedelta(hours=1)).all()
    assert (bars["open"].iloc[1:].to_numpy() == bars["close"].iloc[:-1].to_numpy()).all()
    assert (bars["high"] >= bars[["open", "close"]].max(axis=1)).all()
    assert (bars["low"] <= bars[["open", "close"]].min(axis=1)).all()
    # Every synthetic log return is one of the source's (demeaned), so its spread is the source's.
    synth = np.log(bars["close"] / bars["open"]).to_numpy()
    prev = np.r_[source["open"].iloc[0], source["close"].to_numpy()[:-1]]
    real = np.log(source["close"].to_numpy() / prev)
    real = real - real.mean()
    assert np.isin(np.round(synth, 9), np.round(real, 9)).all()
    assert set(np.round(bars["volume"], 6)) <= set(np.round(source["volume"], 6))

    # Written as the collector would, read back and validated like any pool.
    db = CollectorReader(url=f"sqlite:///{tmp_path / 'collector.sqlite'}")
    kept = bars[(bars["low"].cummin() >= 0.01).cummin()]  # whatever the path, a storable stretch
    assert write_collector(db.engine, {"synthetic_poolA": kept}, {"synthetic_poolA": 1e5}, "1h") == len(kept)
    validated = validate_bars("synthetic_poolA", db.read_bars_many(["synthetic_poolA"], "1h")["synthetic_poolA"], BarRules.of(settings))
    assert validated.rows_read == len(kept)
    assert validated.outcome("ohlc_consistent").passed and validated.outcome("timestamps_aligned_unique").passed

    # Trades as the collector writes them (ids with the true epoch, block_timestamp +6 h, price_usd the
    # from-token's): they pass the trades stage's checks against the same bars, which name the shift.
    trades = synthesize_trades("synthetic_poolA", kept, np.random.default_rng(3))
    pd.testing.assert_frame_equal(trades, synthesize_trades("synthetic_poolA", kept, np.random.default_rng(3)))
    assert (trades["volume_usd"] >= 100).all() and set(trades["side"]) == {"buy", "sell"}
    assert write_trades(db.engine, trades) == len(trades) > 0
    analysis = analyse_trades("synthetic_poolA", db.read_trades_many(["synthetic_poolA"])["synthetic_poolA"], validated.bars, TradeRules.of(settings))
    assert all(c.passed for c in analysis.checks), [(c.name, c.metadata) for c in analysis.checks if not c.passed]
    assert analysis.check("clock_shift").metadata["block_timestamp_shift"] == "+6 h"
    assert analysis.usable and len(analysis.grid) <= TRADE_DAYS * 24


def test_scale_run_takes_every_pool_through_every_stage_and_dagster_stores_the_same(tmp_path, postgres_url,
                                                                                   monkeypatch):
    settings = settings_for(f"sqlite:///{tmp_path / 'unused.sqlite'}", tmp_path, Q50__BATCHES__POOLS_PER_RUN="2")
    report = run_scale(settings, 3, tmp_path / "scale")
    assert report["pools"] == report["safe_pools"] == 3
    assert report["collector_rows"] == 3 * BARS_PER_POOL
    assert report["trade_rows"] > 3 * TRADE_DAYS * 24  # a few trades per bar over the last 30 days
    assert report["pools_with_flow_features"] == report["block_timestamp_shift_named"] == 3
    assert report["bars"] == 3 * (BARS_PER_POOL - 1)  # each pool's newest bar is held back as partial
    assert report["folds"] > 70 and report["predictions"] > 0
    assert all(report["seconds"][stage] > 0 for stage in report["seconds"])
    assert report["trading_history_rows"] == report["fills_q50"] > 0
    assert report["peak_rss_mb"] > 0  # of this (pytest) process here; the benchmark runs each N alone

    # P5: the same pools through Dagster (batch runs of 2 pools, PostgreSQL run storage).
    dagster_url = create_pg_database(postgres_url)
    monkeypatch.setenv("DAGSTER_PG_URL", dagster_url.replace("postgresql://", "postgresql+psycopg2://"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))  # restored afterwards; the driver points it at its own
    try:
        nightly = run_nightly_dagster(settings, 3, tmp_path / "nightly")
    finally:
        drop_pg_database(postgres_url, dagster_url)
    assert nightly["failed_runs"] == []
    assert nightly["phases"] == {name: {"seconds": nightly["phases"][name]["seconds"], "runs": runs} for name, runs in
                                 (("bars, trades, features, regimes", 2), ("model", 1),
                                  ("signals, backtests, trading history", 2), ("portfolio", 1))}
    functions_db = ProjectTables(url=f"sqlite:///{tmp_path / 'scale' / 'collector.sqlite'}")
    dagster_db = ProjectTables(url=f"sqlite:///{tmp_path / 'nightly' / 'collector.sqlite'}")
    ignore = ["id", "created_at", "backtest_run_id"]
    a = functions_db.latest_backtest_results("1h").drop(columns=ignore).sort_values(["pool_id", "variant"])
    b = dagster_db.latest_backtest_results("1h").drop(columns=ignore).sort_values(["pool_id", "variant"])
    assert len(a) == 3 * len(variants_for(BacktestSettings().reserve_sensitivity))  # every variant of each pool
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))
