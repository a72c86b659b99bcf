"""The test suite playing the collector: append bars, revise a bar in place, record a run.

Only tests (and the sample loader) write the collector's tables; the project never does.
"""

from __future__ import annotations

import pandas as pd
from sqlalchemy import Engine, delete, select, update

from q50_assets.db import sample_loader
from q50_assets.db.collector_models import ohlcv_data


def bars_of(engine: Engine, pool_id: str, timeframe: str = "1h") -> pd.DataFrame:
    stmt = (select(ohlcv_data).where(ohlcv_data.c.pool_id == pool_id, ohlcv_data.c.timeframe == timeframe)
            .order_by(ohlcv_data.c.timestamp))
    with engine.connect() as conn:
        return pd.DataFrame([dict(r) for r in conn.execute(stmt).mappings()])


def take_bars_from(engine: Engine, pool_ids: list[str], since_epoch: int, timeframe: str = "1h") -> pd.DataFrame:
    """Remove (and return) the bars opening at or after ``since_epoch``: the collector's future."""
    cond = (ohlcv_data.c.pool_id.in_(pool_ids), ohlcv_data.c.timeframe == timeframe,
            ohlcv_data.c.timestamp >= since_epoch)
    with engine.begin() as conn:
        rows = pd.DataFrame([dict(r) for r in conn.execute(select(ohlcv_data).where(*cond)).mappings()])
        conn.execute(delete(ohlcv_data).where(*cond))
    return rows


def append_bars(engine: Engine, rows: pd.DataFrame) -> None:
    records = rows.drop(columns=["id"]).astype(object).where(rows.drop(columns=["id"]).notna(), None).to_dict("records")
    with engine.begin() as conn:
        conn.execute(ohlcv_data.insert(), records)


def revise_bar(engine: Engine, pool_id: str, timestamp: int, timeframe: str = "1h", **values) -> None:
    """The collector's upsert of a bar it already wrote (same row, new values)."""
    with engine.begin() as conn:
        result = conn.execute(update(ohlcv_data).where(
            ohlcv_data.c.pool_id == pool_id, ohlcv_data.c.timeframe == timeframe,
            ohlcv_data.c.timestamp == timestamp).values(**values))
        assert result.rowcount == 1, (pool_id, timestamp)


def record_collector_run(engine: Engine) -> None:
    """What the collector does after each OHLCV collection: run_count + 1, timestamps now."""
    with engine.begin() as conn:
        sample_loader.record_collector_run(conn)
