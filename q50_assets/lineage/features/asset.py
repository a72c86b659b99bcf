"""Lineage stage 2 - QLib features: a batch of pools' bars written to the QLib store together,
features from one call of QLib's expression engine, vectors persisted to ``q50_feature_vectors``
in one transaction.

Glue only: formulas live in :mod:`q50_assets.lineage.features.formulas`, the batch step's pieces in
:mod:`q50_assets.lineage.features.step`. The trades stage writes the pools' trade fields into the same
store first (flow features read them).
"""

from dagster import AssetExecutionContext, AssetKey, MetadataValue, Output, ResourceParam, asset

from q50_assets.lineage.common.batch import (
    PoolChecks,
    add_pool_metadata,
    blocked_metadata,
    pool_check_spec,
    progress_callback,
)
from q50_assets.lineage.common.partitions import pool_partitions
from q50_assets.lineage.common.ports import CollectorSource, FeatureStore, ProjectTableStore
from q50_assets.lineage.trades.asset import TRADES_ASSET
from q50_assets.lineage.features.step import (
    STAGE,
    FeatureFrames,
    frame_summary,
)
from q50_assets.lineage.common.gate import Blocked
from q50_assets.lineage.features.step import FeatureConfig
from q50_assets.lineage.common.provenance import provenance_metadata
from q50_assets.settings import Settings
from q50_assets.lineage.features.step import features_step

FEATURES_ASSET = STAGE


@asset(
    name=FEATURES_ASSET,
    partitions_def=pool_partitions,
    # The frames are kept in the QLib store (the stage writes each pool's series there) and read back from it.
    io_manager_key="qlib_feature_frames",
    # The trades stage writes the pools' trade fields into the store: run after it when both run.
    deps=[AssetKey(TRADES_ASSET)],
    group_name="features",
    kinds={"qlib", "pandas"},
    check_specs=[
        pool_check_spec(FEATURES_ASSET, "no_nan_after_warmup",
                        "Every feature of every real bar after the warm-up is a finite number (flow and collector "
                        "features may be missing where their data is, counted in metadata, but never infinite).",
                        True),
        pool_check_spec(FEATURES_ASSET, "instrument_mapping_roundtrip",
                        "The pool's QLib instrument maps back to exactly this pool id, and no two pools share one.",
                        True),
    ],
    description="Each pool's validated bars on a full bar grid in QLib's binary store; features "
    "(the Q50 set, RSI, MACD, Bollinger; trade-flow features where the pool's trades pass their checks) from "
    "QLib's expression engine, one call per batch of pools; vectors persisted to q50_feature_vectors. Warm-up "
    "rows are marked, missing bars flagged as flat filled bars. Pools blocked upstream are skipped (and taken "
    "out of the store).",
)
def qlib_features(context: AssetExecutionContext, ohlcv_bars: dict, collector: ResourceParam[CollectorSource],
                  project_tables: ResourceParam[ProjectTableStore], qlib_store: ResourceParam[FeatureStore],
                  settings: ResourceParam[Settings]):
    pool_ids = list(context.partition_keys)
    frames, outcomes, stale, vectors_read = features_step(
        ohlcv_bars, qlib_store, collector, project_tables, settings, progress_callback(context, FEATURES_ASSET, len(pool_ids)))
    config = FeatureConfig.of(settings)
    checks = PoolChecks(context)
    for pool_id in pool_ids:
        frame, outcome = frames[pool_id], outcomes.get(pool_id)
        if outcome is None:  # blocked upstream: not computed, so not checked
            add_pool_metadata(context, pool_id, blocked_metadata(frame))
            continue
        if isinstance(frame, Blocked):  # computed, but failed a check: its vectors were not written
            metadata = {**blocked_metadata(frame), "instrument": outcome.instrument}
        else:
            metadata = {"pool_id": pool_id, "status": "ok", "instrument": outcome.instrument,
                        **frame_summary(frame, config), "feature_vectors_written": int((~frame["is_filled"]).sum()),
                        "optional_features_missing": MetadataValue.json(outcome.optional_missing),
                        "collector_vectors_read": vectors_read[pool_id],
                        "stale_feature_vectors_kept": stale[pool_id]}
        add_pool_metadata(context, pool_id, metadata)
        checks.add(FEATURES_ASSET, "no_nan_after_warmup", pool_id, outcome.no_nan_after_warmup, {
            "features_checked": outcome.features_checked, "rows_checked": outcome.rows_checked,
            "rows_with_nan": len(outcome.rows_with_nan),
            "first_rows_with_nan": MetadataValue.json([t.isoformat() for t in outcome.rows_with_nan[:20]])})
        checks.add(FEATURES_ASSET, "instrument_mapping_roundtrip", pool_id, outcome.instrument_mapping_roundtrip,
                   {"instrument": outcome.instrument, "maps_to": outcome.instrument_owner,
                    "instruments_shared": outcome.instruments_shared})
    computed = sum(not isinstance(f, Blocked) for f in frames.values())
    yield Output(FeatureFrames(frames, config),
                 metadata={"pools": len(pool_ids), "pools_computed": computed, "pools_blocked": len(pool_ids) - computed,
                           "feature_set_version": config.version,
                           **provenance_metadata(settings, run_id=context.run.run_id)})
    yield from checks.events()
