"""The new-collector-bars sensor against a real collector database (SQLite and PostgreSQL):
what it requests, when it skips and why, and that a dead database never crashes a tick."""

from __future__ import annotations

import pytest
from dagster import AssetKey, SensorResult, SkipReason, build_sensor_context, instance_for_test

from q50_assets.lineage.common.partitions import POOLS_PARTITION_NAME
from q50_assets.lineage.common.conditions import TRIGGER_TAG
from q50_assets.automation.runs import registered_pools, request_pools
from q50_assets.db.engine import get_engine
from q50_assets.definitions import build_definitions
from q50_assets.storage.collector import CollectorReader
from q50_assets_tests.collector_sim import bars_of, record_collector_run, revise_bar
from q50_assets_tests.conftest import settings_for

POOL = "solana_4qs2R1Gsj2Lpy4ewV9hfVerNk2h4Qx3ZEkmJyKLywvb3"


class Ticker:
    """Ticks the sensor the way the daemon does: cursor carried over, partitions added."""

    def __init__(self, url: str, data_dir, instance, **env):
        self.settings = settings_for(url, data_dir, **env)
        self.sensor = build_definitions(self.settings).resolve_sensor_def("new_collector_bars")
        self.db = CollectorReader(url=url)
        self.instance = instance
        self.cursor = None

    def tick(self):
        ctx = build_sensor_context(instance=self.instance, cursor=self.cursor, resources={"collector": self.db})
        result = self.sensor(ctx)
        if isinstance(result, SensorResult):
            self.cursor = result.cursor
            for request in result.dynamic_partitions_requests or []:
                self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        return result

    def pools(self, request) -> list[str]:
        """The pools a run request covers (its partition range)."""
        return request_pools(request.tags, registered_pools(self.instance))

    def requested(self, result) -> dict[str, str]:
        """Pool -> the trigger tag of the run requested for it."""
        out = {}
        for request in result.run_requests:
            for pool in self.pools(request):
                assert pool not in out, f"{pool} requested twice"
                out[pool] = request.tags[TRIGGER_TAG]
        return out


@pytest.fixture
def ticker(collector_url, tmp_path):
    with instance_for_test() as instance:
        yield Ticker(collector_url, tmp_path / "data", instance)


def test_first_tick_registers_every_pool_and_requests_runs_without_a_model(ticker):
    result = ticker.tick()
    pools = CollectorReader(url=ticker.db.url).pools_with_bars("1h")
    assert len(pools) == 62
    assert sorted(ticker.instance.get_dynamic_partitions(POOLS_PARTITION_NAME)) == pools
    # Every pool, in batch runs of at most batches.pools_per_run (100): one run here.
    assert ticker.requested(result) == dict.fromkeys(pools, "new_pool")
    assert len(result.run_requests) == 1 and result.run_requests[0].tags["q50/pools"] == "62"
    # No q50_model yet: only the stages that do not need one.
    assert {tuple(k.to_user_string() for k in r.asset_selection) for r in result.run_requests} == {
        ("ohlcv_bars", "pool_trades", "qlib_features", "regime_labels")}


def test_batches_follow_pools_per_run_and_never_cover_an_unrequested_pool(collector_url, tmp_path):
    with instance_for_test() as instance:
        ticker = Ticker(collector_url, tmp_path / "data", instance, Q50__BATCHES__POOLS_PER_RUN="25")
        first = ticker.tick()
        assert [len(ticker.pools(r)) for r in first.run_requests] == [25, 25, 12]
        order = registered_pools(instance)
        engine = get_engine(ticker.db.url)
        revised = [order[3], order[4], order[40]]  # two neighbours and one far away
        for pool in revised:
            newest = bars_of(engine, pool).iloc[-1]
            revise_bar(engine, pool, int(newest["timestamp"]), volume_usd=float(newest["volume_usd"]) + 1)
        record_collector_run(engine)
        result = ticker.tick()
        assert [ticker.pools(r) for r in result.run_requests] == [[order[3], order[4]], [order[40]]]


def test_unchanged_collector_skips_with_the_reason(ticker):
    ticker.tick()
    skipped = ticker.tick()
    assert isinstance(skipped, SkipReason)
    assert "has not run since the last tick (run_count 38" in skipped.skip_message

    # The collector ran but wrote nothing new: the bars are compared, and the tick still skips.
    record_collector_run(get_engine(ticker.db.url))
    result = ticker.tick()
    assert isinstance(result, SensorResult) and not result.run_requests
    assert "no new or revised 1h bars in 62 pools" in result.skip_reason.skip_message


