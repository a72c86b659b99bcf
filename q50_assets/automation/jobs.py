"""Named jobs. Every run executes in-process by default (see definitions.py): the steps of a
batch are sequential anyway, and a subprocess per step costs more than most steps.

``refresh_pools`` runs over a range of pool partitions (a batch); the model is trained on all
pools at once (unpartitioned) between the two per-pool phases.
"""

from dagster import AssetSelection, define_asset_job

from q50_assets.lineage.backtest.asset import BACKTEST_ASSET
from q50_assets.lineage.portfolio.asset import PORTFOLIO_ASSET
from q50_assets.lineage.features.asset import FEATURES_ASSET
from q50_assets.lineage.model.asset import MODEL_ASSET
from q50_assets.lineage.ohlcv.asset import OHLCV_ASSET
from q50_assets.lineage.regimes.asset import REGIMES_ASSET
from q50_assets.lineage.signals.asset import SIGNALS_ASSET
from q50_assets.lineage.trades.asset import TRADES_ASSET
from q50_assets.lineage.trading_history.asset import TRADING_HISTORY_ASSET

# Per pool, in lineage order. The first four need no model; the rest read the latest q50_model.
NEEDS_NO_MODEL_ASSETS = (OHLCV_ASSET, TRADES_ASSET, FEATURES_ASSET, REGIMES_ASSET)
MODEL_DEPENDENT_ASSETS = (SIGNALS_ASSET, BACKTEST_ASSET, TRADING_HISTORY_ASSET)
POOL_ASSETS = (*NEEDS_NO_MODEL_ASSETS, *MODEL_DEPENDENT_ASSETS)

refresh_pools_job = define_asset_job(
    "refresh_pools",
    selection=AssetSelection.assets(*POOL_ASSETS),
    description="A batch of pools (a partition range, or one partition): collector bars -> validated bars -> "
    "trades per bar -> QLib store + features -> regimes, signals from the latest q50_model -> Nautilus "
    "backtests -> q50_trading_history. Pools failing a blocking check are skipped downstream, the rest go on.",
)

train_q50_model_job = define_asset_job(
    "train_q50_model",
    selection=AssetSelection.assets(MODEL_ASSET),
    description="Walk-forward Q50 model over every pool in the QLib store (launch by hand; nightly it "
    "follows the pools' refresh by its automation condition).",
)

portfolio_summary_job = define_asset_job(
    "portfolio_summary",  # not the asset's name: job and op names share one namespace
    selection=AssetSelection.assets(PORTFOLIO_ASSET),
    description="The portfolio table across pools from the latest backtest of each.",
)

JOBS = [refresh_pools_job, train_q50_model_job, portfolio_summary_job]
