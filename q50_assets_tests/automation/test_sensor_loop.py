"""The loop a user lives in, end to end, on a real PostgreSQL collector database:

the collector writes bars -> the sensor ticks -> the requested runs produce features, regimes,
(after the model trains) signals, Nautilus backtests and trading history -> the collector appends
bars to two pools and revises another's newest bars -> the next tick re-runs exactly those three
and their outputs change while every other pool's stay as they were -> a further tick skips.
"""

from __future__ import annotations

import time

import pandas as pd
import pytest
from dagster import AssetKey, SensorResult, SkipReason, build_sensor_context, evaluate_automation_conditions, instance_for_test
from sqlalchemy import delete, select

from q50_assets.lineage.common.conditions import TRIGGER_TAG
from q50_assets.automation.runs import pool_batches, range_tags, registered_pools, request_pools
from q50_assets.db.collector_models import ohlcv_data
from q50_assets.db.engine import get_engine
from q50_assets.db.q50_models import q50_signals, q50_trading_history
from q50_assets.definitions import build_definitions
from q50_assets.lineage.backtest.step import variants_for
from q50_assets.settings import BacktestSettings
from q50_assets.storage.collector import CollectorReader
from q50_assets.storage.project_tables import ProjectTables
from q50_assets_tests.collector_sim import append_bars, bars_of, record_collector_run, revise_bar, take_bars_from
from q50_assets_tests.conftest import settings_for

# Eight real hourly pools with 600-1,000 bars each that end on 2025-09-28 06:00-07:00 UTC.
POOLS = [
    "solana_4qs2R1Gsj2Lpy4ewV9hfVerNk2h4Qx3ZEkmJyKLywvb3",
    "solana_Q2sPHPdUWFMg7M7wwrQKLrn619cAucfRsmhVJffodSp",
    "solana_4w2cysotX6czaUGmmWg13hDpY4QEMG2CzeKYEQyK9Ama",
    "solana_7oM3hr4rHmJ4mwe7BVdSqmSPkm3tjCYZpLvtiN6muNFz",
    "solana_4bzFMpWDVXfRhaY3Xg7nGUbHDSquY5MPTvib1n8Vfmno",
    "solana_FtQ8ZY4Enw1HhvYFLFQftPB6exAGJuiUzGaY5L4B1xra",
    "solana_8uAAT95mo699fJ6CMpRw28DKfeVudGkonhEgmNPAEmCE",
    "solana_6gTQBJBV7DUQUGfsQoxzqi8Kgpa5ymF5riquo1k9sXoe",
]
APPENDED, REVISED = POOLS[:2], POOLS[2]
# The collector "now" of the first ticks: everything from here on is its future. The model trained
# then is the fold of 2025-09-27 (daily boundaries are UTC midnights): the bars appended below close
# before 2025-09-28 00:00, inside that fold, so the live model gives them their signals.
CUT = int(pd.Timestamp("2025-09-27 20:00", tz="UTC").timestamp())
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def _execute(defs, instance, request):
    """A run request of the sensor, executed as the daemon would launch it (its tags carry the pool range)."""
    result = defs.resolve_job_def("refresh_pools").execute_in_process(
        instance=instance, asset_selection=request.asset_selection, tags=request.tags, run_config=QUIET,
        raise_on_error=False)
    assert result.success, f"run for {request.tags} failed"
    return result


def _live_fold(instance) -> int:
    """The live model's fold, as the latest q50_model materialization states it."""
    event = instance.get_latest_materialization_event(AssetKey("q50_model"))
    return int(event.asset_materialization.metadata["live_fold"].value)