def test_a_revision_in_place_is_seen_and_its_run_key_is_stable(ticker):
    engine = get_engine(ticker.db.url)
    ticker.tick()
    newest = bars_of(engine, POOL).iloc[-1]
    revise_bar(engine, POOL, int(newest["timestamp"]), close_price=float(newest["close_price"]) * 1.01)
    record_collector_run(engine)
    before = ticker.cursor
    result = ticker.tick()
    assert ticker.requested(result) == {POOL: "revised"}

    # The same collector state asked again (a tick whose cursor was lost) gives the same run key,
    # so Dagster launches it once.
    ticker.cursor = before
    again = ticker.tick()
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in result.run_requests]

    # A bar older than the re-read window is not compared (documented: revision_window_bars).
    old = bars_of(engine, POOL).iloc[-10]
    revise_bar(engine, POOL, int(old["timestamp"]), volume_usd=float(old["volume_usd"]) + 1)
    record_collector_run(engine)
    assert not ticker.tick().run_requests


def test_with_a_model_every_stage_is_requested(ticker):
    ticker.instance.report_runless_asset_event(
        __import__("dagster").AssetMaterialization(asset_key=AssetKey("q50_model")))
    result = ticker.tick()
    assert {tuple(k.to_user_string() for k in r.asset_selection) for r in result.run_requests} == {
        ("ohlcv_bars", "pool_trades", "qlib_features", "regime_labels", "q50_signals", "backtest_results",
         "q50_trading_history")}


@pytest.mark.parametrize("backend", ["sqlite"])
def test_unreachable_database_skips_with_the_error_and_recovers(tmp_path, sqlite_sample_file, backend):
    import shutil

    path = tmp_path / "collector.sqlite"
    shutil.copy(sqlite_sample_file, path)
    with instance_for_test() as instance:
        ticker = Ticker(f"sqlite:///{path}", tmp_path / "data", instance)
        ticker.tick()
        cursor = ticker.cursor
        get_engine(ticker.db.url).dispose()
        path.rename(tmp_path / "moved.sqlite")
        path.mkdir()  # a directory where the database file was: SQLite cannot open it
        skipped = ticker.tick()
        assert isinstance(skipped, SkipReason)
        assert "unreachable (OperationalError" in skipped.skip_message and str(path) in skipped.skip_message
        assert ticker.cursor == cursor  # nothing learnt from a failed tick
        path.rmdir()
        (tmp_path / "moved.sqlite").rename(path)
        assert isinstance(ticker.tick(), SkipReason)  # back, and nothing changed meanwhile


def test_unreachable_postgresql_skips_without_leaking_the_password(tmp_path):
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with instance_for_test() as instance:
        ticker = Ticker(f"postgresql://q50_reader:s3cret-pw@127.0.0.1:{port}/collector", tmp_path / "data", instance)
        skipped = ticker.tick()
    assert isinstance(skipped, SkipReason)
    assert f"127.0.0.1:{port}" in skipped.skip_message and "unreachable (OperationalError" in skipped.skip_message
    assert "s3cret-pw" not in skipped.skip_message
    assert ticker.cursor is None


def test_a_fresh_sensor_does_not_rerun_pools_materialized_from_the_same_rows(ticker):
    engine = get_engine(ticker.db.url)
    ticker.instance.add_dynamic_partitions(POOLS_PARTITION_NAME, [POOL])
    defs = build_definitions(ticker.settings)
    ran = defs.resolve_job_def("refresh_pools").execute_in_process(
        instance=ticker.instance, partition_key=POOL, asset_selection=[AssetKey("ohlcv_bars")])
    assert ran.success

    first = ticker.tick()  # no cursor: every pool is new, but POOL was just materialized from these rows
    requested = ticker.requested(first)
    assert POOL not in requested and len(requested) == 61

    # Once its bars change, it is requested like any other pool.
    newest = bars_of(engine, POOL).iloc[-1]
    revise_bar(engine, POOL, int(newest["timestamp"]), volume_usd=float(newest["volume_usd"]) + 5)
    record_collector_run(engine)
    assert ticker.requested(ticker.tick()) == {POOL: "revised"}
    # And a fresh sensor again: the materialization no longer matches the rows, so POOL is new.
    ticker.cursor = None
    assert POOL in ticker.requested(ticker.tick())


def _run_over(instance, pools: list[str], status, trigger: str = "new_bars"):
    """A refresh run over ``pools`` as the run storage keeps it (its process is gone)."""
    from dagster._core.test_utils import create_run_for_test

    from q50_assets.automation.runs import range_tags

    return create_run_for_test(instance, job_name="refresh_pools", status=status,
                               tags={**range_tags(pools), TRIGGER_TAG: trigger})


