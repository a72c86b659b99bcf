"""Lineage stage 2 - QLib features: one pool's bars written to the QLib store, features
computed by QLib's expression engine, vectors persisted to ``q50_feature_vectors``.

Glue only: formulas live in :mod:`q50_assets.research.features`. The trades stage writes the
pool's trade fields into the same store first (flow features read them).
"""

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    MetadataValue,
    Output,
    ResourceParam,
    asset,
)

from q50_assets.assets.ohlcv import OHLCV_ASSET
from q50_assets.assets.partitions import pool_partitions
from q50_assets.assets.trades import TRADES_ASSET
from q50_assets.research.bars import TIMEFRAME_SECONDS, ValidatedBars, require_safe
from q50_assets.research.features import (
    asof_collector_features,
    collector_feature_fields,
    feature_expressions,
    feature_set_version,
    mark_warmup,
    may_be_missing,
    to_bar_grid,
    warmup_bars,
)
from q50_assets.resources.database import CollectorDatabase
from q50_assets.resources.qlib_store import QlibStore, instrument_name
from q50_assets.settings import Settings

FEATURES_ASSET = "qlib_features"


def expressions_for(settings: Settings) -> dict[str, str]:
    rd = settings.nautilus_trader.strategy_config.regime_detection
    return feature_expressions(rd.rsi_periods, rd.macd_fast, rd.macd_slow,
                               flow_features=settings.trades.flow_features,
                               collector_features=settings.model.collector_feature_vectors)


def build_pool_features(
    pool_id: str, bars: pd.DataFrame, settings: Settings, store: QlibStore,
    collector_vectors: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, list[str], str]:
    """Write a pool's grid to the store and evaluate the feature expressions on it.

    ``collector_vectors``: the collector's own vectors of the pool (model.collector_feature_vectors),
    stored as of each bar's close; None stores none (those features are then missing).
    Returns the frame (index open_time: feature columns, close, is_filled, is_warmup, known_at),
    the feature column names and the feature-set version.
    """
    rd = settings.nautilus_trader.strategy_config.regime_detection
    bar_seconds = TIMEFRAME_SECONDS[settings.timeframe]
    expressions = expressions_for(settings)
    warmup = warmup_bars(rd.macd_slow)
    grid = to_bar_grid(bars, bar_seconds)
    store.write_pool(pool_id, grid)
    if settings.model.collector_feature_vectors:
        fields = collector_feature_fields()
        if collector_vectors is None or collector_vectors.empty:
            store.clear_fields(pool_id, fields)
        else:
            vectors = collector_vectors.drop(columns=["id", "feature_set_version"], errors="ignore")
            store.write_fields(pool_id, asof_collector_features(grid.index, bar_seconds, vectors), fields)
    frame = store.features([pool_id], expressions).loc[pool_id]
    frame["close"] = grid["close"].reindex(frame.index)
    frame["is_filled"] = grid["filled"].reindex(frame.index).astype(bool)
    frame["is_warmup"] = mark_warmup(frame.index, bars.index[0], bar_seconds, warmup)
    frame["known_at"] = frame.index + pd.Timedelta(seconds=bar_seconds)
    return frame, list(expressions), feature_set_version(expressions, warmup)


@asset(
    name=FEATURES_ASSET,
    partitions_def=pool_partitions,
    # The trades stage writes the pool's trade fields into the store: run after it when both run.
    deps=[AssetKey(TRADES_ASSET)],
    group_name="features",
    kinds={"qlib", "pandas"},
    check_specs=[
        AssetCheckSpec(
            "no_nan_after_warmup",
            asset=FEATURES_ASSET,
            blocking=True,
            description="Every feature of every real bar after the warm-up is a finite number (flow and "
            "collector features may be missing where their data is, counted in metadata, but never infinite).",
        ),
        AssetCheckSpec(
            "instrument_mapping_roundtrip",
            asset=FEATURES_ASSET,
            blocking=True,
            description="The pool's QLib instrument maps back to exactly this pool id, and no two pools share one.",
        ),
    ],
    description="The pool's validated bars on a full bar grid in QLib's binary store; features "
    "(the Q50 set, RSI, MACD, Bollinger; trade-flow features where the pool's trades pass their checks) from "
    "QLib's expression engine; vectors persisted to q50_feature_vectors. Warm-up rows are marked, missing bars "
    "flagged as flat filled bars.",
)
def qlib_features(
    context: AssetExecutionContext,
    ohlcv_bars: ValidatedBars,
    collector_db: CollectorDatabase,
    qlib_store: QlibStore,
    settings: ResourceParam[Settings],
):
    pool_id = context.partition_key
    bars = require_safe(ohlcv_bars)
    collector_vectors = (collector_db.collector_feature_vectors(pool_id)
                         if settings.model.collector_feature_vectors else None)
    frame, columns, version = build_pool_features(pool_id, bars, settings, qlib_store, collector_vectors)
    real = ~frame["is_filled"]
    frame["feature_vector_id"], stale_vectors = collector_db.upsert_feature_vectors(
        pool_id, settings.timeframe, version, frame[real], columns
    )

    usable = real & ~frame["is_warmup"]
    # Flow and collector features may be missing (NaN) where their data is; the rest may not.
    core = [c for c in columns if not may_be_missing(c)]
    optional = [c for c in columns if may_be_missing(c)]
    values = frame.loc[usable, core].to_numpy()
    infinite_optional = np.isinf(frame.loc[usable, optional].to_numpy(dtype="float64")).any(axis=1)
    bad_rows = frame.index[usable][~np.isfinite(values).all(axis=1) | infinite_optional]
    missing_optional = {c: int(frame.loc[usable, c].isna().sum()) for c in optional}
    instrument = instrument_name(pool_id)
    mapping = qlib_store.mapping()
    owners = [e["pool_id"] for e in mapping.values()]
    roundtrip_ok = mapping.get(instrument, {}).get("pool_id") == pool_id and len(set(owners)) == len(owners)

    yield Output(
        frame,
        metadata={
            "pool_id": pool_id,
            "feature_set_version": version,
            "features": len(columns),
            "grid_rows": len(frame),
            "real_bars": int(real.sum()),
            "filled_bars": int(frame["is_filled"].sum()),
            "warmup_rows": int(frame["is_warmup"].sum()),
            "usable_rows": int(usable.sum()),
            "instrument": instrument,
            "feature_vectors_written": int(real.sum()),
            "optional_features_missing": MetadataValue.json(missing_optional),
            "collector_vectors_read": -1 if collector_vectors is None else len(collector_vectors),
            "stale_feature_vectors_kept": stale_vectors,
        },
    )
    yield AssetCheckResult(
        check_name="no_nan_after_warmup",
        passed=len(bad_rows) == 0,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "pool_id": pool_id,
            "features_checked": len(core),
            "rows_checked": int(usable.sum()),
            "rows_with_nan": len(bad_rows),
            "first_rows_with_nan": MetadataValue.json([t.isoformat() for t in bad_rows[:20]]),
        },
    )
    yield AssetCheckResult(
        check_name="instrument_mapping_roundtrip",
        passed=roundtrip_ok,
        severity=AssetCheckSeverity.ERROR,
        metadata={"pool_id": pool_id, "instrument": instrument, "instruments_in_store": len(mapping)},
    )
