"""Stage 2 - QLib features: each safe pool's bars on a full grid in QLib's binary store, features
from QLib's expression engine (one ``D.features`` call per batch of pools), one frame per pool.
The trades stage has written the pools' trade fields into the same store first (flow features
read them); the collector's own feature vectors are stored here as of each bar's close when
``collector_feature_vectors`` is on.

Formulas live in :mod:`q50_assets.lineage.features.formulas`; the store is passed in (the QLib door,
:class:`q50_assets.lineage.common.ports.FeatureStore`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from q50_assets.lineage.common.bar_length import BarLength
from q50_assets.lineage.features.formulas import (
    asof_collector_features,
    feature_expressions,
    feature_set_version,
    mark_warmup,
    may_be_missing,
    to_bar_grid,
    warmup_bars,
)
from q50_assets.settings import CollectorVectorSettings, IndicatorSettings, Settings, TradeSettings
from q50_assets.lineage.common.ports import CollectorSource, FeatureStore, ProjectTableStore
from q50_assets.lineage.ohlcv.rules import ValidatedBars
from q50_assets.lineage.features.formulas import collector_feature_fields
from q50_assets.lineage.common.gate import Blocked
from q50_assets.lineage.ohlcv.step import bars_or_blocked

STAGE = "qlib_features"
# Columns a feature frame has besides the features themselves.
FRAME_COLUMNS = ("close", "is_filled", "is_warmup", "known_at")


class FeatureConfig(IndicatorSettings, CollectorVectorSettings, TradeSettings, BarLength):
    """The feature set: the indicator periods, the trades' flow switch and the collector's own
    vectors switch from their settings sections, at the configured bar length."""

    @classmethod
    def of(cls, settings: Settings) -> "FeatureConfig":
        return cls(**settings.nautilus_trader.strategy_config.regime_detection.model_dump(include=set(IndicatorSettings.model_fields)),
                   collector_feature_vectors=settings.model.collector_feature_vectors,
                   **settings.trades.model_dump(), bar_seconds=settings.bar_seconds)

    @cached_property
    def expressions(self) -> dict[str, str]:
        return feature_expressions(self.rsi_periods, self.macd_fast, self.macd_slow,
                                   flow_features=self.flow_features, collector_features=self.collector_feature_vectors)

    @property
    def warmup(self) -> int:
        return warmup_bars(self.macd_slow)

    @property
    def version(self) -> str:
        return feature_set_version(self.expressions, self.warmup)

    @property
    def columns(self) -> list[str]:
        return list(self.expressions)

    @property
    def core_columns(self) -> list[str]:
        """Features that are never missing after the warm-up."""
        return [c for c in self.expressions if not may_be_missing(c)]

    @property
    def optional_columns(self) -> list[str]:
        """Flow and collector features: NaN where their data is missing (counted), never infinite."""
        return [c for c in self.expressions if may_be_missing(c)]


class FeatureFrames(dict):
    """The stage's output for a batch: pool -> feature frame (or Blocked), with the feature set
    (``config``) the frames were evaluated with, which is what reads them back from the store."""

    def __init__(self, frames: Mapping, config: FeatureConfig):
        super().__init__(frames)
        self.config = config


def pool_grids(bars_by_pool: Mapping[str, pd.DataFrame], config: FeatureConfig) -> dict[str, pd.DataFrame]:
    """Each pool's validated bars on the full grid the store holds (missing bars flat and flagged)."""
    return {pool_id: to_bar_grid(bars, config.bar_seconds) for pool_id, bars in bars_by_pool.items()}


def collector_fields(grid: pd.DataFrame, vectors: pd.DataFrame | None, config: FeatureConfig) -> pd.DataFrame | None:
    """The collector's vectors of one pool as store fields on its grid, each bar only the vector
    written by the bar's close (``research.features.asof_collector_features``); None when the
    pool has none (its fields are then cleared: missing, never zero)."""
    if vectors is None or vectors.empty:
        return None
    vectors = vectors.drop(columns=["id", "feature_set_version"], errors="ignore")
    return asof_collector_features(grid.index, config.bar_seconds, vectors)