def test_a_run_that_did_not_finish_is_repaired_at_the_next_tick_a_few_times_at_most(ticker):
    from dagster import DagsterRunStatus

    from q50_assets.automation.sensors import REPAIR

    ticker.tick()
    order = registered_pools(ticker.instance)
    killed = order[:3]
    # The run that refreshed them was killed half-way; the run monitor marked it failed.
    _run_over(ticker.instance, killed, DagsterRunStatus.FAILURE)
    _run_over(ticker.instance, order[3:5], DagsterRunStatus.SUCCESS)
    result = ticker.tick()  # the collector has not run: only the repair is asked for
    assert ticker.requested(result) == dict.fromkeys(killed, REPAIR)
    assert [r.run_key for r in result.run_requests] == [None]  # retried while nothing covers the pools

    # While a run covers them, no second one.
    running = _run_over(ticker.instance, killed, DagsterRunStatus.STARTED, REPAIR)
    assert isinstance(ticker.tick(), SkipReason)
    # Repairs that themselves fail are retried up to repair_attempts (3) in a row, then left to a person.
    ticker.instance.report_run_failed(running)
    for attempt in range(2):
        assert ticker.requested(ticker.tick()) == dict.fromkeys(killed, REPAIR), attempt
        _run_over(ticker.instance, killed, DagsterRunStatus.FAILURE, REPAIR)
    given_up = ticker.tick()
    assert isinstance(given_up, SkipReason) and "has not run since the last tick" in given_up.skip_message


def test_bars_reaching_the_live_models_fold_end_ask_for_a_retrain_once(ticker):
    import pandas as pd
    from dagster import AssetMaterialization

    from q50_assets.automation.sensors import NEXT_FOLD

    ticker.tick()
    newest = max(int(bars_of(get_engine(ticker.db.url), p).iloc[-1]["timestamp"]) for p in [POOL])
    for hours, due in ((+1, False), (0, True)):
        valid_until = pd.Timestamp(newest + hours * 3600, unit="s", tz="UTC").isoformat()
        ticker.instance.report_runless_asset_event(AssetMaterialization(
            asset_key=AssetKey("q50_model"), metadata={"live_valid_until": valid_until}))
        result = ticker.tick()
        if not due:
            # Another pool's newest bar may be later than POOL's: only assert when none is.
            latest = max(s["newest"] for s in CollectorReader(url=ticker.db.url).bar_summaries("1h", 3, 3600).values())
            if latest < newest + 3600:
                assert isinstance(result, SkipReason)
            continue
        (request,) = result.run_requests
        assert request.job_name == "train_q50_model" and request.tags[TRIGGER_TAG] == NEXT_FOLD
        assert request.run_key == f"{NEXT_FOLD}:1h:{valid_until}"  # once per fold: Dagster dedupes the key
        assert ticker.tick().run_requests[0].run_key == request.run_key


def test_a_pool_gone_from_the_collector_is_observed_once_and_not_refreshed(ticker):
    from sqlalchemy import delete

    from q50_assets.db.collector_models import ohlcv_data

    ticker.tick()
    engine = get_engine(ticker.db.url)
    with engine.begin() as conn:
        conn.execute(delete(ohlcv_data).where(ohlcv_data.c.pool_id == POOL, ohlcv_data.c.timeframe == "1h"))
    record_collector_run(engine)
    result = ticker.tick()
    assert not result.run_requests and "1 pools no longer have 1h bars" in result.skip_reason.skip_message
    (observation,) = result.asset_events
    assert observation.partition == POOL and observation.asset_key == AssetKey("ohlcv_bars")
    assert observation.metadata["collector_status"].value == "vanished"
    record_collector_run(engine)
    again = ticker.tick()
    assert isinstance(again, SensorResult) and not again.asset_events  # once


def test_the_first_model_is_asked_for_once_every_pool_is_refreshed(ticker):
    from dagster import AssetMaterialization

    from q50_assets.lineage.ohlcv.bar_changes import BarsCursor

    ticker.tick()
    assert isinstance(ticker.tick(), SkipReason)  # the pools' refresh has not run yet: no model can train
    states = BarsCursor.from_json(ticker.cursor, "1h").pools
    pools = sorted(states)
    for pool in pools[:-1]:  # as the refresh run records them
        ticker.instance.report_runless_asset_event(AssetMaterialization(
            asset_key="ohlcv_bars", partition=pool, metadata={"collector_state": states[pool].run_key_part}))
    assert isinstance(ticker.tick(), SkipReason)  # one pool still missing
    last = pools[-1]
    ticker.instance.report_runless_asset_event(AssetMaterialization(
        asset_key="ohlcv_bars", partition=last, metadata={"collector_state": states[last].run_key_part}))
    (request,) = ticker.tick().run_requests
    assert request.job_name == "train_q50_model" and request.run_key == "next_fold:1h:first"
