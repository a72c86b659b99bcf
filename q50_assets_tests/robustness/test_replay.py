"""Incremental equals from scratch: the collector replayed hour by hour through the deployment's
daemons, with faults, builds the tables a run from scratch builds on the final database.

On a PostgreSQL server this module runs (and kills) itself:

1. The collector as it was 48 hours before the sample's end (a calendar cut), four real pools
   collected hourly. The daemons alone bring the lineage up: the sensor's first refresh, the first
   model (the sensor asks for it once every pool is refreshed), every pool's signals, backtests
   and trading history (the automation's backfill), the pooled stages.
2. 48 collector runs, one hour each (``replay_held_back_bars(hours=1)``), each followed by daemon
   ticks until nothing more happens (sensor, asset, backfill and run-monitoring daemons:
   benchmarks/daemon_ticks.py). The pools' bars cross two UTC midnights, the walk-forward's fold
   boundaries: the sensor asks for a retrain each time. Three of the runs carry a fault:
   * the collector writes the next hour while a refresh run reads the bars;
   * the PostgreSQL server is killed at a trading history write (the run fails; restarted);
   * the run's process is killed half-way through its batch (a forked child running the sensor's
     tick and its run); the run monitor marks the run failed and the next tick repairs the pools.
3. The final database is copied without the project's rows and built from scratch (a fresh
   data folder and Dagster instance, every stage at once as ``q50 demo`` runs it).

Asserted: regimes, signals, each pool's latest backtest results and its trading history are
identical row for row (ids, run ids and creation times aside: lineage_tables.py); no duplicated
or orphaned rows; an ordinary hour refreshes exactly the pools the collector wrote (nothing for
the others); memory does not grow past 10 % after the warm-up. The figures are printed.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterRunStatus, RunsFilter
from sqlalchemy import event

from benchmarks.daemon_ticks import DaemonTicks, Quiet, daemon_instance
from benchmarks.replay import Replay, build_from_scratch, curve, environ_for, prepare_collector, scratch_copy
from q50_assets.automation.sensors import NEXT_FOLD, REPAIR
from q50_assets.db.engine import get_engine
from q50_assets.db.sample_loader import replay_held_back_bars
from q50_assets.lineage.common.conditions import TRIGGER_TAG
from q50_assets.settings import load_settings
from q50_assets.storage.collector import CollectorReader
from q50_assets_tests.automation.lineage_tables import differences, integrity_faults, lineage_tables
from q50_assets_tests.conftest import create_pg_database
from q50_assets_tests.robustness import test_faults

# Four real pools: two collected to the sample's end, one whose bars stop 4 hours before it and one
# an hour before it (hours with no bar for them: nothing of theirs may be recomputed then).
POOLS = [
    "solana_4w2cysotX6czaUGmmWg13hDpY4QEMG2CzeKYEQyK9Ama",
    "solana_Q2sPHPdUWFMg7M7wwrQKLrn619cAucfRsmhVJffodSp",
    "solana_99D5oi479AxQpQcfVKkTK6E7r1Y8KJSKhaA9dUBws1vd",
    "solana_4bzFMpWDVXfRhaY3Xg7nGUbHDSquY5MPTvib1n8Vfmno",
]
RUNS = 48
WARM_UP = 6
READ_WHILE_WRITING, SERVER_KILLED, PROCESS_KILLED = 12, 24, 36
# This module's own PostgreSQL server (module-scoped), which the test kills and restarts: never the suite's.
pg = test_faults.pg
SETTINGS = {
    "Q50__MODEL__INITIAL_TRAIN_BARS": "480",
    "Q50__MODEL__NUM_BOOST_ROUND": "60",
    # Deep pools and no variance premium: the rules trade, so trading history has rows to compare.
    "Q50__NAUTILUS_TRADER__BACKTEST__FALLBACK_RESERVE_USD": "2000000",
    "Q50__SIGNALS__VARIANCE_MULTIPLIER": "0",
    "Q50__NAUTILUS_TRADER__BACKTEST__RESERVE_SENSITIVITY": "[]",
}


def _joined(*quiets: Quiet) -> Quiet:
    return Quiet([t for q in quiets for t in q.ticks], sum(q.rounds for q in quiets), sum(q.seconds for q in quiets))


def _read_while_writing(replay: Replay, engine):
    """The collector's next hour lands between a refresh run's read of the bars and its end."""
    original = CollectorReader.read_bars_many
    wrote = {}

    def read_then_collector_writes(self, pool_ids, timeframe):
        bars = original(self, pool_ids, timeframe)
        if not wrote:
            wrote.update(replay_held_back_bars(engine, hours=1, pool_ids=POOLS))
        return bars

    def react():
        CollectorReader.read_bars_many = read_then_collector_writes
        try:
            first = replay.ticks.sensor_tick()  # its run reads, then the collector writes
        finally:
            CollectorReader.read_bars_many = original
        assert wrote, "the collector did not write during the run"
        return _joined(Quiet([first], 0, first.seconds), replay.ticks.tick_until_quiet(max_rounds=30))
    return react


def _server_killed_at_history_write(replay: Replay, pg, url):
    engine = get_engine(url)
    seen = []

    def kill_at_insert(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO Q50_TRADING_HISTORY") and pg.running and not seen:
            seen.append(statement)
            pg.kill()

    def react():
        event.listen(engine, "before_cursor_execute", kill_at_insert)
        try:
            broken = replay.ticks.tick_until_quiet(max_rounds=30, raise_on_run_failure=False)
        finally:
            event.remove(engine, "before_cursor_execute", kill_at_insert)
            if not pg.running:
                pg.restart()
        assert seen, "no trading history was written"
        assert any(r.failed for r in broken.runs)
        return _joined(broken, replay.ticks.tick_until_quiet(max_rounds=30))
    return react


def _process_killed_mid_batch(replay: Replay, url):
    """A forked child runs the sensor's tick (and so its run); killed once the run has stored its
    first asset. The deployment's monitor then marks the run failed and the sensor repairs."""
    instance = replay.instance

    def react():
        before = set(instance.get_run_ids())
        get_engine(url).dispose(close=False)  # the child must not share the parent's connections
        pid = os.fork()
        if pid == 0:  # the run's process
            try:
                get_engine(url).dispose(close=False)
                replay.ticks.sensor_tick()
            finally:
                os._exit(0)
        deadline = time.monotonic() + 120
        killed_run = None
        while time.monotonic() < deadline and killed_run is None:
            for run in instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED])):
                if run.run_id not in before and instance.fetch_materializations(
                        AssetRecordsFilter(asset_key=AssetKey("ohlcv_bars")), limit=1).records[0].run_id == run.run_id:
                    killed_run = run
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        assert killed_run is not None, "the child's run never stored its first asset"
        assert instance.get_run_by_id(killed_run.run_id).status == DagsterRunStatus.STARTED  # as a kill leaves it
        time.sleep(1.1)  # past the test instance's maximum runtime (1 s): the monitor's next tick fails it
        quiet = replay.ticks.tick_until_quiet(max_rounds=30)
        assert instance.get_run_by_id(killed_run.run_id).status == DagsterRunStatus.FAILURE
        repairs = [r for r in quiet.runs_by("sensor") if r.tags.get(TRIGGER_TAG) == REPAIR]
        assert repairs and all(r.status == "SUCCESS" for r in repairs)
        return quiet
    return react


