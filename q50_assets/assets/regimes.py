"""Lineage stage 4 - regime labels per pool: volatility regime from past-only percentiles of
``vol_risk``, momentum regime from RSI / MACD / Bollinger, and the size multiplier and threshold
adjustment the backtest applies; persisted to ``q50_regime_labels`` with their known-at time.

Glue only: the rules are :mod:`q50_assets.research.regimes`. Regimes read the feature stage's
indicators (the plan's ``use_existing_indicators``), not the signals, so a model retrain does not
change them.
"""

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    MetadataValue,
    Output,
    ResourceParam,
    asset,
)

from q50_assets.assets.partitions import pool_partitions
from q50_assets.research.bars import TIMEFRAME_SECONDS
from q50_assets.research.regimes import REGIME_LABELS, detect_regimes
from q50_assets.resources.database import CollectorDatabase
from q50_assets.settings import Settings

REGIMES_ASSET = "regime_labels"


def pool_regimes(features: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """One pool's regime rows (index open_time) from its feature frame."""
    config = settings.nautilus_trader.strategy_config.regime_detection.regime_config()
    columns = [*config.required_columns(), "is_warmup", "is_filled"]
    return detect_regimes(features[columns], config)


@asset(
    name=REGIMES_ASSET,
    partitions_def=pool_partitions,
    group_name="regimes",
    kinds={"pandas", "sql"},
    check_specs=[
        AssetCheckSpec(
            "labels_allowed",
            asset=REGIMES_ASSET,
            blocking=True,
            description="Every regime label is one of the RegimeDetector's allowed labels; multipliers and "
            "adjustments finite and >= 0.",
        ),
        AssetCheckSpec(
            "known_at_after_bar_close",
            asset=REGIMES_ASSET,
            blocking=True,
            description="Every regime label becomes known at or after its bar's close.",
        ),
    ],
    description="Per pool and bar: volatility regime (vol_risk percentile among past bars only, cut at "
    "30/70/90), momentum regime (RSI, MACD, Bollinger), position multiplier and threshold adjustment "
    "from config; persisted to q50_regime_labels.",
)
def regime_labels(
    context: AssetExecutionContext,
    qlib_features: pd.DataFrame,
    collector_db: CollectorDatabase,
    settings: ResourceParam[Settings],
):
    pool_id = context.partition_key
    regimes = pool_regimes(qlib_features, settings)
    bad_label = regimes.index[~regimes["regime"].isin(REGIME_LABELS)]
    numbers = regimes[["position_multiplier", "threshold_adjustment"]]
    bad_number = regimes.index[~((numbers >= 0) & numbers.notna() & (numbers < float("inf"))).all(axis=1)]
    bar = pd.Timedelta(seconds=TIMEFRAME_SECONDS[settings.timeframe])
    early = regimes.index[regimes["known_at"] < regimes.index + bar]
    # Persist only what passed: an unknown label or a label known too early never reaches the table.
    if len(bad_label) == 0 and len(bad_number) == 0 and len(early) == 0:
        written = collector_db.replace_regime_labels(pool_id, settings.timeframe, regimes)
    else:
        written = 0

    counts = regimes["regime"].value_counts()
    vol_counts = regimes["vol_regime"].value_counts()
    yield Output(
        regimes,
        metadata={
            "pool_id": pool_id,
            "rows": len(regimes),
            "rows_written": written,
            **{f"vol_{k}": int(vol_counts.get(k, 0)) for k in ("low", "medium", "high", "extreme", "unknown")},
            "regimes": MetadataValue.json({k: int(v) for k, v in counts.items()}),
        },
    )
    yield AssetCheckResult(
        check_name="labels_allowed",
        passed=len(bad_label) == 0 and len(bad_number) == 0,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "pool_id": pool_id,
            "bad_labels": len(bad_label),
            "bad_multipliers": len(bad_number),
            "first_bad": MetadataValue.json([t.isoformat() for t in list(bad_label[:10]) + list(bad_number[:10])]),
        },
    )
    yield AssetCheckResult(
        check_name="known_at_after_bar_close",
        passed=len(early) == 0,
        severity=AssetCheckSeverity.ERROR,
        metadata={"pool_id": pool_id, "early_labels": len(early),
                  "first_early": MetadataValue.json([t.isoformat() for t in early[:20]])},
    )
