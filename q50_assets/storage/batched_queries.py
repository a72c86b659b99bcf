"""Small pieces shared by the collector reader and the project tables: UTC timestamps from either
database, and pools in IN (...) lists of bounded length."""

from __future__ import annotations

import pandas as pd

# Pools per IN (...) list: far below SQLite's and PostgreSQL's parameter limits.
CHUNK = 500


def as_utc(value) -> pd.Timestamp:
    """SQLite returns naive datetimes (stored as UTC), PostgreSQL aware ones."""
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def chunks(items: list) -> list[list]:
    """``items`` in lists of at most CHUNK (one empty list for no items)."""
    return [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)] or [[]]


def pools_text(pool_ids: list[str]) -> str:
    return f"pool {pool_ids[0]}" if len(pool_ids) == 1 else f"{len(pool_ids)} pools"
