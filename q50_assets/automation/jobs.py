"""Named jobs.

The model is trained on all pools at once (unpartitioned); everything else is per pool.
"""

from dagster import AssetSelection, define_asset_job

from q50_assets.assets.backtest import BACKTEST_ASSET, PORTFOLIO_ASSET
from q50_assets.assets.features import FEATURES_ASSET
from q50_assets.assets.model import MODEL_ASSET
from q50_assets.assets.ohlcv import OHLCV_ASSET
from q50_assets.assets.regimes import REGIMES_ASSET
from q50_assets.assets.signals import SIGNALS_ASSET
from q50_assets.assets.trading_history import TRADING_HISTORY_ASSET

# Per pool: collector bars -> validated bars -> QLib store + features -> signals from the
# latest trained model (materialize q50_model first on a new deployment).
refresh_pool_job = define_asset_job(
    "refresh_pool",
    selection=AssetSelection.assets(
        OHLCV_ASSET, FEATURES_ASSET, SIGNALS_ASSET, REGIMES_ASSET, BACKTEST_ASSET, TRADING_HISTORY_ASSET
    ),
    description="OHLCV through trading history for one pool (one partition).",
)

train_q50_model_job = define_asset_job(
    "train_q50_model",
    selection=AssetSelection.assets(MODEL_ASSET),
    description="Walk-forward Q50 model over every pool in the QLib store.",
)

portfolio_summary_job = define_asset_job(
    "portfolio_summary",  # not the asset's name: job and op names share one namespace
    selection=AssetSelection.assets(PORTFOLIO_ASSET),
    description="The portfolio table across pools from the latest backtest of each.",
)
