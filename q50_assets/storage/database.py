"""The collector database: the project's one door to it (SQLite or PostgreSQL by URL alone)."""

from __future__ import annotations

import contextlib
import hashlib
import math

import pandas as pd
from dagster import ConfigurableResource
from pydantic import Field
from sqlalchemy import DateTime, Engine, column, delete, func, inspect, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from q50_assets.lineage.ohlcv.bar_changes import window_rows
from q50_assets.db import migrate
from q50_assets.db.collector_models import (
    collection_metadata,
    collector_feature_vectors,
    new_pools_history,
    new_pools_history_enhanced,
    ohlcv_data,
    pools,
    trades,
)
from q50_assets.db.engine import get_engine, redact_url
from q50_assets.db.q50_models import (
    q50_backtest_results,
    q50_feature_vectors,
    q50_regime_labels,
    q50_signals,
    q50_trading_history,
)
from q50_assets.db.types import TimestampTZ
from q50_assets.lineage.ohlcv.rules import RAW_COLUMNS
from q50_assets.lineage.common.costs import ReserveSeries
from q50_assets.lineage.features.formulas import COLLECTOR_VECTOR_FEATURES
from q50_assets.lineage.trades.rules import RAW_TRADE_COLUMNS

def _utc(value) -> pd.Timestamp:
    """SQLite returns naive datetimes (stored as UTC), PostgreSQL aware ones."""
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


# URLs whose migrations ran in this process (upgrade is idempotent; once is enough).
_migrated: set[str] = set()


class DatabaseWriteError(RuntimeError):
    """A write transaction to the project's tables failed (its rows were not half-written)."""


