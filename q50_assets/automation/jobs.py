"""Named jobs, and the executor they run on.

The model is trained on all pools at once (unpartitioned); everything else is per pool. Every
run executes in-process (see definitions.py): a pool's six steps are sequential anyway, and a
subprocess per step costs more than the step. Many pools fan out as many runs, bounded by the
run queue in dagster.yaml (README, "Running many pools").
"""

from dagster import AssetSelection, define_asset_job

from q50_assets.assets.backtest import BACKTEST_ASSET, PORTFOLIO_ASSET
from q50_assets.assets.features import FEATURES_ASSET
from q50_assets.assets.model import MODEL_ASSET
from q50_assets.assets.ohlcv import OHLCV_ASSET
from q50_assets.assets.regimes import REGIMES_ASSET
from q50_assets.assets.signals import SIGNALS_ASSET
from q50_assets.assets.trades import TRADES_ASSET
from q50_assets.assets.trading_history import TRADING_HISTORY_ASSET

# Per pool, in lineage order. The first four need no model; the rest read the latest q50_model.
NEEDS_NO_MODEL_ASSETS = (OHLCV_ASSET, TRADES_ASSET, FEATURES_ASSET, REGIMES_ASSET)
MODEL_DEPENDENT_ASSETS = (SIGNALS_ASSET, BACKTEST_ASSET, TRADING_HISTORY_ASSET)

refresh_pool_job = define_asset_job(
    "refresh_pool",
    selection=AssetSelection.assets(*NEEDS_NO_MODEL_ASSETS, *MODEL_DEPENDENT_ASSETS),
    description="One pool (partition): collector bars -> validated bars -> trades per bar -> QLib store + features "
    "-> regimes, "
    "signals from the latest q50_model -> Nautilus backtests -> q50_trading_history.",
)

train_q50_model_job = define_asset_job(
    "train_q50_model",
    selection=AssetSelection.assets(MODEL_ASSET),
    description="Walk-forward Q50 model over every pool in the QLib store (launch by hand).",
)

nightly_job = define_asset_job(
    "nightly",
    selection=AssetSelection.assets(MODEL_ASSET),
    description="The nightly_q50 schedule's job: retrain the Q50 model; a run-status sensor then refreshes "
    "every pool against it and a sensor writes the portfolio table when they are done.",
)

portfolio_summary_job = define_asset_job(
    "portfolio_summary",  # not the asset's name: job and op names share one namespace
    selection=AssetSelection.assets(PORTFOLIO_ASSET),
    description="The portfolio table across pools from the latest backtest of each.",
)
