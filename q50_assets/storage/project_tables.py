"""The project's own tables (``q50_*``: feature vectors, signals, regime labels, backtest results,
trading history, the trial ledger) in the collector's database: their migrations, and every write and read of them
(SQLite or PostgreSQL by URL alone). Each write is one transaction over a batch of pools.

All SQL is built with SQLAlchemy Core and bound parameters.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from datetime import datetime, timezone

import pandas as pd
from dagster import ConfigurableResource
from pydantic import Field
from sqlalchemy import DateTime, Engine, delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError

from q50_assets.db import migrate
from q50_assets.db.engine import get_engine, redact_url
from q50_assets.db.q50_models import (
    q50_backtest_results,
    q50_feature_vectors,
    q50_regime_labels,
    q50_signals,
    q50_trading_history,
    q50_trials,
)
from q50_assets.storage.batched_queries import as_utc as _utc
from q50_assets.storage.batched_queries import chunks as _chunks
from q50_assets.storage.batched_queries import pools_text as _pools_text

# URLs whose migrations ran in this process (upgrade is idempotent; once is enough).
_migrated: set[str] = set()


class DatabaseWriteError(RuntimeError):
    """A write transaction to the project's tables failed (its rows were not half-written)."""


def _lock_key(*parts: str) -> int:
    """A signed 64-bit key for ``pg_advisory_xact_lock`` naming one table's rows of one pool/run."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _vector_ids(conn, timeframe: str, version: str, pool_ids: list[str]) -> dict[str, pd.Series]:
    t = q50_feature_vectors
    rows = []
    for chunk in _chunks(pool_ids):
        scope = (t.c.pool_id.in_(chunk), t.c.timeframe == timeframe, t.c.feature_set_version == version)
        rows.extend(conn.execute(select(t.c.pool_id, t.c.timestamp, t.c.id).where(*scope)).all())
    by_pool: dict[str, dict] = {p: {} for p in pool_ids}
    for pid, ts, vid in rows:
        by_pool[pid][_utc(ts)] = vid
    return {p: pd.Series(by_pool[p], dtype="int64") for p in pool_ids}


def _runs_text(keys: list[tuple[str, str]]) -> str:
    return f"backtest run {keys[0][0]}, pool {keys[0][1]}" if len(keys) == 1 else f"{len(keys)} pools' backtest runs"


TRIAL_KEY = ("config_hash", "window_start", "window_end", "variant")


def _trials_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=[c.name for c in q50_trials.columns])
    for column in ("window_start", "window_end", "first_seen_at", "last_seen_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


class ProjectTables(ConfigurableResource):
    """Owns the project's ``q50_*`` tables (via migrations): writes a batch of pools per
    transaction and reads the rows back per pool."""

    url: str = Field(description="SQLAlchemy URL of the database holding the project's tables "
                                 "(the collector database, from Q50_DATABASE_URL).")

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
            by_pool = _vector_ids(conn, timeframe, version, pool_ids)
        out = {}
        for pool_id, frame in frames.items():
            ids = by_pool[pool_id]
            stale = int((~ids.index.isin(frame.index)).sum())
            out[pool_id] = (ids.reindex(frame.index), stale)
        return out

    def feature_vector_ids_many(self, timeframe: str, version: str, pool_ids: list[str]) -> dict[str, pd.Series]:
        """Per pool of a batch, the ids of its ``q50_feature_vectors`` rows of one feature-set version,
        by bar open (UTC)."""
        with self.engine.connect() as conn:
            return _vector_ids(conn, timeframe, version, sorted(pool_ids))


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


    def signal_rows_many(self, timeframe: str, pool_ids: list[str]) -> dict[str, pd.DataFrame]:
        """A batch of pools' rows of ``q50_signals`` (:meth:`pool_rows`)."""
        return self.pool_rows(q50_signals, timeframe, pool_ids)

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


    def signal_loader(self, pool_id: str, timeframe: str):
        """A :class:`~q50_assets.lineage.signals.rules.Q50SignalLoader` over the stored signals of one pool
        (signals made elsewhere: ``strategy_config.signal_source: database``)."""
        from q50_assets.lineage.signals.rules import Q50SignalLoader

        return Q50SignalLoader(self.signal_rows_many(timeframe, [pool_id])[pool_id])


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

    def replace_backtest_results_many(self, timeframe: str,
                                      results: dict[str, tuple[str, pd.DataFrame]]) -> dict[str, int]:
        """A batch of pools' metrics rows, per pool (backtest run id, one row per variant): each
        (run, pool)'s rows replaced, all in one transaction."""
        return self._replace_run_rows(q50_backtest_results, results, {"timeframe": timeframe})

    def replace_trading_history_many(self, histories: dict[str, tuple[str, pd.DataFrame]]) -> dict[str, int]:
        """A batch of pools' trading history, per pool (backtest run id, rows): each (run, pool)'s
        rows replaced, all in one transaction."""
        return self._replace_run_rows(q50_trading_history, histories, {})

    def _replace_run_rows(self, t, per_pool: dict[str, tuple[str, pd.DataFrame]], fixed: dict) -> dict[str, int]:
        """Rows of ``t`` keyed by (backtest run, pool): each pair's rows replaced in one transaction."""
        self.ensure_schema()
        records, written = [], {}
        for pool_id, (run_id, frame) in per_pool.items():
            rows = self._records(frame, t, {"backtest_run_id": run_id, "pool_id": pool_id, **fixed})
            records.extend(rows)
            written[pool_id] = len(rows)
        keys = sorted((run_id, pool_id) for pool_id, (run_id, _) in per_pool.items())
        with self._write_many(f"replacing {t.name} of {_runs_text(keys)} ({len(records)} rows)",
                              t, keys) as conn:
            for run_id, pool_id in keys:
                conn.execute(delete(t).where(t.c.backtest_run_id == run_id, t.c.pool_id == pool_id))
            if records:
                conn.execute(t.insert(), records)
        return written


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

    def record_trials(self, trials: pd.DataFrame) -> int:
        """Record configurations evaluated on a window (lineage/portfolio/trials.py ``trial_rows``)
        in ``q50_trials``, one row per (config hash, window, variant), in one transaction. A trial
        already in the ledger (the same configuration re-run on the same window) only gets its
        ``last_seen_at`` moved: re-running adds no trial. Returns the number of trials added."""
        self.ensure_schema()
        t = q50_trials
        missing = [c for c in (*TRIAL_KEY, "timeframe", "pools", "settings") if c not in trials.columns]
        if missing:
            raise KeyError(f"trials lack columns {missing}")
        if trials.empty:
            return 0
        frame = trials.copy()
        for column in ("window_start", "window_end"):
            times = pd.to_datetime(frame[column], utc=True)
            if times.isna().any():
                raise ValueError(f"trial rows {list(frame.index[times.isna()][:5])} have no {column}")
            frame[column] = times
        duplicated = frame.duplicated(list(TRIAL_KEY))
        if duplicated.any():
            row = frame[duplicated].iloc[0]
            raise ValueError(f"{int(duplicated.sum())} trial rows repeat a (config hash, window, variant) key, e.g. "
                             f"{str(row['config_hash'])[:12]} / {row['variant']}")
        now = datetime.now(timezone.utc)
        records = self._records(frame, t, {})
        for record in records:
            record["first_seen_at"] = record["last_seen_at"] = now
        stmt = self._insert(t)
        stmt = stmt.on_conflict_do_update(index_elements=[t.c[c] for c in TRIAL_KEY],
                                          set_={"last_seen_at": stmt.excluded.last_seen_at})
        keys = sorted({(str(r["config_hash"]), str(r["variant"])) for r in records})
        with self._write_many(f"recording {len(records)} trials in {t.name}", t, keys) as conn:
            before = conn.execute(select(func.count()).select_from(t)).scalar_one()
            conn.execute(stmt, records)
            after = conn.execute(select(func.count()).select_from(t)).scalar_one()
        return int(after - before)

    def trials_overlapping(self, window_start, window_end) -> pd.DataFrame:
        """Every trial whose window overlaps [window_start, window_end] (they share out-of-sample
        bars), oldest first."""
        self.ensure_schema()
        t = q50_trials
        start = pd.Timestamp(window_start).tz_convert("UTC").to_pydatetime()
        end = pd.Timestamp(window_end).tz_convert("UTC").to_pydatetime()
        stmt = select(t).where(t.c.window_start <= end, t.c.window_end >= start).order_by(t.c.first_seen_at, t.c.id)
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(stmt).mappings()]
        return _trials_frame(rows)


def strategy_inputs_from_database(pool_id: str, timeframe: str, database_uri: str | None):
    """The Q50 strategy's ``inputs_factory`` for a live node: its signal loader and regime detector
    from the ``q50_signals`` and ``q50_regime_labels`` tables of ``database_uri`` (from the
    environment; None = ``Q50_DATABASE_URL``)."""
    import os

    from q50_assets.lineage.regimes.rules import RegimeDetector

    url = database_uri or os.environ.get("Q50_DATABASE_URL")
    if not url:
        raise ValueError("strategy inputs from a database need database_uri or Q50_DATABASE_URL")
    tables = ProjectTables(url=url)
    labels = tables.pool_rows(q50_regime_labels, timeframe, [pool_id])[pool_id]
    return tables.signal_loader(pool_id, timeframe), RegimeDetector().with_labels(labels)