def _lock_key(*parts: str) -> int:
    """A signed 64-bit key for ``pg_advisory_xact_lock`` naming one table's rows of one pool/run."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class CollectorDatabase(ConfigurableResource):
    """Reads the collector's tables; owns the project's tables (via migrations).

    All SQL is built with SQLAlchemy Core and bound parameters.
    """

    url: str = Field(description="SQLAlchemy URL of the collector database (from Q50_DATABASE_URL).")

    @property
    def engine(self) -> Engine:
        return get_engine(self.url)

    @property
    def display_url(self) -> str:
        return redact_url(self.url)

    def migrate(self) -> str:
        """Apply the project's migrations; returns the revision reached."""
        return migrate.upgrade(self.engine)

    def ensure_schema(self) -> None:
        """Run the project's migrations once per process before writing q50 tables."""
        if self.url not in _migrated:
            self.migrate()
            _migrated.add(self.url)

    @contextlib.contextmanager
    def _write(self, what: str, table, *key: str):
        """One write transaction over the rows of ``table`` identified by ``key`` (a pool, a backtest run)."""
        with self._write_many(what, table, [key]) as conn:
            yield conn

    @contextlib.contextmanager
    def _write_many(self, what: str, table, keys):
        """One write transaction over the rows of ``table`` identified by each of ``keys`` (a batch
        of pools, or of (backtest run, pool) pairs).

        On PostgreSQL it first takes a transaction-scoped advisory lock on (table, key) for every
        key, in sorted order (two batches sharing pools never deadlock): two runs writing the same
        rows at once (two refreshes of one pool) then take turns instead of both deleting the old
        rows and both inserting (a unique violation, or duplicates where the table has no unique
        key). SQLite serialises writers itself. A database error is re-raised naming the write and
        the database (password hidden), the driver's error chained.
        """
        try:
            with self.engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    for lock in sorted({_lock_key(table.name, *key) for key in keys}):
                        conn.execute(select(func.pg_advisory_xact_lock(lock)))
                yield conn
        except DBAPIError as exc:
            first_line = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else ""
            lost = " The connection was lost: re-run once the database is reachable." if exc.connection_invalidated else ""
            raise DatabaseWriteError(
                f"{what} in {self.display_url} failed ({type(exc.orig).__name__}: {first_line}); it is one "
                f"transaction, so no partial rows remain.{lost}") from exc

    def _insert(self, table):
        return (pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert)(table)

    def upsert_feature_vectors(
        self, pool_id: str, timeframe: str, version: str, frame: pd.DataFrame, feature_columns: list[str]
    ) -> tuple[pd.Series, int]:
        """One pool's vectors: :meth:`upsert_feature_vectors_many` for a batch of one."""
        return self.upsert_feature_vectors_many(timeframe, version, {pool_id: frame}, feature_columns)[pool_id]

    def upsert_feature_vectors_many(
        self, timeframe: str, version: str, frames: dict[str, pd.DataFrame], feature_columns: list[str]
    ) -> dict[str, tuple[pd.Series, int]]:
        """Write a batch of pools' feature vectors (per pool: index open_time; known_at, is_warmup
        columns) in one transaction.

        Keyed by (pool, timeframe, open time, feature-set version): re-runs update in place, so
        ids stay stable for signals and trading history to point at. A vector whose bar the
        collector has since deleted is kept (a decision may have used it) and counted as stale.
        Returns per pool (vector id per open_time, number of stale vectors).
        """
        self.ensure_schema()
        t = q50_feature_vectors
        records = []
        for pool_id, frame in frames.items():
            values = frame[feature_columns].to_numpy(dtype="float64")
            known_at = [ts.to_pydatetime() for ts in frame["known_at"]]
            warmup = frame["is_warmup"].to_numpy(dtype=bool)
            records.extend(
                {
                    "pool_id": pool_id,
                    "timeframe": timeframe,
                    "timestamp": open_time.to_pydatetime(),
                    "known_at": known_at[i],
                    "feature_set_version": version,
                    "is_warmup": bool(warmup[i]),
                    "feature_values": {c: (None if math.isnan(v) else float(v))
                                       for c, v in zip(feature_columns, values[i])},
                }
                for i, open_time in enumerate(frame.index)
            )
        key = [t.c.pool_id, t.c.timeframe, t.c.timestamp, t.c.feature_set_version]
        stmt = self._insert(t)
        stmt = stmt.on_conflict_do_update(
            index_elements=key,
            set_={
                "known_at": stmt.excluded.known_at,
                "is_warmup": stmt.excluded.is_warmup,
                "feature_values": stmt.excluded.feature_values,
            },
        )
        pool_ids = sorted(frames)
        with self._write_many(f"writing {len(records)} feature vectors of {_pools_text(pool_ids)}", t,
                              [(p, timeframe, version) for p in pool_ids]) as conn:
            # executemany: one compiled statement, batched by the driver ("insertmanyvalues"),
            # instead of compiling a 1000-row VALUES clause per chunk.
            if records:
                conn.execute(stmt, records)
            rows = []
            for chunk in _chunks(pool_ids):
                scope = (t.c.pool_id.in_(chunk), t.c.timeframe == timeframe, t.c.feature_set_version == version)
                rows.extend(conn.execute(select(t.c.pool_id, t.c.timestamp, t.c.id).where(*scope)).all())
        by_pool: dict[str, dict] = {p: {} for p in pool_ids}
        for pid, ts, vid in rows:
            by_pool[pid][_utc(ts)] = vid
        out = {}
        for pool_id, frame in frames.items():
            ids = pd.Series(by_pool[pool_id], dtype="int64")
            stale = int((~ids.index.isin(frame.index)).sum())
            out[pool_id] = (ids.reindex(frame.index), stale)
        return out

    def replace_signals(self, pool_id: str, timeframe: str, signals: pd.DataFrame) -> int:
        """Replace one pool's signals in one transaction (no duplicates, never half-written)."""
        return self.replace_pool_rows_many(q50_signals, timeframe, {pool_id: signals})[pool_id]

    def replace_regime_labels(self, pool_id: str, timeframe: str, regimes: pd.DataFrame) -> int:
        """Replace one pool's regime labels in one transaction."""
        return self.replace_pool_rows_many(q50_regime_labels, timeframe, {pool_id: regimes})[pool_id]

    def replace_pool_rows_many(self, table, timeframe: str, frames: dict[str, pd.DataFrame | None]) -> dict[str, int]:
        """Replace a batch of pools' rows of ``table`` (q50_signals, q50_regime_labels) in one
        transaction: each pool's rows deleted and ``frames[pool]`` (index = bar open) inserted.
        A pool mapped to None only loses its rows (a pool now blocked must not keep feeding its
        old rows to whoever reads the table). Returns rows written per pool."""
        self.ensure_schema()
        columns = [c.name for c in table.columns if c.name not in ("id", "pool_id", "timeframe", "timestamp", "created_at")]
        records, written = [], {}
        for pool_id, frame in frames.items():
            if frame is None:
                written[pool_id] = 0
                continue
            missing = [c for c in columns if c not in frame.columns]
            if missing:
                raise ValueError(f"{table.name}: rows for pool {pool_id} lack columns {missing}")
            # Column-wise to plain Python values (NaN -> NULL, Timestamp -> datetime, numpy -> builtin).
            as_python = {}
            for c in columns:
                series = frame[c]
                if isinstance(series.dtype, pd.DatetimeTZDtype):
                    as_python[c] = [None if pd.isna(v) else v.to_pydatetime() for v in series]
                else:
                    as_python[c] = [None if isinstance(v, float) and math.isnan(v) else v
                                    for v in series.astype(object).tolist()]
            records.extend(
                {"pool_id": pool_id, "timeframe": timeframe, "timestamp": open_time.to_pydatetime(),
                 **{c: as_python[c][i] for c in columns}}
                for i, open_time in enumerate(frame.index)
            )
            written[pool_id] = len(frame)
        pool_ids = sorted(frames)
        with self._write_many(f"replacing {table.name} of {_pools_text(pool_ids)} ({len(records)} rows)", table,
                              [(p, timeframe) for p in pool_ids]) as conn:
            for chunk in _chunks(pool_ids):
                conn.execute(delete(table).where(table.c.pool_id.in_(chunk), table.c.timeframe == timeframe))
            if records:
                conn.execute(table.insert(), records)
        return written

    def pool_rows(self, table, timeframe: str, pool_ids: list[str]) -> dict[str, pd.DataFrame]:
        """A batch of pools' rows of ``table`` (q50_signals, q50_regime_labels) as they were written:
        per pool a frame indexed by bar open (UTC), the table's value columns, UTC timestamps."""
        columns = [c.name for c in table.columns if c.name not in ("id", "pool_id", "timeframe", "created_at")]
        rows = []
        with self.engine.connect() as conn:
            for chunk in _chunks(sorted(pool_ids)):
                stmt = (select(table.c.pool_id, *(table.c[c] for c in columns))
                        .where(table.c.pool_id.in_(chunk), table.c.timeframe == timeframe)
                        .order_by(table.c.pool_id, table.c.timestamp))
                rows.extend(conn.execute(stmt).all())
        frame = pd.DataFrame(rows, columns=["pool_id", *columns])
        for col in table.columns:
            if col.name in frame.columns and isinstance(col.type, DateTime):
                frame[col.name] = pd.to_datetime(frame[col.name], utc=True)
        out = {}
        groups = dict(tuple(frame.groupby("pool_id", sort=False))) if len(frame) else {}
        for pool_id in pool_ids:
            part = groups.get(pool_id, frame.iloc[0:0])
            out[pool_id] = part.drop(columns="pool_id").set_index("timestamp").rename_axis("open_time")
        return out

    def signal_for_timestamp(self, pool_id: str, timeframe: str, at) -> dict | None:
        """The latest persisted signal KNOWN at ``at`` (as-of backward), or None. Never a later one."""
        at = pd.Timestamp(at)
        at = at.tz_localize("UTC") if at.tzinfo is None else at.tz_convert("UTC")
        t = q50_signals
        stmt = (
            select(t)
            .where(t.c.pool_id == pool_id, t.c.timeframe == timeframe, t.c.known_at <= at.to_pydatetime())
            .order_by(t.c.known_at.desc(), t.c.timestamp.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(stmt).mappings().first()
        return None if row is None else dict(row)

    def read_signals(self, pool_id: str, timeframe: str) -> pd.DataFrame:
        """One pool's rows of ``q50_signals`` (index open_time UTC, the table's columns)."""
        t = q50_signals
        stmt = select(t).where(t.c.pool_id == pool_id, t.c.timeframe == timeframe).order_by(t.c.timestamp)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).mappings().all()
        frame = pd.DataFrame([dict(r) for r in rows], columns=[c.name for c in t.columns])
        frame.index = pd.DatetimeIndex([_utc(v) for v in frame["timestamp"]], name="open_time")
        frame["known_at"] = pd.to_datetime([_utc(v) for v in frame["known_at"]], utc=True) if len(frame) else \
            pd.Series(dtype="datetime64[ns, UTC]")
        return frame.drop(columns=["id", "pool_id", "timeframe", "timestamp", "created_at"])

    def signal_loader(self, pool_id: str, timeframe: str):
        """A :class:`~q50_assets.lineage.signals.rules.Q50SignalLoader` over the stored signals of one pool
        (signals made elsewhere: ``strategy_config.signal_source: database``)."""
        from q50_assets.lineage.signals.rules import Q50SignalLoader

        return Q50SignalLoader(self.read_signals(pool_id, timeframe))

    def read_regime_labels(self, pool_id: str, timeframe: str) -> pd.DataFrame:
        """One pool's rows of ``q50_regime_labels`` (index open_time UTC)."""
        t = q50_regime_labels
        stmt = select(t).where(t.c.pool_id == pool_id, t.c.timeframe == timeframe).order_by(t.c.timestamp)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).mappings().all()
        frame = pd.DataFrame([dict(r) for r in rows], columns=[c.name for c in t.columns])
        frame.index = pd.DatetimeIndex([_utc(v) for v in frame["timestamp"]], name="open_time")
        frame["known_at"] = pd.to_datetime([_utc(v) for v in frame["known_at"]], utc=True) if len(frame) else \
            pd.Series(dtype="datetime64[ns, UTC]")
        return frame.drop(columns=["id", "pool_id", "timeframe", "timestamp", "created_at"])

    def read_bars(self, pool_id: str, timeframe: str) -> pd.DataFrame:
        """Every ``ohlcv_data`` row of one pool and timeframe, collector column names."""
        return self.read_bars_many([pool_id], timeframe)[pool_id]

    def read_bars_many(self, pool_ids: list[str], timeframe: str) -> dict[str, pd.DataFrame]:
        """Every ``ohlcv_data`` row of each pool of a batch (one query per 500 pools), per pool in
        (timestamp, id) order with the collector's column names; a pool without rows gets an empty frame."""
        rows = []
        with self.engine.connect() as conn:
            for chunk in _chunks(sorted(pool_ids)):
                stmt = (
                    select(ohlcv_data.c.pool_id, *(ohlcv_data.c[c] for c in RAW_COLUMNS))
                    .where(ohlcv_data.c.pool_id.in_(chunk), ohlcv_data.c.timeframe == timeframe)
                    .order_by(ohlcv_data.c.pool_id, ohlcv_data.c.timestamp, ohlcv_data.c.id)
                )
                rows.extend(conn.execute(stmt).all())
        frame = pd.DataFrame(rows, columns=["pool_id", *RAW_COLUMNS])
        groups = dict(tuple(frame.groupby("pool_id", sort=False))) if len(frame) else {}
        return {p: groups.get(p, frame.iloc[0:0]).drop(columns="pool_id").reset_index(drop=True) for p in pool_ids}

    def _columns(self, table_name: str) -> set[str]:
        """The columns a collector table has in this database ({} when it is absent). Collectors
        differ: the generic models' collection_metadata has last_updated, the PostgreSQL ones updated_at."""
        insp = inspect(self.engine)
        if table_name not in insp.get_table_names():
            return set()
        return {c["name"] for c in insp.get_columns(table_name)}

    def collector_progress(self, collector_type: str = "ohlcv_collector") -> dict | None:
        """The collector's own progress row for one of its collectors (run_count, updated_at), or None."""
        t = collection_metadata
        stamp = "updated_at" if "updated_at" in self._columns(t.name) else "last_updated"
        stmt = select(t.c.run_count, t.c.last_success, column(stamp, TimestampTZ).label("updated_at")).select_from(
            t).where(t.c.collector_type == collector_type)
        with self.engine.connect() as conn:
            row = conn.execute(stmt).mappings().first()
        if row is None:
            return None
        return {"run_count": row["run_count"],
                "last_success": None if row["last_success"] is None else _utc(row["last_success"]).isoformat(),
                "updated_at": None if row["updated_at"] is None else _utc(row["updated_at"]).isoformat()}

    def bar_summaries(self, timeframe: str, window_bars: int, bar_seconds: int) -> dict[str, dict]:
        """Per pool with bars of ``timeframe``: newest bar open (epoch s), row count, and the rows of
        the last ``window_bars`` bars (timestamp, OHLCV, as text) — what the sensor compares between
        ticks to see new bars and bars the collector revised in place (ohlcv_data has no updated_at).

        Two queries whatever the number of pools: one aggregate, one window join.
        """
        o = ohlcv_data
        newest = (
            select(o.c.pool_id, func.max(o.c.timestamp).label("newest"), func.count().label("rows"))
            .where(o.c.timeframe == timeframe)
            .group_by(o.c.pool_id)
            .subquery()
        )
        window = (
            select(o.c.pool_id, o.c.timestamp, o.c.open_price, o.c.high_price, o.c.low_price, o.c.close_price,
                   o.c.volume_usd)
            .join(newest, newest.c.pool_id == o.c.pool_id)
            .where(o.c.timeframe == timeframe, o.c.timestamp > newest.c.newest - window_bars * bar_seconds)
            .order_by(o.c.pool_id, o.c.timestamp, o.c.id)
        )
        with self.engine.connect() as conn:
            summaries = {pid: {"newest": int(ts), "rows": int(n), "window": []}
                         for pid, ts, n in conn.execute(select(newest))}
            windows: dict[str, list] = {}
            for pid, *row in conn.execute(window):
                windows.setdefault(pid, []).append(row)
        for pid, rows in windows.items():
            summaries[pid]["window"] = window_rows(rows, window_bars, bar_seconds)
        return summaries

    def read_trades(self, pool_id: str) -> pd.DataFrame:
        """Every ``trades`` row of one pool, collector column names (research.trades.RAW_TRADE_COLUMNS)."""
        return self.read_trades_many([pool_id])[pool_id]

    def read_trades_many(self, pool_ids: list[str]) -> dict[str, pd.DataFrame]:
        """Per pool of a batch, :meth:`read_trades` (one query per chunk of pools)."""
        rows = []
        with self.engine.connect() as conn:
            for chunk in _chunks(sorted(set(pool_ids))):
                stmt = (select(trades.c.pool_id, *(trades.c[c] for c in RAW_TRADE_COLUMNS))
                        .where(trades.c.pool_id.in_(chunk)).order_by(trades.c.pool_id, trades.c.id))
                rows.extend(conn.execute(stmt).all())
        frame = pd.DataFrame(rows, columns=["pool_id", *RAW_TRADE_COLUMNS])
        groups = dict(tuple(frame.groupby("pool_id", sort=False))) if len(frame) else {}
        empty = frame.iloc[0:0]
        return {p: groups.get(p, empty).drop(columns="pool_id").reset_index(drop=True) for p in pool_ids}

    # --- the collector's own feature vectors (its enhanced-history pool_feature_vectors) -----------
    def has_collector_feature_vectors(self) -> bool:
        """Whether this database has the collector's ``pool_feature_vectors`` (after our migrations
        moved any table of our own by that name to q50_feature_vectors, a remaining one is the
        collector's; its shape is checked all the same)."""
        self.ensure_schema()
        columns = self._columns(collector_feature_vectors.name)
        return bool(columns) and migrate.classify_pool_feature_vectors(columns) == "collector"

    def collector_feature_vectors(self, pool_id: str) -> pd.DataFrame:
        """The collector's vectors of one pool: id, timestamp (bar open, epoch s), feature_set_version,
        created_at (UTC) and the feature columns it has of COLLECTOR_VECTOR_FEATURES. Its forward-looking
        targets (price_return_*, volume_change_1h) are never selected. Empty without the table."""
        if not self.has_collector_feature_vectors():
            return pd.DataFrame(columns=["id", "timestamp", "feature_set_version", "created_at"])
        t = collector_feature_vectors
        present = self._columns(t.name)
        features = [c for c in COLLECTOR_VECTOR_FEATURES if c in present]
        stmt = (select(t.c.id, t.c.timestamp, t.c.feature_set_version, t.c.created_at, *(t.c[c] for c in features))
                .where(t.c.pool_id == pool_id).order_by(t.c.timestamp, t.c.id))
        with self.engine.connect() as conn:
            frame = pd.DataFrame(conn.execute(stmt).all(), columns=["id", "timestamp", "feature_set_version",
                                                                    "created_at", *features])
        frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
        return frame

    def collector_feature_vector_ids(self, pool_id: str, bar_opens: pd.DatetimeIndex) -> pd.Series:
        """Per bar open: the id of the collector's vector for that pool and bar (its ``timestamp`` = the
        bar open's epoch) of the newest feature_set_version (the most recently created; then the highest
        id). Bars without one are absent. Empty without the collector's table."""
        if len(bar_opens) == 0 or not self.has_collector_feature_vectors():
            return pd.Series(dtype="int64")
        t = collector_feature_vectors
        epochs = pd.DatetimeIndex(bar_opens).as_unit("s").asi8
        stmt = (select(t.c.id, t.c.timestamp, t.c.created_at)
                .where(t.c.pool_id == pool_id, t.c.timestamp >= int(epochs.min()), t.c.timestamp <= int(epochs.max())))
        with self.engine.connect() as conn:
            rows = pd.DataFrame(conn.execute(stmt).all(), columns=["id", "timestamp", "created_at"])
        if rows.empty:
            return pd.Series(dtype="int64")
        rows["created_at"] = pd.to_datetime(rows["created_at"], utc=True)
        # NaT first: a vector without created_at counts as the oldest.
        newest = rows.sort_values(["timestamp", "created_at", "id"], na_position="first").groupby("timestamp").tail(1)
        ids = pd.Series(newest["id"].astype("int64").to_numpy(),
                        index=pd.to_datetime(newest["timestamp"].astype("int64"), unit="s", utc=True))
        return ids[ids.index.isin(pd.DatetimeIndex(bar_opens))]

    def feature_vector_pointers(self, pool_id: str, decision_opens: pd.DatetimeIndex, own_ids,
                                use_collector: bool) -> tuple[pd.DataFrame, dict]:
        """The trading-history pointers of decisions made at the close of the bars ``decision_opens``:
        ``q50_feature_vector_id`` (the project's vector behind the decision, ``own_ids``),
        ``feature_vector_id`` and ``feature_vector_table`` — the collector's ``pool_feature_vectors`` row
        for that pool and bar when ``use_collector`` (risk_management.use_existing_feature_vectors) and
        the collector has one, else the project's. Returns (frame aligned with decision_opens, summary)."""
        own = pd.array(own_ids, dtype="Int64")
        frame = pd.DataFrame({"q50_feature_vector_id": own, "feature_vector_id": own,
                              "feature_vector_table": pd.array([None if pd.isna(v) else q50_feature_vectors.name
                                                                for v in own], dtype="object")})
        summary = {"use_existing_feature_vectors": use_collector, "collector_table": False,
                   "rows_pointing_at_collector": 0, "rows_pointing_at_project": int(frame["feature_vector_id"].notna().sum())}
        if not use_collector:
            return frame, summary
        summary["collector_table"] = self.has_collector_feature_vectors()
        if not summary["collector_table"]:
            return frame, summary
        collector_ids = self.collector_feature_vector_ids(pool_id, decision_opens).reindex(pd.DatetimeIndex(decision_opens))
        found = collector_ids.notna().to_numpy()
        frame.loc[found, "feature_vector_id"] = collector_ids.to_numpy()[found].astype("int64")
        frame.loc[found, "feature_vector_table"] = collector_feature_vectors.name
        summary["rows_pointing_at_collector"] = int(found.sum())
        summary["rows_pointing_at_project"] = int((~found & frame["q50_feature_vector_id"].notna().to_numpy()).sum())
        return frame, summary

    def with_feature_vector_pointers(self, pool_id: str, rows: pd.DataFrame,
                                     use_collector: bool) -> tuple[pd.DataFrame, dict]:
        """Trading-history ``rows`` (``signal_open`` = open of the bar whose signal and features
        decided the order; feature_vector_id = the project's vector of that bar) with the three
        pointer columns of :meth:`feature_vector_pointers` set, and its summary."""
        if rows.empty:
            return rows, {"use_existing_feature_vectors": use_collector, "rows_pointing_at_collector": 0,
                          "rows_pointing_at_project": 0}
        own = rows["feature_vector_id"] if "feature_vector_id" in rows else [None] * len(rows)
        pointers, summary = self.feature_vector_pointers(
            pool_id, pd.DatetimeIndex(rows["signal_open"]), own, use_collector)
        rows = rows.copy()
        for name in pointers.columns:
            rows[name] = pointers[name].to_numpy()
        return rows, summary

    def pools_with_bars(self, timeframe: str) -> list[str]:
        stmt = (
            select(ohlcv_data.c.pool_id)
            .where(ohlcv_data.c.timeframe == timeframe)
            .group_by(ohlcv_data.c.pool_id)
            .order_by(ohlcv_data.c.pool_id)
        )
        with self.engine.connect() as conn:
            return list(conn.execute(stmt).scalars())

    def lowercase_collisions(self, pool_id: str) -> list[str]:
        """Other pool ids equal to ``pool_id`` once lower-cased."""
        return self.lowercase_collisions_many([pool_id])[pool_id]

    def lowercase_collisions_many(self, pool_ids: list[str]) -> dict[str, list[str]]:
        """Per pool of a batch, the other pool ids in ``pools`` equal to it once lower-cased."""
        found: dict[str, set[str]] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(sorted({p.lower() for p in pool_ids})):
                for pid in conn.execute(select(pools.c.id).where(func.lower(pools.c.id).in_(chunk))).scalars():
                    found.setdefault(pid.lower(), set()).add(pid)
        return {p: sorted(found.get(p.lower(), set()) - {p}) for p in pool_ids}

    def pool_registered(self, pool_id: str) -> bool:
        """Whether the collector's ``pools`` table has a row for ``pool_id``."""
        return pool_id in self.registered_pools([pool_id])

    def registered_pools(self, pool_ids: list[str]) -> set[str]:
        """The pools of a batch that have a row in the collector's ``pools`` table."""
        out: set[str] = set()
        with self.engine.connect() as conn:
            for chunk in _chunks(sorted(pool_ids)):
                out.update(conn.execute(select(pools.c.id).where(pools.c.id.in_(chunk))).scalars())
        return out

    def reserve_observations(self, pool_id: str) -> tuple[pd.DataFrame, int]:
        """Every observation of the pool's liquidity the collector has, with the time it was made:
        :meth:`reserve_observations_many` for one pool."""
        return self.reserve_observations_many([pool_id])[pool_id]

    def reserve_observations_many(self, pool_ids: list[str]) -> dict[str, tuple[pd.DataFrame, int]]:
        """Per pool of a batch, every observation of its liquidity the collector has, with the time
        it was made.

        ``pools.reserve_usd`` as of ``pools.last_updated`` (source ``collector_snapshot``), and,
        where those tables exist, ``new_pools_history.reserve_in_usd`` and
        ``new_pools_history_enhanced.reserve_in_usd`` as of their ``collected_at``
        (``collector_history``, ``collector_history_enhanced``). A row without a time or with a
        reserve that is NULL or not > 0 observes nothing (the collector writes 0 for unknown
        liquidity): it is left out and counted. Returns per pool (observed_at, reserve_usd, source
        frame; rows left out). Read-only, bound parameters, one query per table and chunk of pools.
        """
        tables = [("collector_snapshot", pools.c.id, pools.c.last_updated, pools.c.reserve_usd, pools.c.id)]
        existing = inspect(self.engine)
        for source, table in (("collector_history", new_pools_history),
                              ("collector_history_enhanced", new_pools_history_enhanced)):
            if existing.has_table(table.name):
                tables.append((source, table.c.pool_id, table.c.collected_at, table.c.reserve_in_usd, table.c.id))
        rows: dict[str, list] = {p: [] for p in pool_ids}
        ignored = dict.fromkeys(pool_ids, 0)
        with self.engine.connect() as conn:
            for source, pool_col, at_col, reserve_col, id_col in tables:
                for chunk in _chunks(sorted(set(pool_ids))):
                    stmt = (select(pool_col, at_col, reserve_col).where(pool_col.in_(chunk))
                            .order_by(pool_col, at_col, id_col))
                    for pool_id, observed_at, reserve in conn.execute(stmt):
                        if observed_at is None or reserve is None or not float(reserve) > 0 \
                                or not math.isfinite(float(reserve)):
                            ignored[pool_id] += 1
                            continue
                        rows[pool_id].append((_utc(observed_at), float(reserve), source))
        return {p: (pd.DataFrame(rows[p], columns=["observed_at", "reserve_usd", "source"]), ignored[p])
                for p in pool_ids}

    def pool_reserves(self, pool_id: str, fallback_usd: float | None) -> tuple[ReserveSeries, int]:
        """The pool's :class:`ReserveSeries` (as-of lookups; ``fallback_usd`` before the first
        observation) and the number of collector rows that observed nothing."""
        return self.pool_reserves_many([pool_id], fallback_usd)[pool_id]

    def pool_reserves_many(self, pool_ids: list[str], fallback_usd: float | None
                           ) -> dict[str, tuple[ReserveSeries, int]]:
        """Per pool of a batch, :meth:`pool_reserves`."""
        return {p: (ReserveSeries(observations, fallback_usd=fallback_usd), ignored)
                for p, (observations, ignored) in self.reserve_observations_many(pool_ids).items()}

    def _records(self, frame: pd.DataFrame, table, fixed: dict) -> list[dict]:
        columns = [c.name for c in table.columns if c.name in frame.columns]
        out = []
        for row in frame[columns].astype(object).itertuples(index=False):
            record = dict(fixed)
            for c, v in zip(columns, row):
                if isinstance(v, pd.Timestamp):
                    v = None if pd.isna(v) else v.to_pydatetime()
                elif isinstance(v, float) and math.isnan(v):
                    v = None
                elif v is pd.NaT or v is pd.NA:
                    v = None
                record[c] = v
            out.append(record)
        return out

    def replace_backtest_results(self, backtest_run_id: str, pool_id: str, timeframe: str,
                                 results: pd.DataFrame) -> int:
        """One pool's metrics rows (one per variant) of one backtest run, replaced in one transaction."""
        return self.replace_backtest_results_many(timeframe, {pool_id: (backtest_run_id, results)})[pool_id]

    def replace_backtest_results_many(self, timeframe: str,
                                      results: dict[str, tuple[str, pd.DataFrame]]) -> dict[str, int]:
        """A batch of pools' metrics rows, per pool (backtest run id, one row per variant): each
        (run, pool)'s rows replaced, all in one transaction."""
        self.ensure_schema()
        t = q50_backtest_results
        records, written = [], {}
        for pool_id, (run_id, frame) in results.items():
            rows = self._records(frame, t, {"backtest_run_id": run_id, "pool_id": pool_id, "timeframe": timeframe})
            records.extend(rows)
            written[pool_id] = len(rows)
        keys = sorted((run_id, pool_id) for pool_id, (run_id, _) in results.items())
        with self._write_many(f"replacing {t.name} of {_runs_text(keys)} ({len(records)} rows)",
                              t, keys) as conn:
            for run_id, pool_id in keys:
                conn.execute(delete(t).where(t.c.backtest_run_id == run_id, t.c.pool_id == pool_id))
            if records:
                conn.execute(t.insert(), records)
        return written

    def replace_trading_history(self, backtest_run_id: str, pool_id: str, rows: pd.DataFrame) -> int:
        """A backtest run's orders and fills for one pool: that run's rows replaced in one transaction
        (re-running never duplicates and never leaves a half-written run)."""
        return self.replace_trading_history_many({pool_id: (backtest_run_id, rows)})[pool_id]

    def replace_trading_history_many(self, histories: dict[str, tuple[str, pd.DataFrame]]) -> dict[str, int]:
        """A batch of pools' trading history, per pool (backtest run id, rows): each (run, pool)'s
        rows replaced, all in one transaction."""
        self.ensure_schema()
        t = q50_trading_history
        records, written = [], {}
        for pool_id, (run_id, frame) in histories.items():
            rows = self._records(frame, t, {"backtest_run_id": run_id, "pool_id": pool_id})
            records.extend(rows)
            written[pool_id] = len(rows)
        keys = sorted((run_id, pool_id) for pool_id, (run_id, _) in histories.items())
        with self._write_many(f"replacing {t.name} of {_runs_text(keys)} ({len(records)} rows)",
                              t, keys) as conn:
            for run_id, pool_id in keys:
                conn.execute(delete(t).where(t.c.backtest_run_id == run_id, t.c.pool_id == pool_id))
            if records:
                conn.execute(t.insert(), records)
        return written

    def trading_history(self, backtest_run_id: str, pool_id: str) -> pd.DataFrame:
        return self.trading_history_many({pool_id: backtest_run_id})[pool_id]

    def trading_history_many(self, runs: dict[str, str]) -> dict[str, pd.DataFrame]:
        """Per pool, the stored rows of one backtest run (``runs``: pool -> backtest run id), in id order."""
        t = q50_trading_history
        rows = []
        with self.engine.connect() as conn:
            for chunk in _chunks(sorted(runs)):
                stmt = select(t).where(t.c.pool_id.in_(chunk), t.c.backtest_run_id.in_({runs[p] for p in chunk}))
                rows.extend(dict(r) for r in conn.execute(stmt.order_by(t.c.id)).mappings())
        frame = pd.DataFrame(rows, columns=[c.name for c in t.columns])
        return {p: frame[(frame["pool_id"] == p) & (frame["backtest_run_id"] == run)].reset_index(drop=True)
                for p, run in runs.items()}

    def latest_backtest_results(self, timeframe: str, pool_ids: list[str] | None = None) -> pd.DataFrame:
        """Per pool (all, or those of ``pool_ids``), the rows of its most recent backtest run (all
        variants). The runs are found from the key columns first, so older runs' per-bar evidence
        (kept as history) is never read."""
        t = q50_backtest_results
        keys = []
        with self.engine.connect() as conn:
            for chunk in ([None] if pool_ids is None else _chunks(sorted(pool_ids))):
                stmt = select(t.c.id, t.c.pool_id, t.c.backtest_run_id).where(t.c.timeframe == timeframe)
                if chunk is not None:
                    stmt = stmt.where(t.c.pool_id.in_(chunk))
                keys.extend(conn.execute(stmt).all())
            latest = {}
            for row_id, pool_id, run_id in sorted(keys):  # by id: the last one seen is the newest run
                latest[pool_id] = run_id
            rows = []
            for chunk in _chunks(sorted(latest)):
                if not chunk:
                    continue
                stmt = (select(t).where(t.c.timeframe == timeframe, t.c.pool_id.in_(chunk),
                                        t.c.backtest_run_id.in_(sorted({latest[p] for p in chunk})))
                        .order_by(t.c.id))
                rows.extend(r for r in conn.execute(stmt).mappings().all() if latest[r["pool_id"]] == r["backtest_run_id"])
        frame = pd.DataFrame([dict(r) for r in rows], columns=[c.name for c in t.columns])
        return frame.sort_values("id", kind="stable").reset_index(drop=True) if len(frame) else frame


