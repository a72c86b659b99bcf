"""Where each stage's output is stored, once, and read back by the next stage.

* :class:`PoolPickleIOManager` - values that only the lineage reads (validated bars, trade
  analyses, the model): one pickle per pool and asset (one file for an unpartitioned asset) under
  the data dir. A run over a batch of pools hands it ``dict[pool_id, value]`` and gets one back.
* :class:`FeatureFramesIOManager` - the feature frames: each pool's series is in the QLib store
  (the feature stage writes it there, QLib evaluates the features from it), its vectors' ids in
  ``q50_feature_vectors``; the store records each pool's feature set (or why it is blocked), and
  loading evaluates the frames again from the store. No copy of the frames is kept.
* :class:`QlibStoreInput` - the model's view of the features: every pool's series and QLib's
  expression engine over them, i.e. the QLib store the feature stage writes (nothing is copied).
* :class:`Q50TableIOManager` - stages whose output is a project table (``q50_regime_labels``,
  ``q50_signals``, ``q50_backtest_results``, ``q50_trading_history``): a batch is written in one
  transaction keyed by pool (and backtest run); loading reads the rows back per pool.

A pool a stage blocked (a :class:`~q50_assets.lineage.common.gate.Blocked` value) is stored as such in a
pickle; in a table it has no rows (regimes and signals delete the pool's old rows, so a pool that
became unsafe stops feeding strategies; backtest runs are history and stay).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from urllib.parse import quote

from dagster import AssetKey, ConfigurableIOManager, InputContext, OutputContext
from pydantic import Field

from q50_assets.db.q50_models import q50_regime_labels, q50_signals
from q50_assets.lineage.backtest.step import results_rows
from q50_assets.storage.project_tables import ProjectTables
from q50_assets.storage.files import replace_file
from q50_assets.storage.qlib_store import QlibStore
from q50_assets.lineage.common.gate import Blocked
from q50_assets.lineage.features.step import READ_BACK_FIELDS, FeatureConfig, frames_from_store


class MissingStoredValue(LookupError):
    """A stage's input was never stored (the upstream asset was not materialized for that pool)."""


def _pool_values(context: OutputContext, obj) -> dict:
    """The output of a batch run: exactly one value per partition of the run."""
    keys = list(context.asset_partition_keys)
    if not isinstance(obj, dict):
        raise TypeError(f"{context.asset_key.to_user_string()}: a partitioned output must be dict[pool_id, value] "
                        f"(got {type(obj).__name__})")
    missing, extra = sorted(set(keys) - set(obj)), sorted(set(obj) - set(keys))
    if missing or extra:
        raise ValueError(f"{context.asset_key.to_user_string()}: output pools differ from the run's partitions "
                         f"(missing {missing[:5]}, unexpected {extra[:5]})")
    return obj


class PoolPickleIOManager(ConfigurableIOManager):
    """One pickle per (asset, pool); a batch is written and read as ``dict[pool_id, value]``."""

    base_dir: str = Field(description="Directory of the stored values (under the data dir, shared by all runs).")

    def _path(self, asset_key, partition: str | None) -> Path:
        base = Path(self.base_dir, *asset_key.path)
        return base.with_suffix(".pkl") if partition is None else base / f"{quote(partition, safe='')}.pkl"

    def _dump(self, path: Path, value) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside and renamed: a reader (another run) never sees half a pickle.
        replace_file(path, write=lambda handle: pickle.dump(value, handle, protocol=pickle.HIGHEST_PROTOCOL))

    def handle_output(self, context: OutputContext, obj) -> None:
        if not context.has_asset_partitions:
            self._dump(self._path(context.asset_key, None), obj)
            return
        self.store_values(context.asset_key.to_user_string(), _pool_values(context, obj))

    def store_values(self, asset: str, values: dict) -> None:
        """A batch's values, per pool (what a run stores; the lineage run without Dagster too)."""
        for pool_id, value in values.items():
            self._dump(self._path(AssetKey(asset), pool_id), value)

    def load_values(self, asset: str, pool_ids: list[str]) -> dict:
        return self.load(asset, pool_ids)

    def load_input(self, context: InputContext):
        if not context.has_asset_partitions:
            return self._load(context.asset_key, None)
        if context.has_partition_key:  # a batch run: every pool of the batch must have been stored
            return {pool_id: self._load(context.asset_key, pool_id) for pool_id in context.asset_partition_keys}
        # A pooled stage reads every registered pool: one never materialized is named as not
        # computed (the stage counts it and says why), not a failure of the whole stage.
        values = {}
        for pool_id in context.asset_partition_keys:
            try:
                values[pool_id] = self._load(context.asset_key, pool_id)
            except MissingStoredValue:
                values[pool_id] = Blocked(pool_id, context.asset_key.to_user_string(),
                                          "never materialized: no stored value")
        return values

    def load(self, asset: str, pool_ids: list[str] | None = None):
        """What a stage stored, outside a run (the benchmark reads a run's outputs): per pool for a
        partitioned asset, the one value otherwise."""
        key = AssetKey(asset)
        if pool_ids is None:
            return self._load(key, None)
        return {pool_id: self._load(key, pool_id) for pool_id in pool_ids}

    def _load(self, asset_key, partition: str | None):
        path = self._path(asset_key, partition)
        try:
            with open(path, "rb") as handle:
                return pickle.load(handle)
        except FileNotFoundError:
            where = f"pool {partition}" if partition else "it"
            raise MissingStoredValue(f"{asset_key.to_user_string()} has no stored value for {where} ({path}): "
                                     "materialize it first") from None


