"""The deployment's daemons, tick by tick, on a real PostgreSQL collector played hour by hour.

The collector's state 30 hours before the sample's end (a calendar cut of eight pools' hourly
bars) -> the sensor daemon's tick asks for the pools' first refresh, then for the first model -> the
asset daemon's tick asks for every pool's signals, backtests and trading history (a backfill, which
the backfill daemon's ticks run), then the pooled stages -> three collector runs, one hour each,
each followed by ticks until nothing more happens: every pool with a new bar is refreshed by a
sensor run, the pooled stages follow -> with no collector run, a tick launches nothing.

Every run here is launched by a daemon's own code (Dagster's sensor, asset and backfill daemon
iterations, benchmarks/daemon_ticks.py), the first model's training included (the sensor asks for
it once every pool is refreshed).
"""

from __future__ import annotations

import time

import pandas as pd
import pytest
from dagster import AssetKey, AssetRecordsFilter
from sqlalchemy import delete

from benchmarks.daemon_ticks import DaemonTicks, check_internals, daemon_instance
from q50_assets.automation.jobs import MODEL_DEPENDENT_ASSETS, NEEDS_NO_MODEL_ASSETS
from q50_assets.automation.runs import registered_pools, request_pools
from q50_assets.automation.sensors import NEXT_FOLD
from q50_assets.db.collector_models import ohlcv_data
from q50_assets.db.engine import get_engine
from q50_assets.db.sample_loader import HOUR, calendar_cut, load_sample, replay_held_back_bars
from q50_assets.lineage.common.conditions import TRIGGER_TAG
from q50_assets_tests.automation.test_sensor_loop import POOLS

POOLED = ("signal_evidence", "basket_backtest", "backtest_portfolio")
PER_POOL_AFTER_MODEL = ("q50_signals", "backtest_results", "q50_trading_history")
# The eight pools' last hourly bars open at 2025-09-28 06:00-07:00 UTC: cut 30 hours before the later.
CUT = int(pd.Timestamp("2025-09-27 01:00", tz="UTC").timestamp())


def _pools_of(run, order: list[str]) -> set[str]:
    return set(request_pools(run.tags, order))


def _latest_run_of(instance, asset: str, pool: str | None = None) -> str:
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[pool] if pool else None), limit=1).records
    assert records, f"{asset} {pool or ''} never materialized"
    return records[0].run_id