def feature_frames(raw: pd.DataFrame, grids: Mapping[str, pd.DataFrame], bars_by_pool: Mapping[str, pd.DataFrame],
                   config: FeatureConfig) -> dict[str, pd.DataFrame]:
    """Per pool, the evaluated features (``raw``: index (pool_id, open_time), one column per
    expression) with close, is_filled, is_warmup and known_at (the bar's close)."""
    bar = pd.Timedelta(seconds=config.bar_seconds)
    out = {}
    for pool_id, grid in grids.items():
        frame = raw.loc[pool_id].copy()
        frame["close"] = grid["close"].reindex(frame.index)
        frame["is_filled"] = grid["filled"].reindex(frame.index).astype(bool)
        frame["is_warmup"] = mark_warmup(frame.index, bars_by_pool[pool_id].index[0], config.bar_seconds,
                                         config.warmup)
        frame["known_at"] = frame.index + bar
        out[pool_id] = frame
    return out


# Store fields evaluated with the features when a frame is read back from the store.
READ_BACK_FIELDS = {"close": "$close", "filled": "$filled"}


def frames_from_store(raw: pd.DataFrame, vector_ids: Mapping[str, pd.Series],
                      config: FeatureConfig) -> dict[str, pd.DataFrame]:
    """Per pool, its feature frame as the stage made it, evaluated again from the QLib store:
    ``raw`` = the store's evaluation of ``config.expressions`` and READ_BACK_FIELDS (index
    (pool_id, open_time)); ``vector_ids`` = per pool, the ids of its ``q50_feature_vectors`` rows
    by bar open. Every feature value is the one the stage computed (same store, same expressions);
    ``close`` is the store's (float32) close."""
    bar = pd.Timedelta(seconds=config.bar_seconds)
    out = {}
    for pool_id, ids in vector_ids.items():
        evaluated = raw.loc[pool_id]
        frame = evaluated[config.columns].copy()
        frame["close"] = evaluated["close"]
        frame["is_filled"] = evaluated["filled"].astype(bool)
        # The store's series starts at the pool's first bar.
        frame["is_warmup"] = mark_warmup(frame.index, frame.index[0], config.bar_seconds, config.warmup)
        frame["known_at"] = frame.index + bar
        # Only real bars have vectors (as the stage assigns them: filled bars get none).
        frame["feature_vector_id"] = ids.reindex(frame.index[~frame["is_filled"].to_numpy()])
        out[pool_id] = frame
    return out


@dataclass(frozen=True)
class FeatureChecks:
    """The stage's two rules for one pool; both block the pool downstream when they fail."""

    rows_checked: int
    rows_with_nan: pd.DatetimeIndex  # real, post-warm-up bars with a NaN/infinite core or infinite optional feature
    features_checked: int  # core features (never missing after the warm-up)
    optional_missing: dict  # optional (flow / collector) feature -> usable rows where it is missing
    instrument: str
    instrument_owner: str | None  # the pool the store maps the instrument to
    instruments_shared: bool  # two pools mapped to one instrument anywhere in the store

    @property
    def no_nan_after_warmup(self) -> bool:
        return len(self.rows_with_nan) == 0

    @property
    def instrument_mapping_roundtrip(self) -> bool:
        return not self.instruments_shared and self.instrument_owner is not None

    def failures(self) -> list[str]:
        return [name for name, ok in (("no_nan_after_warmup", self.no_nan_after_warmup),
                                      ("instrument_mapping_roundtrip", self.instrument_mapping_roundtrip)) if not ok]