def _outputs(db: ProjectTables) -> dict[str, dict]:
    """Per pool, everything downstream stages wrote: signals, latest backtest rows, trading history."""
    with db.engine.connect() as conn:
        signals = pd.DataFrame([dict(r) for r in conn.execute(select(q50_signals)).mappings()])
        history = pd.DataFrame([dict(r) for r in conn.execute(select(q50_trading_history)).mappings()])
    results = db.latest_backtest_results("1h")
    out = {}
    for pool_id in POOLS:
        sig = signals[signals["pool_id"] == pool_id].drop(columns=["id", "created_at"]).sort_values("timestamp")
        res = results[results["pool_id"] == pool_id].drop(columns=["id", "created_at"]).sort_values("variant")
        run_id = res["backtest_run_id"].iloc[0]
        hist = history[(history["pool_id"] == pool_id) & (history["backtest_run_id"] == run_id)]
        out[pool_id] = {"signals": sig.reset_index(drop=True), "results": res.reset_index(drop=True),
                        "run_id": run_id, "history_rows": len(hist)}
    return out


@pytest.mark.parametrize("backend", ["postgresql"])
def test_sensor_loop_on_a_postgresql_collector(collector_url, tmp_path, backend):
    engine = get_engine(collector_url)
    # The collector as it was: only these pools collected hourly, nothing from CUT on yet.
    with engine.begin() as conn:
        conn.execute(delete(ohlcv_data).where(ohlcv_data.c.timeframe == "1h", ohlcv_data.c.pool_id.not_in(POOLS)))
    future = take_bars_from(engine, POOLS, CUT)
    assert set(future["pool_id"]) == set(POOLS)

    settings = settings_for(collector_url, tmp_path / "data")
    defs = build_definitions(settings)
    sensor = defs.resolve_sensor_def("new_collector_bars")
    db = ProjectTables(url=collector_url)
    collector = CollectorReader(url=collector_url)

    with instance_for_test() as instance:
        cursor = None

        def tick():
            nonlocal cursor
            result = sensor(build_sensor_context(instance=instance, cursor=cursor, resources={"collector": collector}))
            if isinstance(result, SensorResult):
                cursor = result.cursor
                for req in result.dynamic_partitions_requests or []:
                    instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
            return result

        def requested(result) -> dict[str, str]:
            order = registered_pools(instance)
            return {p: r.tags[TRIGGER_TAG] for r in result.run_requests for p in request_pools(r.tags, order)}

        # Tick 1: every pool is new; no model yet, so bars, features and regimes only (one batch run).
        first = tick()
        assert requested(first) == dict.fromkeys(POOLS, "new_pool") and len(first.run_requests) == 1
        for request in first.run_requests:
            _execute(defs, instance, request)

        # Training; the assets' automation conditions then ask for every pool's signals, backtests
        # and trading history against the new model, and the portfolio after them.
        automation = evaluate_automation_conditions(defs, instance)
        defs.resolve_job_def("train_q50_model").execute_in_process(instance=instance, run_config=QUIET)
        automation = evaluate_automation_conditions(defs, instance, cursor=automation.cursor)
        for name in ("q50_signals", "backtest_results", "q50_trading_history"):
            assert automation.get_requested_partitions(AssetKey(name)) == set(POOLS), name
        assert automation.get_num_requested(AssetKey("backtest_portfolio")) == 0  # not before the backtests ran
        (batch,) = pool_batches(registered_pools(instance), POOLS, 100)  # as the backfill would run it
        fan_out = defs.resolve_job_def("refresh_pools").execute_in_process(
            instance=instance, asset_selection=[AssetKey("q50_signals"), AssetKey("backtest_results"),
                                                AssetKey("q50_trading_history")],
            tags=range_tags(batch), run_config=QUIET)
        assert fan_out.success
        automation = evaluate_automation_conditions(defs, instance, cursor=automation.cursor)
        # The pooled stages after the pools' signals and backtests: the signal's evidence, the basket and
        # the portfolio, each once.
        pooled = ("signal_evidence", "basket_backtest", "backtest_portfolio")
        assert automation.total_requested == len(pooled)
        assert all(automation.get_num_requested(AssetKey(name)) == 1 for name in pooled)
        defs.resolve_job_def("portfolio_summary").execute_in_process(instance=instance, run_config=QUIET)
        assert evaluate_automation_conditions(defs, instance, cursor=automation.cursor).total_requested == 0

        before = _outputs(db)
        assert all(len(o["signals"]) > 100 and len(o["results"]) == len(variants_for(BacktestSettings().reserve_sensitivity))
                   for o in before.values())
        # The live model is the walk-forward's last fold: the newest signals already carry its fold.
        live_fold = _live_fold(instance)
        assert live_fold >= 0 and pd.concat([o["signals"] for o in before.values()])["fold"].max() == live_fold

        # Tick 2: the collector has not run: skip, and say so.
        skipped = tick()
        assert isinstance(skipped, SkipReason) and "has not run since the last tick" in skipped.skip_message

        # The collector runs: three newer bars for two pools, the newest two bars of a third revised.
        append_bars(engine, future[future["pool_id"].isin(APPENDED)].sort_values("timestamp").groupby("pool_id").head(3))
        revised_bars = bars_of(engine, REVISED).tail(2)
        for _, bar in revised_bars.iterrows():
            revise_bar(engine, REVISED, int(bar["timestamp"]), close_price=float(bar["close_price"]) * 1.03,
                       high_price=max(float(bar["high_price"]), float(bar["close_price"]) * 1.03))
        record_collector_run(engine)

        started = time.perf_counter()
        third = tick()
        assert requested(third) == {APPENDED[0]: "new_bars", APPENDED[1]: "new_bars", REVISED: "revised"}
        # Reasons run apart (each run's tag is exact) and neighbours together: 3 runs at most.
        assert 2 <= len(third.run_requests) <= 3
        for request in third.run_requests:
            _execute(defs, instance, request)
        print(f"tick -> trading history for 3 pools: {time.perf_counter() - started:.1f} s")

        after = _outputs(db)
        for pool_id in APPENDED:
            b, a = before[pool_id], after[pool_id]
            live = a["signals"][~a["signals"]["timestamp"].isin(b["signals"]["timestamp"])]
            assert (live["fold"] == live_fold).all()  # the rows a from-scratch walk-forward gives them
            # Bars T-1h (the former partial bar), T and T+1h are now complete; T+2h is held back.
            assert list(live["timestamp"].map(lambda t: pd.Timestamp(t).tz_convert("UTC"))) == [
                pd.Timestamp(CUT - 3600, unit="s", tz="UTC") + pd.Timedelta(hours=h) for h in range(3)]
            assert (live["known_at"].map(pd.Timestamp) > live["timestamp"].map(pd.Timestamp)).all()
            pd.testing.assert_frame_equal(a["signals"].iloc[: len(b["signals"])].drop(columns="model_run"),
                                          b["signals"].drop(columns="model_run"))
            assert a["run_id"] != b["run_id"]
            assert (a["results"]["bars"] > b["results"]["bars"]).all()
            assert (a["results"]["oos_end"] > b["results"]["oos_end"]).all()
        b, a = before[REVISED], after[REVISED]
        assert a["run_id"] != b["run_id"] and len(a["signals"]) == len(b["signals"])
        changed = a["signals"].compare(b["signals"])
        assert len(changed) == 1  # the revised complete bar's signal (its vol_risk moved); the newest is held back
        assert not a["results"]["final_equity"].equals(b["results"]["final_equity"])
        for pool_id in set(POOLS) - {*APPENDED, REVISED}:
            assert after[pool_id]["run_id"] == before[pool_id]["run_id"]
            pd.testing.assert_frame_equal(after[pool_id]["signals"], before[pool_id]["signals"])
            pd.testing.assert_frame_equal(after[pool_id]["results"], before[pool_id]["results"])
            assert after[pool_id]["history_rows"] == before[pool_id]["history_rows"]

        # Tick 4: nothing new.
        assert isinstance(tick(), SkipReason)
