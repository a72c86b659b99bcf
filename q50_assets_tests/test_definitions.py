"""The Definitions the UI loads (workspace.yaml -> q50_assets.definitions) form a valid repository."""

from dagster import AssetKey, Definitions

from q50_assets.definitions import defs

LINEAGE = ["ohlcv_bars", "pool_trades", "qlib_features", "q50_model", "q50_signals", "regime_labels", "backtest_results",
           "q50_trading_history", "backtest_portfolio"]


def test_definitions_load_as_the_ui_loads_them():
    # validate_loadable builds the repository: it catches e.g. a job named like an asset's op,
    # which execute_in_process never notices but `dagster dev` refuses to load.
    Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert set(LINEAGE) <= keys
    assert {"refresh_pool", "train_q50_model", "portfolio_summary"} <= {j.name for j in repo.get_all_jobs()}
    checks = {(c.asset_key, c.name) for c in repo.asset_graph.asset_check_keys}
    assert (AssetKey("backtest_results"), "bars_match_pipeline") in checks
    assert (AssetKey("q50_trading_history"), "reconciles_with_fills") in checks
    assert (AssetKey("pool_trades"), "clock_shift") in checks