# Pools per IN (...) list: far below SQLite's and PostgreSQL's parameter limits.
_CHUNK = 500


def _chunks(items: list) -> list[list]:
    return [items[i:i + _CHUNK] for i in range(0, len(items), _CHUNK)] or [[]]


def _runs_text(keys: list[tuple[str, str]]) -> str:
    return f"backtest run {keys[0][0]}, pool {keys[0][1]}" if len(keys) == 1 else f"{len(keys)} pools' backtest runs"


def _pools_text(pool_ids: list[str]) -> str:
    return f"pool {pool_ids[0]}" if len(pool_ids) == 1 else f"{len(pool_ids)} pools"


def strategy_inputs_from_database(pool_id: str, timeframe: str, database_uri: str | None):
    """The Q50 strategy's ``inputs_factory`` for a live node: its signal loader and regime detector
    from the ``q50_signals`` and ``q50_regime_labels`` tables of ``database_uri`` (from the
    environment; None = ``Q50_DATABASE_URL``)."""
    import os

    from q50_assets.lineage.regimes.rules import RegimeDetector

    url = database_uri or os.environ.get("Q50_DATABASE_URL")
    if not url:
        raise ValueError("strategy inputs from a database need database_uri or Q50_DATABASE_URL")
    db = CollectorDatabase(url=url)
    return db.signal_loader(pool_id, timeframe), RegimeDetector().with_labels(db.read_regime_labels(pool_id, timeframe))