@pytest.mark.parametrize("backend", ["postgresql"])
def test_replayed_collector_through_the_daemons_equals_a_build_from_scratch(pg, tmp_path, backend):
    url = create_pg_database(pg.url)
    engine = get_engine(url)
    prepare_collector(engine, POOLS, RUNS)
    environ = environ_for(url, tmp_path / "replay", **SETTINGS)
    monitor = {"run_monitoring": {"enabled": True, "max_runtime_seconds": 1, "poll_interval_seconds": 1}}
    with daemon_instance(monitor) as instance, DaemonTicks(instance, environ=environ) as ticks:
        replay = Replay(ticks, engine, POOLS)
        up = replay.bring_up()
        print(f"bring-up by the daemons, {up.seconds:.1f} s:\n{up.describe()}")
        trained = [r for r in up.runs if r.job_name == "train_q50_model"]
        assert len(trained) == 1 and trained[0].sensor_name == "new_collector_bars"  # the first model, unasked
        assert trained[0].tags[TRIGGER_TAG] == NEXT_FOLD and up.backfills

        faults = {READ_WHILE_WRITING: ("collector wrote while a run read", _read_while_writing(replay, engine)),
                  SERVER_KILLED: ("server killed at a trading history write", _server_killed_at_history_write(replay, pg, url)),
                  PROCESS_KILLED: ("run process killed mid-batch", _process_killed_mid_batch(replay, url))}
        for index in range(1, RUNS + 1):
            name, react = faults.get(index, ("", None))
            run = replay.collector_run(fault=name, react=react)
            print(run.summary())
            if not name and not run.retrained and run.pools_written:
                # An ordinary hour: exactly the pools with a new bar are refreshed, nothing else runs per pool.
                assert run.sensor_pools == {"new_bars": run.pools_written}, run.summary()
            if not run.pools_written:
                break  # the sample's end
        figures = curve(replay.runs, WARM_UP)
        summary = {k: v for k, v in figures.items() if k != "runs"}
        print(f"replay figures: {summary}")
        assert figures["collector_runs"] >= RUNS - 1  # one hour is written twice by the read-while-writing fault
        assert figures["retrains"] == 2  # the two UTC midnights (daily folds)
        assert figures["rss_mb"]["growth_after_warm_up"] <= 0.10, figures["rss_mb"]
        assert integrity_faults(engine) == dict.fromkeys(integrity_faults(engine), 0)
        incremental = lineage_tables(engine)
        assert all(len(t) for name, t in incremental.items()), {n: len(t) for n, t in incremental.items()}

    scratch_url = scratch_copy(pg.url, url)
    scratch_settings = load_settings(environ=environ_for(scratch_url, tmp_path / "scratch", **SETTINGS))
    with daemon_instance() as fresh:
        built = build_from_scratch(scratch_settings, fresh, POOLS)
        assert not built.failed_runs(), built.failed_runs()
    scratch = lineage_tables(get_engine(scratch_url))
    assert differences(incremental, scratch) == dict.fromkeys(incremental, "")
