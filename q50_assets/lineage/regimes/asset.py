"""Lineage stage 4 - regime labels per pool: volatility regime from past-only percentiles of
``vol_risk``, momentum regime from RSI / MACD / Bollinger, and the size multiplier and threshold
adjustment the backtest applies; stored in ``q50_regime_labels`` with their known-at time.

Glue only: the stage is :mod:`q50_assets.lineage.regimes.step`, the rules :mod:`q50_assets.lineage.regimes.rules`.
"""

from dagster import ResourceParam, AssetExecutionContext, MetadataValue, Output, asset

from q50_assets.lineage.common.batch import (
    PoolChecks,
    add_pool_metadata,
    blocked_metadata,
    pool_check_spec,
    progress_callback,
)
from q50_assets.lineage.common.partitions import pool_partitions
from q50_assets.lineage.common.gate import Blocked
from q50_assets.lineage.regimes.step import STAGE
from q50_assets.lineage.common.provenance import provenance_metadata
from q50_assets.settings import Settings
from q50_assets.lineage.regimes.step import regimes_step

REGIMES_ASSET = STAGE
VOL_REGIMES = ("low", "medium", "high", "extreme", "unknown")


@asset(
    name=REGIMES_ASSET,
    partitions_def=pool_partitions,
    io_manager_key="q50_tables",
    group_name="regimes",
    kinds={"pandas", "sql"},
    check_specs=[
        pool_check_spec(REGIMES_ASSET, "labels_allowed", "Every regime label is one of the RegimeDetector's allowed "
                        "labels; multipliers and adjustments finite and >= 0.", True),
        pool_check_spec(REGIMES_ASSET, "known_at_after_bar_close",
                        "Every regime label becomes known at or after its bar's close.", True),
    ],
    description="Per pool and bar: volatility regime (vol_risk percentile among past bars only, cut at "
    "30/70/90), momentum regime (RSI, MACD, Bollinger), position multiplier and threshold adjustment "
    "from config; stored in q50_regime_labels.",
)
def regime_labels(context: AssetExecutionContext, qlib_features: dict, settings: ResourceParam[Settings]):
    pool_ids = list(context.partition_keys)
    regimes, outcomes = regimes_step(qlib_features, settings, progress_callback(context, REGIMES_ASSET, len(pool_ids)))
    checks = PoolChecks(context)
    for pool_id in pool_ids:
        value = regimes[pool_id]
        if pool_id not in outcomes:
            add_pool_metadata(context, pool_id, blocked_metadata(value))
            continue
        bad = outcomes[pool_id]
        if isinstance(value, Blocked):
            add_pool_metadata(context, pool_id, blocked_metadata(value))
        else:
            vol = value["vol_regime"].value_counts()
            add_pool_metadata(context, pool_id, {
                "pool_id": pool_id, "status": "ok", "rows": len(value), "rows_written": len(value),
                **{f"vol_{k}": int(vol.get(k, 0)) for k in VOL_REGIMES},
                "regimes": {k: int(v) for k, v in value["regime"].value_counts().items()}})
        checks.add(REGIMES_ASSET, "labels_allowed", pool_id, len(bad["bad_label"]) == 0 and len(bad["bad_number"]) == 0,
                   {"bad_labels": len(bad["bad_label"]), "bad_multipliers": len(bad["bad_number"]),
                    "first_bad": MetadataValue.json([t.isoformat() for t in
                                                     list(bad["bad_label"][:10]) + list(bad["bad_number"][:10])])})
        checks.add(REGIMES_ASSET, "known_at_after_bar_close", pool_id, len(bad["early"]) == 0,
                   {"early_labels": len(bad["early"]),
                    "first_early": MetadataValue.json([t.isoformat() for t in bad["early"][:20]])})
    computed = sum(not isinstance(v, Blocked) for v in regimes.values())
    yield Output(regimes, metadata={"pools": len(pool_ids), "pools_computed": computed,
                                    **provenance_metadata(settings, run_id=context.run.run_id),
                                    "pools_blocked": len(pool_ids) - computed})
    yield from checks.events()