def check_frame(pool_id: str, frame: pd.DataFrame, config: FeatureConfig, instrument: str,
                mapping: Mapping[str, Mapping]) -> FeatureChecks:
    usable = ~frame["is_filled"] & ~frame["is_warmup"]
    # Flow and collector features may be missing (NaN) where their data is; the rest may not. None may be infinite.
    core, optional = config.core_columns, config.optional_columns
    values = frame.loc[usable, core].to_numpy()
    infinite_optional = np.isinf(frame.loc[usable, optional].to_numpy(dtype="float64")).any(axis=1)
    bad_rows = frame.index[usable][~np.isfinite(values).all(axis=1) | infinite_optional]
    owners = [e["pool_id"] for e in mapping.values()]
    owner = mapping.get(instrument, {}).get("pool_id")
    return FeatureChecks(
        rows_checked=int(usable.sum()),
        rows_with_nan=bad_rows,
        features_checked=len(core),
        optional_missing={c: int(frame.loc[usable, c].isna().sum()) for c in optional},
        instrument=instrument,
        instrument_owner=owner if owner == pool_id else None,
        instruments_shared=len(set(owners)) != len(owners),
    )


def frame_summary(frame: pd.DataFrame, config: FeatureConfig) -> dict:
    real = ~frame["is_filled"]
    return {
        "feature_set_version": config.version,
        "features": len(config.columns),
        "grid_rows": len(frame),
        "real_bars": int(real.sum()),
        "filled_bars": int(frame["is_filled"].sum()),
        "warmup_rows": int(frame["is_warmup"].sum()),
        "usable_rows": int((real & ~frame["is_warmup"]).sum()),
    }


def features_step(validated: dict[str, ValidatedBars], store: FeatureStore, db: CollectorSource,
                  tables: ProjectTableStore, settings: Settings, progress=None
                  ) -> tuple[dict[str, pd.DataFrame | Blocked], dict[str, FeatureChecks], dict[str, int],
                             dict[str, int]]:
    """A batch of pools: safe pools' grids written to the store (with the collector's own vectors
    as of each bar's close, when ``features.collector_feature_vectors``), blocked pools taken out of
    it, one ``D.features`` call, per-pool frames checked; the vectors of pools passing both checks
    written in one transaction. Returns (frame or Blocked per pool, check outcomes, stale vectors
    per pool, collector vectors read per pool: -1 when the setting is off)."""
    config = FeatureConfig.of(settings)
    bars = {p: bars_or_blocked(v) for p, v in validated.items()}
    safe = {p: b for p, b in bars.items() if not isinstance(b, Blocked)}
    out: dict[str, pd.DataFrame | Blocked] = {p: b for p, b in bars.items() if isinstance(b, Blocked)}
    # A pool blocked now must not keep feeding its old series to the pooled model.
    store.remove_pools(sorted(out))
    checks: dict[str, FeatureChecks] = {}
    stale: dict[str, int] = {}
    vectors_read = dict.fromkeys(safe, -1)
    if safe:
        grids = pool_grids(safe, config)
        store.write_pools(grids)
        if config.collector_feature_vectors:
            fields = collector_feature_fields()
            for pool_id, grid in grids.items():
                vectors = db.collector_feature_vectors(pool_id)
                vectors_read[pool_id] = len(vectors)
                stored = collector_fields(grid, vectors, config)
                if stored is None:
                    store.clear_fields(pool_id, fields)
                else:
                    store.write_fields(pool_id, stored, fields)
        raw = store.features(sorted(safe), config.expressions)
        frames = feature_frames(raw, grids, safe, config)
        mapping = store.mapping()
        checks = {p: check_frame(p, f, config, store.instrument_for(p), mapping) for p, f in frames.items()}
        passed = {p: f for p, f in frames.items() if not checks[p].failures()}
        failed = [p for p in frames if p not in passed]
        for p in failed:
            out[p] = Blocked(p, STAGE, f"checks failed: {', '.join(checks[p].failures())}")
        store.remove_pools(failed)
        real = {p: f[~f["is_filled"]] for p, f in passed.items()}
        written = tables.upsert_feature_vectors_many(settings.timeframe, config.version, real, config.columns)
        for p, frame in passed.items():
            frame["feature_vector_id"], stale[p] = written[p]
            out[p] = frame
    if progress:
        progress(len(validated))
    return FeatureFrames({p: out[p] for p in validated}, config), checks, stale, vectors_read
