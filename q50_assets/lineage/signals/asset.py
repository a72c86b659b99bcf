"""Lineage stage 3b - Q50 signals per pool: signal columns from the out-of-sample quantiles and
the pool's features, with the time each becomes known; stored in ``q50_signals`` (the table IO
manager writes a batch in one transaction).

Glue only: the stage is :mod:`q50_assets.lineage.signals.step`, every formula
:mod:`q50_assets.lineage.signals.rules`, the cost model :mod:`q50_assets.lineage.common.costs`.
"""

import pandas as pd
from dagster import AssetExecutionContext, MetadataValue, Output, ResourceParam, asset

from q50_assets.lineage.common.batch import (
    PoolChecks,
    add_pool_metadata,
    blocked_metadata,
    pool_check_spec,
    progress_callback,
)
from q50_assets.lineage.common.conditions import eager_after
from q50_assets.lineage.common.partitions import pool_partitions
from q50_assets.lineage.common.batch import fallback_metadata
from q50_assets.lineage.common.ports import CollectorSource
from q50_assets.lineage.model.asset import MODEL_ASSET
from q50_assets.lineage.common.gate import Blocked
from q50_assets.lineage.model.step import TrainedQ50Model
from q50_assets.lineage.signals.step import STAGE, pool_row_counts
from q50_assets.lineage.common.provenance import model_folds_label, provenance_metadata
from q50_assets.settings import Settings
from q50_assets.lineage.signals.step import reserve_assumption, signals_step

SIGNALS_ASSET = STAGE


@asset(
    name=SIGNALS_ASSET,
    partitions_def=pool_partitions,
    io_manager_key="q50_tables",
    group_name="signals",
    kinds={"pandas", "sql"},
    automation_condition=eager_after(MODEL_ASSET),  # every pool's signals from a new model
    check_specs=[
        pool_check_spec(SIGNALS_ASSET, "known_at_after_bar_close",
                        "Every signal becomes known at or after its bar's close (open + timeframe).", True),
        pool_check_spec(SIGNALS_ASSET, "quantiles_ordered", "q10 <= q50 <= q90 on every signal row.", True),
    ],
    description="Per pool: spread, prob_up, enhanced info ratio, expected value, adaptive threshold "
    "(with the round trip's fee and impact at the intended size, from the one cost model), tradeable, "
    "side and tier from the out-of-sample q10/q50/q90; "
    "stored in q50_signals with the time each becomes known (a pool failing a check, or blocked "
    "upstream, has no rows).",
)
def q50_signals(context: AssetExecutionContext, q50_model: TrainedQ50Model, qlib_features: dict,
                collector: ResourceParam[CollectorSource], settings: ResourceParam[Settings]):
    pool_ids = list(context.partition_keys)
    computable = any(not isinstance(f, Blocked) for f in qlib_features.values())
    fallback = reserve_assumption(collector, settings) if computable and not q50_model.blocked_reason else None
    signals, outcomes = signals_step(q50_model, qlib_features, collector, settings,
                                     progress_callback(context, SIGNALS_ASSET, len(pool_ids)), fallback=fallback)
    checks = PoolChecks(context)
    bar = pd.Timedelta(seconds=settings.bar_seconds)
    awaiting_next_fold = 0
    for pool_id in pool_ids:
        value = signals[pool_id]
        if pool_id not in outcomes:
            add_pool_metadata(context, pool_id, blocked_metadata(value))
            continue
        early, crossed = outcomes[pool_id]
        # New bars beyond the walk-forward: those of the live model's fold, and those awaiting the next.
        counts = pool_row_counts(q50_model, pool_id, qlib_features[pool_id], bar)
        awaiting_next_fold += counts["rows_awaiting_next_fold"]
        if isinstance(value, Blocked):
            add_pool_metadata(context, pool_id, {**blocked_metadata(value), "model_run": q50_model.run_id,
                                                 "rows_awaiting_next_fold": counts["rows_awaiting_next_fold"]})
        else:
            sides = value["side"].value_counts()
            add_pool_metadata(context, pool_id, {
                "pool_id": pool_id, "status": "ok", "signals": len(value), "rows_written": len(value),
                "tradeable": int(value["tradeable"].sum()),
                "reserve_sources": {str(k): int(v) for k, v in value["reserve_source"].value_counts().items()},
                "long": int(sides.get("long", 0)),
                "short": int(sides.get("short", 0)), "hold": int(sides.get("hold", 0)),
                "model_run": q50_model.run_id, **counts,
                "first_known_at": str(value["known_at"].min()) if len(value) else "none",
                "last_known_at": str(value["known_at"].max()) if len(value) else "none"})
        checks.add(SIGNALS_ASSET, "known_at_after_bar_close", pool_id, len(early) == 0,
                   {"early_signals": len(early), "first_early": MetadataValue.json([t.isoformat() for t in early[:20]])})
        checks.add(SIGNALS_ASSET, "quantiles_ordered", pool_id, len(crossed) == 0, {"crossed_rows": len(crossed)})
    computed = sum(not isinstance(v, Blocked) for v in signals.values())
    yield Output(signals, metadata={"pools": len(pool_ids), "pools_computed": computed,
                                    "pools_blocked": len(pool_ids) - computed, "model_run": q50_model.run_id,
                                    "rows_awaiting_next_fold": awaiting_next_fold,
                                    **provenance_metadata(settings, model_folds=model_folds_label(q50_model),
                                                          run_id=context.run.run_id),
                                    **fallback_metadata(fallback)})
    yield from checks.events()
