"""What changed in the collector's bars between two sensor ticks. Pure Python, no Dagster.

The sensor's cursor is a :class:`BarsCursor`: the collector's own progress row
(``collection_metadata`` of its OHLCV collector: run_count, updated_at) and, per pool of the
configured timeframe, the newest bar's open time, the pool's row count and a digest of its last
few bars. ``ohlcv_data`` has no updated_at and the collector upserts its running bar, so a
revision in place is only visible by re-reading those bars and comparing.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

CURSOR_VERSION = 1


def window_digest(rows: list[list]) -> str:
    """Digest of a pool's last bars (timestamp and values as stored)."""
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PoolState:
    newest: int  # newest bar open, epoch seconds
    rows: int    # rows of this pool and timeframe
    digest: str  # window_digest of the last bars

    @property
    def run_key_part(self) -> str:
        return f"{self.newest}-{self.rows}-{self.digest}"


@dataclass(frozen=True)
class BarsCursor:
    timeframe: str
    progress: dict | None = None
    pools: dict[str, PoolState] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({
            "version": CURSOR_VERSION,
            "timeframe": self.timeframe,
            "progress": self.progress,
            "pools": {p: [s.newest, s.rows, s.digest] for p, s in sorted(self.pools.items())},
        }, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | None, timeframe: str) -> BarsCursor:
        """The stored cursor, or an empty one (first tick, another timeframe, older format)."""
        if not raw:
            return cls(timeframe)
        data = json.loads(raw)
        if data.get("version") != CURSOR_VERSION or data.get("timeframe") != timeframe:
            return cls(timeframe)
        return cls(timeframe, data.get("progress"),
                   {p: PoolState(int(v[0]), int(v[1]), str(v[2])) for p, v in data.get("pools", {}).items()})


def _cell(value) -> str:
    """A stored value as the cursor compares it: the float's shortest repr, "" for NULL/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(float(value)) if not isinstance(value, str) else value


def window_rows(rows, window_bars: int, bar_seconds: int) -> list[list]:
    """The bars of the last ``window_bars`` bar lengths before the newest, as the cursor holds them.

    ``rows``: (timestamp, open, high, low, close, volume) tuples in (timestamp, id) order.
    """
    rows = list(rows)
    if not rows:
        return []
    newest = max(int(r[0]) for r in rows)
    return [[int(r[0]), *(_cell(v) for v in r[1:])] for r in rows if int(r[0]) > newest - window_bars * bar_seconds]


def state_of_rows(rows, window_bars: int, bar_seconds: int) -> PoolState | None:
    """A pool's state from all its rows (what ohlcv_bars read): equal to the sensor's for the same data."""
    rows = list(rows)
    if not rows:
        return None
    return PoolState(max(int(r[0]) for r in rows), len(rows), window_digest(window_rows(rows, window_bars, bar_seconds)))


def pool_states(summaries: dict[str, dict]) -> dict[str, PoolState]:
    """From CollectorReader.bar_summaries to comparable states."""
    return {p: PoolState(s["newest"], s["rows"], window_digest(s["window"])) for p, s in summaries.items()}


@dataclass(frozen=True)
class BarChanges:
    new_pools: list[str]      # pools never seen before
    new_bars: list[str]       # newer newest bar, or more rows (a back-filled gap)
    revised: list[str]        # same newest bar and count, but the last bars' values differ
    vanished: list[str]       # pools whose bars are gone from the collector (reported, never deleted)

    @property
    def to_refresh(self) -> list[str]:
        return sorted({*self.new_pools, *self.new_bars, *self.revised})

    def reason(self, pool_id: str) -> str:
        if pool_id in self.new_pools:
            return "new_pool"
        return "new_bars" if pool_id in self.new_bars else "revised"


def diff(previous: dict[str, PoolState], current: dict[str, PoolState]) -> BarChanges:
    new_pools, new_bars, revised = [], [], []
    for pool_id, now in sorted(current.items()):
        before = previous.get(pool_id)
        if before is None:
            new_pools.append(pool_id)
        elif now.newest != before.newest or now.rows != before.rows:
            new_bars.append(pool_id)
        elif now.digest != before.digest:
            revised.append(pool_id)
    vanished = sorted(set(previous) - set(current))
    return BarChanges(new_pools, new_bars, revised, vanished)
