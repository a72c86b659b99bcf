"""The collector's own tables, read only: bars, trades, pools, liquidity history, the collector's
progress and its feature vectors (SQLite or PostgreSQL by URL alone). The project never writes
them; only ``q50_assets.db.sample_loader`` does, playing the collector.

All SQL is built with SQLAlchemy Core and bound parameters.
"""

from __future__ import annotations

import math

import pandas as pd
from dagster import ConfigurableResource
from pydantic import Field
from sqlalchemy import Engine, column, func, inspect, select

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
from q50_assets.db.q50_models import q50_feature_vectors
from q50_assets.db.types import TimestampTZ
from q50_assets.lineage.common.costs import ReserveSeries
from q50_assets.lineage.features.formulas import COLLECTOR_VECTOR_FEATURES
from q50_assets.lineage.ohlcv.bar_changes import window_rows
from q50_assets.lineage.ohlcv.rules import RAW_COLUMNS
from q50_assets.lineage.trades.rules import RAW_TRADE_COLUMNS
from q50_assets.storage.batched_queries import as_utc as _utc
from q50_assets.storage.batched_queries import chunks as _chunks


def _observes(observed_at, reserve) -> bool:
    """A row observes a pool's liquidity when it has a time and a finite reserve > 0 (the collector
    writes 0 for an unknown reserve)."""
    return observed_at is not None and reserve is not None and math.isfinite(float(reserve)) and float(reserve) > 0


class CollectorReader(ConfigurableResource):
    """Reads the collector's tables, a batch of pools per query; never writes."""

    url: str = Field(description="SQLAlchemy URL of the collector database (from Q50_DATABASE_URL).")

    @property
    def engine(self) -> Engine:
        return get_engine(self.url)

    @property
    def display_url(self) -> str:
        return redact_url(self.url)

    def pools_with_bars(self, timeframe: str) -> list[str]:
        stmt = (
            select(ohlcv_data.c.pool_id)
            .where(ohlcv_data.c.timeframe == timeframe)
            .group_by(ohlcv_data.c.pool_id)
            .order_by(ohlcv_data.c.pool_id)
        )
        with self.engine.connect() as conn:
            return list(conn.execute(stmt).scalars())


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


    def lowercase_collisions_many(self, pool_ids: list[str]) -> dict[str, list[str]]:
        """Per pool of a batch, the other pool ids in ``pools`` equal to it once lower-cased."""
        found: dict[str, set[str]] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(sorted({p.lower() for p in pool_ids})):
                for pid in conn.execute(select(pools.c.id).where(func.lower(pools.c.id).in_(chunk))).scalars():
                    found.setdefault(pid.lower(), set()).add(pid)
        return {p: sorted(found.get(p.lower(), set()) - {p}) for p in pool_ids}


    def registered_pools(self, pool_ids: list[str]) -> set[str]:
        """The pools of a batch that have a row in the collector's ``pools`` table."""
        out: set[str] = set()
        with self.engine.connect() as conn:
            for chunk in _chunks(sorted(pool_ids)):
                out.update(conn.execute(select(pools.c.id).where(pools.c.id.in_(chunk))).scalars())
        return out


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


    def read_trades_many(self, pool_ids: list[str]) -> dict[str, pd.DataFrame]:
        """Every ``trades`` row of each pool of a batch, per pool in id order with the collector's
        column names (``RAW_TRADE_COLUMNS``); one query per chunk of pools."""
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
        rows: dict[str, list] = {p: [] for p in pool_ids}
        ignored = dict.fromkeys(pool_ids, 0)
        with self.engine.connect() as conn:
            for source, pool_col, at_col, reserve_col, id_col in self._reserve_tables():
                for chunk in _chunks(sorted(set(pool_ids))):
                    stmt = (select(pool_col, at_col, reserve_col).where(pool_col.in_(chunk))
                            .order_by(pool_col, at_col, id_col))
                    for pool_id, observed_at, reserve in conn.execute(stmt):
                        if not _observes(observed_at, reserve):
                            ignored[pool_id] += 1
                            continue
                        rows[pool_id].append((_utc(observed_at), float(reserve), source))
        return {p: (pd.DataFrame(rows[p], columns=["observed_at", "reserve_usd", "source"]), ignored[p])
                for p in pool_ids}


    def _reserve_tables(self) -> list[tuple]:
        """(source, pool id, observed-at, reserve, row id) columns of every table holding reserves."""
        tables = [("collector_snapshot", pools.c.id, pools.c.last_updated, pools.c.reserve_usd, pools.c.id)]
        existing = inspect(self.engine)
        for source, table in (("collector_history", new_pools_history),
                              ("collector_history_enhanced", new_pools_history_enhanced)):
            if existing.has_table(table.name):
                tables.append((source, table.c.pool_id, table.c.collected_at, table.c.reserve_in_usd, table.c.id))
        return tables


    def reserve_levels(self) -> pd.DataFrame:
        """Every observation of any pool's liquidity in the database (pool_id, reserve_usd, source):
        what the assumed reserve is computed from (``lineage/common/costs.py fallback_reserve_of``).
        The same rows count as :meth:`reserve_observations_many` counts (a time and a reserve > 0);
        the filter on the reserve runs in the database, rows are streamed (history tables grow)."""
        frames = []
        with self.engine.connect() as conn:
            for source, pool_col, at_col, reserve_col, id_col in self._reserve_tables():
                stmt = (select(pool_col, reserve_col)
                        .where(at_col.is_not(None), reserve_col.is_not(None), reserve_col > 0)
                        .order_by(pool_col, id_col))
                result = conn.execution_options(stream_results=True, yield_per=50_000).execute(stmt)
                values = [(str(pool_id), float(reserve)) for pool_id, reserve in result
                          if math.isfinite(float(reserve))]
                frames.append(pd.DataFrame(values, columns=["pool_id", "reserve_usd"]).assign(source=source))
        return pd.concat(frames, ignore_index=True)


    def pool_reserves_many(self, pool_ids: list[str], fallback_usd: float | None
                           ) -> dict[str, tuple[ReserveSeries, int]]:
        """Per pool of a batch, its :class:`ReserveSeries` (as-of lookups; ``fallback_usd`` before the
        first observation) and the number of collector rows that observed nothing."""
        return {p: (ReserveSeries(observations, fallback_usd=fallback_usd), ignored)
                for p, (observations, ignored) in self.reserve_observations_many(pool_ids).items()}


    # --- the collector's own feature vectors (its enhanced-history pool_feature_vectors) -----------
    def has_collector_feature_vectors(self) -> bool:
        """Whether this database has the collector's ``pool_feature_vectors``, told by its shape: the
        project's own vectors from before revision 0005 had that name too (until the migrations moved
        them to q50_feature_vectors); a table of neither shape raises ``SchemaConflict``."""
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