class FeatureFramesIOManager(ConfigurableIOManager):
    """The feature frames, kept once: in the QLib store (module docstring)."""

    store: QlibStore
    tables: ProjectTables
    timeframe: str  # the settings' timeframe

    def handle_output(self, context: OutputContext, obj) -> None:
        self.store_values(context.asset_key.to_user_string(), _pool_values(context, obj), getattr(obj, "config", None))

    def store_values(self, asset: str, frames: dict, config=None) -> None:
        config = config if config is not None else getattr(frames, "config", None)
        if config is None and not all(isinstance(v, Blocked) for v in frames.values()):
            raise TypeError(f"{asset}: feature frames must come with their feature set "
                            "(FeatureFrames): it is what reads them back from the store")
        feature_set = config.model_dump(mode="json") if config is not None else None
        self.store.record_frames({
            p: ({"blocked": {"stage": v.stage, "reason": v.reason}} if isinstance(v, Blocked)
                else {"feature_set": feature_set, "feature_set_version": config.version})
            for p, v in frames.items()})

    def load_input(self, context: InputContext):
        return self.load(list(context.asset_partition_keys))

    def load_values(self, asset: str, pool_ids: list[str]) -> dict:
        return self.load(pool_ids)

    def load(self, pool_ids: list[str]) -> dict:
        """Per pool, its feature frame evaluated from the store, or the Blocked it was stored as."""
        recorded = self.store.recorded_frames(pool_ids)
        missing = [p for p, entry in recorded.items() if entry is None]
        if missing:
            raise MissingStoredValue(f"qlib_features has no stored value for pools {missing[:5]} "
                                     f"({len(missing)} in all): materialize it first")
        out: dict = {}
        by_feature_set: dict[str, list[str]] = {}
        for pool_id, entry in recorded.items():
            if "blocked" in entry:
                out[pool_id] = Blocked(pool_id, entry["blocked"]["stage"], entry["blocked"]["reason"])
            else:
                by_feature_set.setdefault(json.dumps(entry["feature_set"], sort_keys=True), []).append(pool_id)
        for feature_set, pools in by_feature_set.items():
            config = FeatureConfig(**json.loads(feature_set))
            raw = self.store.features(pools, {**config.expressions, **READ_BACK_FIELDS})
            ids = self.tables.feature_vector_ids_many(self.timeframe, config.version, pools)
            out.update(frames_from_store(raw, ids, config))
        return {p: out[p] for p in pool_ids}


class QlibStoreInput(ConfigurableIOManager):
    """Loads ``qlib_features`` for an asset over every pool (the model) as the QLib store itself:
    the feature stage keeps each pool's series there and QLib evaluates the features from it, so the
    reader gets the store rather than a copy of every pool's frame."""

    store: QlibStore

    def handle_output(self, context: OutputContext, obj) -> None:
        raise TypeError(f"{context.asset_key.to_user_string()}: the QLib store is written by the feature stage, "
                        "not through this input manager")

    def load_input(self, context: InputContext) -> QlibStore:
        return self.store


# Asset name -> the project table its rows go to (per pool and timeframe).
POOL_ROW_TABLES = {"regime_labels": q50_regime_labels, "q50_signals": q50_signals}


def write_table_outputs(db: ProjectTables, timeframe: str, asset: str, values: dict) -> dict[str, int]:
    """A batch's output of a table-shaped stage written in one transaction; rows written per pool."""
    if asset in POOL_ROW_TABLES:
        return db.replace_pool_rows_many(POOL_ROW_TABLES[asset], timeframe,
                                         {p: (None if isinstance(v, Blocked) else v) for p, v in values.items()})
    if asset == "backtest_results":
        # One row per variant, the permutation null's draws on the q50 row (the portfolio's pooled p-value).
        ok = {p: (v.backtest_run_id, results_rows(v)) for p, v in values.items()
              if not isinstance(v, Blocked) and v.status == "ok"}
        return db.replace_backtest_results_many(timeframe, ok) if ok else {}
    if asset == "q50_trading_history":
        histories = {p: (v.backtest_run_id, v.rows) for p, v in values.items() if not isinstance(v, Blocked)}
        return db.replace_trading_history_many(histories) if histories else {}
    raise ValueError(f"{asset}: no project table is defined for this asset")


class Q50TableIOManager(ConfigurableIOManager):
    """Stores the table-shaped stages in the project's tables, a batch per transaction."""

    tables: ProjectTables
    timeframe: str  # the settings' timeframe

    def handle_output(self, context: OutputContext, obj) -> None:
        written = self.store_values(context.asset_key.to_user_string(), _pool_values(context, obj))
        context.add_output_metadata({"table_rows_written": int(sum(written.values())),
                                     "pools_written": len(written)})

    def store_values(self, asset: str, values: dict) -> dict[str, int]:
        return write_table_outputs(self.tables, self.timeframe, asset, values)

    def load_input(self, context: InputContext):
        return self.load_values(context.asset_key.to_user_string(), list(context.asset_partition_keys))

    def load_values(self, name: str, pool_ids: list[str]):
        """A batch's stored values, as a run's input gets them (the lineage run without Dagster too)."""
        db = self.tables
        if name in POOL_ROW_TABLES:
            return db.pool_rows(POOL_ROW_TABLES[name], self.timeframe, pool_ids)
        if name == "backtest_results":
            # Per pool its latest backtest run's rows; a pool without one (blocked, no signal) is absent.
            latest = db.latest_backtest_results(self.timeframe, pool_ids)
            return {p: rows.set_index("variant") for p, rows in latest.groupby("pool_id")} if len(latest) else {}
        if name == "q50_trading_history":
            latest = db.latest_backtest_results(self.timeframe, pool_ids)
            runs = dict(zip(latest["pool_id"], latest["backtest_run_id"])) if len(latest) else {}
            return db.trading_history_many(runs)
        raise ValueError(f"{name}: no project table is defined for this asset")

