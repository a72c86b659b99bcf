"""The Definitions the UI loads (workspace.yaml -> q50_assets.definitions) form a valid repository."""

from dagster import AssetKey, BackfillPolicy, Definitions

from q50_assets.assets.partitions import pool_partitions
from q50_assets.definitions import build_definitions, defs
from q50_assets_tests.conftest import settings_for

LINEAGE = ["ohlcv_bars", "pool_trades", "qlib_features", "q50_model", "q50_signals", "regime_labels", "backtest_results",
           "q50_trading_history", "backtest_portfolio"]
PER_POOL = ["ohlcv_bars", "pool_trades", "qlib_features", "q50_signals", "regime_labels", "backtest_results", "q50_trading_history"]


def test_definitions_load_as_the_ui_loads_them():
    # validate_loadable builds the repository: it catches e.g. a job named like an asset's op,
    # which execute_in_process never notices but `dagster dev` refuses to load.
    Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert set(LINEAGE) <= keys
    assert {"refresh_pools", "train_q50_model", "portfolio_summary"} <= {j.name for j in repo.get_all_jobs()}
    checks = {(c.asset_key, c.name) for c in repo.asset_graph.asset_check_keys}
    assert (AssetKey("backtest_results"), "bars_match_pipeline") in checks
    assert (AssetKey("q50_trading_history"), "reconciles_with_fills") in checks
    assert (AssetKey("pool_trades"), "clock_shift") in checks
    assert {s.name for s in repo.sensor_defs} == {"new_collector_bars", "q50_automation"}
    assert {s.name for s in repo.schedule_defs} == {"nightly_q50"}


def test_per_pool_assets_run_in_batches_and_record_checks_per_pool(tmp_path):
    settings = settings_for(f"sqlite:///{tmp_path / 'c.sqlite'}", tmp_path, Q50__BATCHES__POOLS_PER_RUN="7")
    graph = build_definitions(settings).resolve_asset_graph()
    for name in PER_POOL:
        node = graph.get(AssetKey(name))
        assert node.partitions_def == pool_partitions
        assert node.backfill_policy == BackfillPolicy.multi_run(7), name
    for key in graph.asset_check_keys:
        spec = graph.get_check_spec(key)
        if key.asset_key.to_user_string() in PER_POOL:
            # One result per pool in the UI; a failure gates the pool in the data, not the run.
            assert spec.partitions_def == pool_partitions and not spec.blocking, key
    # Automation replaces the hand-written run-status and polling sensors.
    conditions = {k.to_user_string(): graph.get(k).automation_condition for k in graph.get_all_asset_keys()}
    assert {k for k, c in conditions.items() if c is not None} == {
        "q50_model", "q50_signals", "backtest_results", "q50_trading_history", "backtest_portfolio"}
