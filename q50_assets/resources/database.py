"""The collector database: the project's one door to it (SQLite or PostgreSQL by URL alone)."""

from __future__ import annotations

import contextlib
import hashlib
import math

import pandas as pd
from dagster import ConfigurableResource
from pydantic import Field
from sqlalchemy import Engine, column, delete, func, inspect, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from q50_assets.automation.bar_changes import window_rows
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
from q50_assets.research.bars import RAW_COLUMNS
from q50_assets.research.costs import ReserveSeries
from q50_assets.research.features import COLLECTOR_VECTOR_FEATURES
from q50_assets.research.trades import RAW_TRADE_COLUMNS

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
        """One write transaction over the rows of ``table`` identified by ``key`` (a pool, a backtest run).

        On PostgreSQL it first takes a transaction-scoped advisory lock on (table, key): two runs
        writing the same rows at once (two refreshes of one pool) then take turns instead of both
        deleting the old rows and both inserting (a unique violation, or duplicates where the table
        has no unique key). SQLite serialises writers itself. A database error is re-raised naming
        the write and the database (password hidden), the driver's error chained.
        """
        try:
            with self.engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(select(func.pg_advisory_xact_lock(_lock_key(table.name, *key))))
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
    ) -> pd.Series:
        """Write one pool's feature vectors (index open_time; known_at, is_warmup columns).

        Keyed by (pool, timeframe, open time, feature-set version): re-runs update in place, so
        ids stay stable for signals and trading history to point at. A vector whose bar the
        collector has since deleted is kept (a decision may have used it) and counted as stale.
        Returns (vector id per open_time, number of stale vectors).
        """
        self.ensure_schema()
        t = q50_feature_vectors
        values = frame[feature_columns].to_numpy(dtype="float64")
        known_at = [ts.to_pydatetime() for ts in frame["known_at"]]
        warmup = frame["is_warmup"].to_numpy(dtype=bool)
        records = [
            {
                "pool_id": pool_id,
                "timeframe": timeframe,
                "timestamp": open_time.to_pydatetime(),
                "known_at": known_at[i],
                "feature_set_version": version,
                "is_warmup": bool(warmup[i]),
                "feature_values": {c: (None if math.isnan(v) else float(v)) for c, v in zip(feature_columns, values[i])},
            }
            for i, open_time in enumerate(frame.index)
        ]
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
        with self._write(f"writing {len(records)} feature vectors of pool {pool_id}", t, pool_id, timeframe,
                         version) as conn:
            # executemany: one compiled statement, batched by the driver ("insertmanyvalues"),
            # instead of compiling a 1000-row VALUES clause per chunk.
            if records:
                conn.execute(stmt, records)
            scope = (t.c.pool_id == pool_id, t.c.timeframe == timeframe, t.c.feature_set_version == version)
            rows = conn.execute(select(t.c.timestamp, t.c.id).where(*scope)).all()
        ids = pd.Series({_utc(ts): vid for ts, vid in rows}, dtype="int64")
        stale = int((~ids.index.isin(frame.index)).sum())
        return ids.reindex(frame.index), stale

    def replace_signals(self, pool_id: str, timeframe: str, signals: pd.DataFrame) -> int:
        """Replace one pool's signals in one transaction (no duplicates, never half-written)."""
        return self._replace_pool_rows(q50_signals, pool_id, timeframe, signals)

    def replace_regime_labels(self, pool_id: str, timeframe: str, regimes: pd.DataFrame) -> int:
        """Replace one pool's regime labels in one transaction."""
        return self._replace_pool_rows(q50_regime_labels, pool_id, timeframe, regimes)

    def _replace_pool_rows(self, table, pool_id: str, timeframe: str, frame: pd.DataFrame) -> int:
        """Delete and re-insert one pool's rows of ``table`` from ``frame`` (index = bar open)."""
        self.ensure_schema()
        columns = [c.name for c in table.columns if c.name not in ("id", "pool_id", "timeframe", "timestamp", "created_at")]
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
        records = [
            {"pool_id": pool_id, "timeframe": timeframe, "timestamp": open_time.to_pydatetime(),
             **{c: as_python[c][i] for c in columns}}
            for i, open_time in enumerate(frame.index)
        ]
        with self._write(f"replacing {table.name} of pool {pool_id} ({len(records)} rows)", table, pool_id,
                         timeframe) as conn:
            conn.execute(delete(table).where(table.c.pool_id == pool_id, table.c.timeframe == timeframe))
            if records:
                conn.execute(table.insert(), records)
        return len(records)

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
        """A :class:`~q50_assets.research.signals.Q50SignalLoader` over the stored signals of one pool
        (signals made elsewhere: ``strategy_config.signal_source: database``)."""
        from q50_assets.research.signals import Q50SignalLoader

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
        stmt = (
            select(*(ohlcv_data.c[c] for c in RAW_COLUMNS))
            .where(ohlcv_data.c.pool_id == pool_id, ohlcv_data.c.timeframe == timeframe)
            .order_by(ohlcv_data.c.timestamp, ohlcv_data.c.id)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return pd.DataFrame(rows, columns=RAW_COLUMNS)

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
        stmt = select(*(trades.c[c] for c in RAW_TRADE_COLUMNS)).where(trades.c.pool_id == pool_id).order_by(trades.c.id)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return pd.DataFrame(rows, columns=list(RAW_TRADE_COLUMNS))

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
        stmt = (
            select(pools.c.id)
            .where(func.lower(pools.c.id) == pool_id.lower(), pools.c.id != pool_id)
            .order_by(pools.c.id)
        )
        with self.engine.connect() as conn:
            return list(conn.execute(stmt).scalars())

    def pool_registered(self, pool_id: str) -> bool:
        """Whether the collector's ``pools`` table has a row for ``pool_id``."""
        with self.engine.connect() as conn:
            return conn.execute(select(pools.c.id).where(pools.c.id == pool_id)).first() is not None

    def reserve_observations(self, pool_id: str) -> tuple[pd.DataFrame, int]:
        """Every observation of the pool's liquidity the collector has, with the time it was made.

        ``pools.reserve_usd`` as of ``pools.last_updated`` (source ``collector_snapshot``), and,
        where those tables exist, ``new_pools_history.reserve_in_usd`` and
        ``new_pools_history_enhanced.reserve_in_usd`` as of their ``collected_at``
        (``collector_history``, ``collector_history_enhanced``). A row without a time or with a
        reserve that is NULL or not > 0 observes nothing (the collector writes 0 for unknown
        liquidity): it is left out and counted. Returns (observed_at, reserve_usd, source frame,
        rows left out). Read-only, bound parameters.
        """
        stmts = [("collector_snapshot", select(pools.c.last_updated, pools.c.reserve_usd).where(pools.c.id == pool_id))]
        existing = inspect(self.engine)
        for source, table in (("collector_history", new_pools_history),
                              ("collector_history_enhanced", new_pools_history_enhanced)):
            if existing.has_table(table.name):
                stmts.append((source, select(table.c.collected_at, table.c.reserve_in_usd)
                               .where(table.c.pool_id == pool_id).order_by(table.c.collected_at, table.c.id)))
        rows, ignored = [], 0
        with self.engine.connect() as conn:
            for source, stmt in stmts:
                for observed_at, reserve in conn.execute(stmt):
                    if observed_at is None or reserve is None or not float(reserve) > 0 \
                            or not math.isfinite(float(reserve)):
                        ignored += 1
                        continue
                    rows.append((_utc(observed_at), float(reserve), source))
        frame = pd.DataFrame(rows, columns=["observed_at", "reserve_usd", "source"])
        return frame, ignored

    def pool_reserves(self, pool_id: str, fallback_usd: float | None) -> tuple[ReserveSeries, int]:
        """The pool's :class:`ReserveSeries` (as-of lookups; ``fallback_usd`` before the first
        observation) and the number of collector rows that observed nothing."""
        observations, ignored = self.reserve_observations(pool_id)
        return ReserveSeries(observations, fallback_usd=fallback_usd), ignored

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
        self.ensure_schema()
        t = q50_backtest_results
        records = self._records(results, t, {"backtest_run_id": backtest_run_id, "pool_id": pool_id,
                                             "timeframe": timeframe})
        with self._write(f"replacing {t.name} of backtest run {backtest_run_id}, pool {pool_id} "
                         f"({len(records)} rows)", t, backtest_run_id, pool_id) as conn:
            conn.execute(delete(t).where(t.c.backtest_run_id == backtest_run_id, t.c.pool_id == pool_id))
            if records:
                conn.execute(t.insert(), records)
        return len(records)

    def replace_trading_history(self, backtest_run_id: str, pool_id: str, rows: pd.DataFrame) -> int:
        """A backtest run's orders and fills for one pool: that run's rows replaced in one transaction
        (re-running never duplicates and never leaves a half-written run)."""
        self.ensure_schema()
        t = q50_trading_history
        records = self._records(rows, t, {"backtest_run_id": backtest_run_id, "pool_id": pool_id})
        with self._write(f"replacing {t.name} of backtest run {backtest_run_id}, pool {pool_id} "
                         f"({len(records)} rows)", t, backtest_run_id, pool_id) as conn:
            conn.execute(delete(t).where(t.c.backtest_run_id == backtest_run_id, t.c.pool_id == pool_id))
            if records:
                conn.execute(t.insert(), records)
        return len(records)

    def trading_history(self, backtest_run_id: str, pool_id: str) -> pd.DataFrame:
        t = q50_trading_history
        stmt = select(t).where(t.c.backtest_run_id == backtest_run_id, t.c.pool_id == pool_id).order_by(t.c.id)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).mappings().all()
        return pd.DataFrame([dict(r) for r in rows], columns=[c.name for c in t.columns])

    def latest_backtest_results(self, timeframe: str) -> pd.DataFrame:
        """Per pool, the rows of its most recent backtest run (all variants)."""
        t = q50_backtest_results
        with self.engine.connect() as conn:
            rows = conn.execute(select(t).where(t.c.timeframe == timeframe).order_by(t.c.id)).mappings().all()
        frame = pd.DataFrame([dict(r) for r in rows], columns=[c.name for c in t.columns])
        if frame.empty:
            return frame
        latest_id = frame.groupby("pool_id")["id"].transform("max")
        latest_run = frame.loc[frame["id"] == latest_id].set_index("pool_id")["backtest_run_id"]
        return frame[frame["backtest_run_id"] == frame["pool_id"].map(latest_run)].reset_index(drop=True)


def strategy_inputs_from_database(pool_id: str, timeframe: str, database_uri: str | None):
    """The Q50 strategy's ``inputs_factory`` for a live node: its signal loader and regime detector
    from the ``q50_signals`` and ``q50_regime_labels`` tables of ``database_uri`` (from the
    environment; None = ``Q50_DATABASE_URL``)."""
    import os

    from q50_assets.research.regimes import RegimeDetector

    url = database_uri or os.environ.get("Q50_DATABASE_URL")
    if not url:
        raise ValueError("strategy inputs from a database need database_uri or Q50_DATABASE_URL")
    db = CollectorDatabase(url=url)
    return db.signal_loader(pool_id, timeframe), RegimeDetector().with_labels(db.read_regime_labels(pool_id, timeframe))
