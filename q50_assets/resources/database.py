"""The collector database: the project's one door to it (SQLite or PostgreSQL by URL alone)."""

from __future__ import annotations

import pandas as pd
from dagster import ConfigurableResource
from pydantic import Field
from sqlalchemy import Engine, func, select

from q50_assets.db import migrate
from q50_assets.db.collector_models import ohlcv_data, pools
from q50_assets.db.engine import get_engine, redact_url
from q50_assets.research.bars import RAW_COLUMNS


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
