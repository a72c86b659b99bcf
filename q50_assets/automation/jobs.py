"""Named jobs. Every run executes in-process by default (see definitions.py): the steps of a
batch are sequential anyway, and a subprocess per step costs more than most steps.

``refresh_pools`` runs over a range of pool partitions (a batch); the model is trained on all
pools at once (unpartitioned) between the two per-pool phases. Which asset belongs where comes
from the lineage's table of stages (:data:`q50_assets.lineage.STEPS`).
"""

from dagster import AssetSelection, define_asset_job

from q50_assets.lineage import Phase, assets_of, pool_assets

# Per pool, in lineage order. The first need no model; the rest read the latest q50_model.
NEEDS_NO_MODEL_ASSETS = assets_of(Phase.BEFORE_MODEL)
MODEL_DEPENDENT_ASSETS = assets_of(Phase.AFTER_MODEL)
POOL_ASSETS = pool_assets()

refresh_pools_job = define_asset_job(
    "refresh_pools",
    selection=AssetSelection.assets(*POOL_ASSETS),
    description="A batch of pools (a partition range, or one partition): collector bars -> validated bars -> "
    "trades per bar -> QLib store + features -> regimes, signals from the latest q50_model -> Nautilus "
    "backtests -> q50_trading_history. Pools failing a blocking check are skipped downstream, the rest go on.",
)

train_q50_model_job = define_asset_job(
    "train_q50_model",
    selection=AssetSelection.assets(*assets_of(Phase.MODEL)),
    description="Walk-forward Q50 model over every pool in the QLib store (launch by hand; nightly it "
    "follows the pools' refresh by its automation condition).",
)

portfolio_summary_job = define_asset_job(
    "portfolio_summary",  # not the asset's name: job and op names share one namespace
    selection=AssetSelection.assets(*assets_of(Phase.PORTFOLIO)),
    description="The portfolio table across pools from the latest backtest of each.",
)

JOBS = [refresh_pools_job, train_q50_model_job, portfolio_summary_job]

# The job that runs each phase of the lineage (the demo's and the benchmarks' run queue).
PHASE_JOBS = {
    Phase.BEFORE_MODEL: refresh_pools_job.name,
    Phase.MODEL: train_q50_model_job.name,
    Phase.AFTER_MODEL: refresh_pools_job.name,
    Phase.PORTFOLIO: portfolio_summary_job.name,
}