@pytest.mark.parametrize("backend", ["postgresql"])
def test_the_daemons_follow_the_collector_hour_by_hour(collector_url, tmp_path, backend):
    engine = get_engine(collector_url)
    # The collector as it was at CUT: the sample cut by the calendar, only these pools collected hourly.
    with engine.begin() as conn:
        conn.execute(delete(ohlcv_data))
    hold_back_hours = (calendar_cut(0) - CUT) // HOUR  # calendar_cut(0): the sample's newest hourly bar
    load_sample(engine, hold_back_hours=hold_back_hours)
    with engine.begin() as conn:
        conn.execute(delete(ohlcv_data).where(ohlcv_data.c.timeframe == "1h", ohlcv_data.c.pool_id.not_in(POOLS)))

    data_dir = tmp_path / "data"
    environ = {"Q50_DATABASE_URL": collector_url, "Q50_DATA_DIR": str(data_dir)}
    with daemon_instance() as instance, DaemonTicks(instance, environ=environ) as ticks:
        # The first ticks: every pool is new, no model yet, so bars, trades, features and regimes only;
        # once they are all refreshed the sensor asks for the first model, and the automation does the rest.
        first = ticks.tick_until_quiet()
        print(f"first materialization, {first.seconds:.1f} s:\n{first.describe()}")
        order = registered_pools(instance)
        assert set(order) == set(POOLS)
        sensor_run, model_run = first.runs_by("sensor")  # one batch (pools_per_run is 100), then the model
        assert sensor_run.sensor_name == "new_collector_bars"
        assert sensor_run.tags[TRIGGER_TAG] == "new_pool" and _pools_of(sensor_run, order) == set(POOLS)
        assert set(sensor_run.assets) == set(NEEDS_NO_MODEL_ASSETS)
        assert sensor_run.status == "SUCCESS"
        assert model_run.job_name == "train_q50_model" and model_run.tags[TRIGGER_TAG] == NEXT_FOLD
        assert model_run.status == "SUCCESS"
        (backfill,) = first.backfills  # the automation's many partitions: one backfill
        backfill_runs = [r for r in first.runs if r.backfill_id == backfill]
        assert backfill_runs == first.runs_by("backfill")
        assert all(r.status == "SUCCESS" and r.from_automation for r in backfill_runs)
        covered = {a: set() for a in PER_POOL_AFTER_MODEL}
        for run in backfill_runs:
            for asset in set(run.assets) & set(PER_POOL_AFTER_MODEL):
                covered[asset] |= _pools_of(run, order)
        assert covered == {a: set(POOLS) for a in PER_POOL_AFTER_MODEL}
        # Then the pooled stages, each once, requested by the automation itself (one partition-less run).
        pooled_runs = {a: [r for r in first.runs if a in r.assets] for a in POOLED}
        assert all(len(runs) == 1 for runs in pooled_runs.values()), pooled_runs
        assert {r.run_id for runs in pooled_runs.values() for r in runs} == {r.run_id for r in
                                                                             first.runs_by("automation")}
        assert all(r.from_automation and not r.backfill_id for r in first.runs_by("automation"))

        # The collector's next three runs, an hour each.
        for hour in range(3):
            inserted = replay_held_back_bars(engine, hours=1, pool_ids=POOLS)
            assert inserted and set(inserted) <= set(POOLS) and set(inserted.values()) == {1}
            started = time.perf_counter()
            reaction = ticks.tick_until_quiet()
            seconds = time.perf_counter() - started
            print(f"collector run {hour + 1}: {len(inserted)} pools with a new bar -> {seconds:.1f} s until quiet "
                  f"({reaction.rounds} rounds)\n{reaction.describe()}")
            sensor_runs = reaction.runs_by("sensor")
            assert sensor_runs and all(r.tags[TRIGGER_TAG] == "new_bars" and r.sensor_name == "new_collector_bars"
                                       for r in sensor_runs)
            assert set().union(*(_pools_of(r, order) for r in sensor_runs)) == set(inserted)
            assert all(set(r.assets) == {*NEEDS_NO_MODEL_ASSETS, *MODEL_DEPENDENT_ASSETS} for r in sensor_runs)
            # Each pool's outputs come from this hour's sensor run; the pooled stages follow once.
            ids = {r.run_id for r in sensor_runs}
            for pool in inserted:
                assert {_latest_run_of(instance, a, pool) for a in ("ohlcv_bars", *PER_POOL_AFTER_MODEL)} <= ids
            follow_ups = [r for r in reaction.runs if r.run_id not in ids]
            assert follow_ups == reaction.runs_by("automation") and all(r.from_automation for r in follow_ups)
            assert sorted(a for r in follow_ups for a in r.assets) == sorted(POOLED)
            assert all(_latest_run_of(instance, a) in {r.run_id for r in follow_ups} for a in POOLED)

        # No collector run: the sensor skips, saying why, and nothing is launched.
        idle = ticks.tick_until_quiet()
        assert idle.rounds == 1 and not idle.runs and not idle.backfills
        sensor_tick, automation_tick, _ = idle.ticks
        assert sensor_tick.status == "SKIPPED" and "has not run since the last tick" in sensor_tick.skip_reason
        assert automation_tick.status == "SKIPPED"


def test_the_dagster_internals_the_driver_uses_are_there():
    check_internals()  # names the private Dagster function or class an upgrade moved or changed

