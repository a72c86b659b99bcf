"""Dagster's own automation, evaluated against a real instance with Dagster's test helper
(``evaluate_automation_conditions``) on real pools: the nightly schedule's batched refresh, then
the model, then every pool's signals, backtests and trading history, then the portfolio - and
a sensor refresh of one pool re-running nothing but the portfolio."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from dagster import AssetKey, build_schedule_context, evaluate_automation_conditions, instance_for_test

from q50_assets.lineage.common.conditions import TRIGGER_TAG
from q50_assets.automation.runs import range_tags, registered_pools, request_pools
from q50_assets.definitions import build_definitions
from q50_assets_tests.lineage.signals.test_model_and_signals_assets import LIGHT_MODEL, QUIET
from q50_assets_tests.conftest import settings_for

POOLS = [
    "solana_4w2cysotX6czaUGmmWg13hDpY4QEMG2CzeKYEQyK9Ama",
    "solana_Q2sPHPdUWFMg7M7wwrQKLrn619cAucfRsmhVJffodSp",
    "solana_Ekv9HdumWqnXZgq5G6ge6bk1ZRHKXYC2WnSFL94sQmLJ",
]
UPSTREAM = [AssetKey("ohlcv_bars"), AssetKey("pool_trades"), AssetKey("qlib_features"), AssetKey("regime_labels")]
DOWNSTREAM = [AssetKey("q50_signals"), AssetKey("backtest_results"), AssetKey("q50_trading_history")]


def requested(result) -> dict[str, set]:
    """Asset name -> the partitions a tick requests (None for an unpartitioned asset)."""
    keys = ("q50_model", "q50_signals", "backtest_results", "q50_trading_history", "backtest_portfolio")
    return {k: result.get_requested_partitions(AssetKey(k)) for k in keys if result.get_num_requested(AssetKey(k))}


@pytest.mark.parametrize("backend", ["sqlite"])
def test_nightly_refresh_then_model_then_pools_then_portfolio(collector_url, tmp_path, backend):
    settings = settings_for(collector_url, tmp_path / "data", **LIGHT_MODEL)  # 2 pools per run
    defs = build_definitions(settings)
    refresh = defs.resolve_job_def("refresh_pools")
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("pools", POOLS)
        tick = evaluate_automation_conditions(defs, instance)
        assert tick.total_requested == 0  # nothing has happened

        # The sensor's first refresh (bars, features, regimes) does not retrain the model.
        result = refresh.execute_in_process(instance=instance, asset_selection=UPSTREAM, run_config=QUIET,
                                            tags={**range_tags(POOLS), TRIGGER_TAG: "new_pool"})
        assert result.success
        tick = evaluate_automation_conditions(defs, instance, cursor=tick.cursor)
        assert requested(tick) == {}

        # The nightly schedule: every pool's upstream in batch runs, tagged nightly.
        schedule = defs.resolve_schedule_def("nightly_q50")
        night = datetime(2026, 11, 29, 2, tzinfo=timezone.utc)
        requests = schedule.evaluate_tick(build_schedule_context(instance=instance,
                                                                 scheduled_execution_time=night)).run_requests
        order = registered_pools(instance)
        assert [request_pools(r.tags, order) for r in requests] == [POOLS[:2], POOLS[2:]]
        assert all(r.tags[TRIGGER_TAG] == "nightly" and list(r.asset_selection) == UPSTREAM for r in requests)
        assert len({r.run_key for r in requests}) == 2 and all(night.isoformat() in r.run_key for r in requests)
        for r in requests:
            assert refresh.execute_in_process(instance=instance, asset_selection=r.asset_selection, tags=r.tags,
                                              run_config=QUIET).success
        # ... after which the model retrains, once.
        tick = evaluate_automation_conditions(defs, instance, cursor=tick.cursor)
        assert requested(tick) == {"q50_model": {None}}
        assert defs.resolve_job_def("train_q50_model").execute_in_process(instance=instance, run_config=QUIET).success

        # A new model: every pool's signals, backtests and trading history, in the same tick.
        tick = evaluate_automation_conditions(defs, instance, cursor=tick.cursor)
        assert requested(tick) == {k.to_user_string(): set(POOLS) for k in DOWNSTREAM}
        for batch in (POOLS[:2], POOLS[2:]):  # as the backfill would run them: 2 pools per run
            assert refresh.execute_in_process(instance=instance, asset_selection=DOWNSTREAM, tags=range_tags(batch),
                                              run_config=QUIET).success

        # Backtests done and none in progress: the portfolio.
        tick = evaluate_automation_conditions(defs, instance, cursor=tick.cursor)
        assert requested(tick) == {"backtest_portfolio": {None}}
        assert defs.resolve_job_def("portfolio_summary").execute_in_process(instance=instance, run_config=QUIET).success
        tick = evaluate_automation_conditions(defs, instance, cursor=tick.cursor)
        assert requested(tick) == {}

        # The sensor refreshes one pool through trading history: nothing of the pool runs twice,
        # the portfolio follows.
        result = refresh.execute_in_process(instance=instance, asset_selection=UPSTREAM + DOWNSTREAM, run_config=QUIET,
                                            tags={**range_tags(POOLS[1:2]), TRIGGER_TAG: "new_bars"})
        assert result.success
        tick = evaluate_automation_conditions(defs, instance, cursor=tick.cursor)
        assert requested(tick) == {"backtest_portfolio": {None}}
