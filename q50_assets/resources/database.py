"""The collector database: the project's one door to it (SQLite or PostgreSQL by URL alone)."""

from __future__ import annotations

import math

import pandas as pd
from dagster import ConfigurableResource
from pydantic import Field
from sqlalchemy import Engine, delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from q50_assets.db import migrate
from q50_assets.db.collector_models import ohlcv_data, pools
from q50_assets.db.engine import get_engine, redact_url
from q50_assets.db.q50_models import pool_feature_vectors
from q50_assets.research.bars import RAW_COLUMNS

# URLs whose migrations ran in this process (upgrade is idempotent; once is enough).
_migrated: set[str] = set()


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

    def _insert(self, table):
        return (pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert)(table)

    def upsert_feature_vectors(
        self, pool_id: str, timeframe: str, version: str, frame: pd.DataFrame, feature_columns: list[str]
    ) -> pd.Series:
        """Write one pool's feature vectors (index open_time; known_at, is_warmup columns).

        Keyed by (pool, timeframe, open time, feature-set version): re-runs update in place, so
        ids stay stable for trading history to point at. Vectors whose bar no longer exists are
        deleted. Returns the vector id per open_time.
        """
        self.ensure_schema()
        t = pool_feature_vectors
        records = [
            {
                "pool_id": pool_id,
                "timeframe": timeframe,
                "timestamp": open_time.to_pydatetime(),
                "known_at": row.known_at.to_pydatetime(),
                "feature_set_version": version,
                "is_warmup": bool(row.is_warmup),
                "feature_values": {
                    c: (None if math.isnan(v) else float(v)) for c, v in zip(feature_columns, row[feature_columns])
                },
            }
            for open_time, row in frame.iterrows()
        ]
        key = [t.c.pool_id, t.c.timeframe, t.c.timestamp, t.c.feature_set_version]
        with self.engine.begin() as conn:
            for start in range(0, len(records), 1000):
                stmt = self._insert(t).values(records[start : start + 1000])
                stmt = stmt.on_conflict_do_update(
                    index_elements=key,
                    set_={
                        "known_at": stmt.excluded.known_at,
                        "is_warmup": stmt.excluded.is_warmup,
                        "feature_values": stmt.excluded.feature_values,
                    },
                )
                conn.execute(stmt)
            scope = (t.c.pool_id == pool_id, t.c.timeframe == timeframe, t.c.feature_set_version == version)
            keep = [r["timestamp"] for r in records]
            conn.execute(delete(t).where(*scope, t.c.timestamp.not_in(keep)))
            rows = conn.execute(select(t.c.timestamp, t.c.id).where(*scope)).all()
        ids = pd.Series({pd.Timestamp(ts).tz_localize("UTC") if pd.Timestamp(ts).tzinfo is None
                         else pd.Timestamp(ts).tz_convert("UTC"): vid for ts, vid in rows}, dtype="int64")
        return ids.reindex(frame.index)

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
