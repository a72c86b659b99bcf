"""Stage 1 - OHLCV: each pool's collector rows validated into time-safe bars.

The rules are :mod:`q50_assets.lineage.ohlcv.rules`; this module applies them to a batch of pools and
says which pools downstream stages may use (``bars_or_blocked``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import pandas as pd

from q50_assets.lineage.ohlcv.bar_changes import state_of_rows
from q50_assets.lineage.ohlcv.rules import VALUE_COLUMNS, BarRules, ValidatedBars, validate_bars
from q50_assets.lineage.common.gate import Blocked
from q50_assets.lineage.common.ports import CollectorSource
from q50_assets.settings import Settings

STAGE = "ohlcv_bars"


def validate_pools(
    raw_by_pool: Mapping[str, pd.DataFrame],
    rules: BarRules,
    collisions: Mapping[str, Sequence[str]],
    registered: set[str],
    now: datetime | pd.Timestamp | None = None,
) -> dict[str, ValidatedBars]:
    """Every pool's rows validated (``raw_by_pool``: collector rows per pool, RAW_COLUMNS)."""
    return {
        pool_id: validate_bars(pool_id, raw, rules, now=now, colliding_pool_ids=collisions.get(pool_id, ()),
                               pool_registered=pool_id in registered)
        for pool_id, raw in raw_by_pool.items()
    }


def collector_state(raw: pd.DataFrame, window_bars: int, bar_seconds: int) -> str:
    """The collector state a pool's rows represent, in the new-bars sensor's terms (newest bar,
    row count, digest of the last bars): equal to what the sensor computes for the same rows."""
    state = state_of_rows(raw[["timestamp", *VALUE_COLUMNS]].itertuples(index=False, name=None), window_bars,
                          bar_seconds)
    return state.run_key_part if state else "no-rows"


def bars_or_blocked(validated: ValidatedBars | Blocked) -> pd.DataFrame | Blocked:
    """The complete bars a downstream stage may use, or the pool's gate naming the failed rules (a
    pool already Blocked upstream, e.g. never materialized, stays so)."""
    if isinstance(validated, Blocked):
        return validated
    if not validated.safe:
        return Blocked(validated.pool_id, STAGE, f"blocking checks failed: {', '.join(validated.blocking_failures)}")
    return validated.bars


def summary(validated: ValidatedBars) -> dict:
    """Plain per-pool figures of the stage (metadata in the UI, the demo's totals)."""
    s = validated.summary()
    return {
        "pool_id": s["pool_id"],
        "rows_read": s["rows_read"],
        "complete_bars": s["complete_bars"],
        "partial_bars_held_back": s["partial_bars_held_back"],
        "first_open": s["first_open"],
        "last_open": s["last_open"],
        "gap_count": s["gap_count"],
        "longest_gap_bars": s["longest_gap_bars"],
        "price_low": s["min_low"],
        "price_high": s["max_high"],
        "safe_for_downstream": s["safe"],
        "failing_checks": [o.name for o in validated.outcomes if not o.passed],
    }


def ohlcv_step(pool_ids: list[str], db: CollectorSource, settings: Settings,
               progress=None) -> tuple[dict[str, ValidatedBars], dict[str, str]]:
    """A batch of pools: rows read in one query, validated per pool. Returns (validated bars,
    the collector state each pool's rows represent)."""
    raw = db.read_bars_many(pool_ids, settings.timeframe)
    validated = validate_pools(raw, BarRules.of(settings), db.lowercase_collisions_many(pool_ids),
                               db.registered_pools(pool_ids))
    states = {p: collector_state(raw[p], settings.automation.new_bars_sensor.revision_window_bars, settings.bar_seconds) for p in pool_ids}
    if progress:
        progress(len(pool_ids))
    return validated, states
