"""OHLCV bars of one pool: from collector rows to validated, time-safe bars.

Pure pandas; no Dagster. Every rule in :data:`BAR_RULES` becomes one asset check. A rule
never drops a row: rows it objects to are returned (with a reason) so the check can show
them, and a failing *blocking* rule marks the whole pool unsafe for downstream stages.

Time: collector timestamps are bar OPENS (epoch seconds, authoritative). A bar is known at
its close = open + timeframe. The newest bar of a series is the one the collector may still
revise in place (it upserts the running bar), so it is held back as ``partial_bar``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
from q50_assets.lineage.common.bar_length import BarLength
from q50_assets.settings import OhlcvSettings, Settings


# Columns as read from ohlcv_data (collector names).
RAW_COLUMNS = [
    "id",
    "timestamp",
    "datetime",
    "open_price",
    "high_price",
    "low_price",
    "close_price",
    "volume_usd",
]
PRICE_COLUMNS = ["open_price", "high_price", "low_price", "close_price"]
VALUE_COLUMNS = [*PRICE_COLUMNS, "volume_usd"]
# Validated bars, indexed by bar open time (UTC).
BAR_COLUMNS = ["open", "high", "low", "close", "volume", "ohlcv_id"]

# How many offending bars a check lists in its metadata (all are counted).
MAX_LISTED_BARS = 20


class BarRules(OhlcvSettings, BarLength):
    """Thresholds of the OHLCV checks: the settings' ``ohlcv`` section at the configured bar length."""

    @classmethod
    def of(cls, settings: Settings) -> "BarRules":
        return cls(**settings.ohlcv.model_dump(), bar_seconds=settings.bar_seconds)


@dataclass(frozen=True)
class RuleOutcome:
    name: str
    passed: bool
    blocking: bool
    description: str
    # Offending rows of the raw frame plus a `reason` column; empty when the rule passed.
    offending: pd.DataFrame
    metadata: dict[str, Any] = field(default_factory=dict)

    def listed_bars(self) -> list[dict[str, Any]]:
        """The first offending bars, JSON-friendly, for check metadata."""
        rows = []
        for _, row in self.offending.head(MAX_LISTED_BARS).iterrows():
            rows.append(
                {
                    "ohlcv_id": None if pd.isna(row.get("id")) else int(row["id"]),
                    "open_time": _iso(row.get("open_time")),
                    "reason": row["reason"],
                }
            )
        return rows


@dataclass
class ValidatedBars:
    pool_id: str
    timeframe: str
    rows_read: int
    bars: pd.DataFrame  # complete bars, BAR_COLUMNS, index open_time (UTC), sorted
    partial_bar: pd.DataFrame  # the held-back newest bar (0 or 1 row, BAR_COLUMNS)
    outcomes: list[RuleOutcome]

    @property
    def safe(self) -> bool:
        """True when no blocking rule failed: only then may downstream stages use the bars."""
        return all(o.passed for o in self.outcomes if o.blocking)

    @property
    def blocking_failures(self) -> list[str]:
        return [o.name for o in self.outcomes if o.blocking and not o.passed]

    def outcome(self, name: str) -> RuleOutcome:
        return next(o for o in self.outcomes if o.name == name)

    def summary(self) -> dict[str, Any]:
        bars = self.bars
        gaps = self.outcome("gaps").metadata
        return {
            "pool_id": self.pool_id,
            "timeframe": self.timeframe,
            "rows_read": self.rows_read,
            "complete_bars": len(bars),
            "partial_bars_held_back": len(self.partial_bar),
            "first_open": _iso(bars.index.min()) if len(bars) else None,
            "last_open": _iso(bars.index.max()) if len(bars) else None,
            "gap_count": gaps.get("gap_count", 0),
            "longest_gap_bars": gaps.get("longest_gap_bars", 0),
            "min_low": float(bars["low"].min()) if len(bars) else None,
            "max_high": float(bars["high"].max()) if len(bars) else None,
            "safe": self.safe,
            "blocking_failures": self.blocking_failures,
        }


class UnsafeBarsError(RuntimeError):
    """A downstream stage was handed bars that failed a blocking check."""


def require_safe(validated: ValidatedBars) -> pd.DataFrame:
    """The complete bars, or a clear error naming the pool and the failed checks."""
    if not validated.safe:
        raise UnsafeBarsError(
            f"pool {validated.pool_id}: OHLCV failed blocking checks {validated.blocking_failures}; "
            "downstream stages do not use it"
        )
    return validated.bars


# --- rules -----------------------------------------------------------------------------

@dataclass(frozen=True)
class _RuleContext:
    rules: BarRules
    now: pd.Timestamp
    complete_bars: int
    colliding_pool_ids: tuple[str, ...]
    pool_registered: bool = True


# A rule returns (offending rows with a `reason`, metadata, verdict); verdict None means
# "passed when no row offends".
_RuleFn = Callable[[pd.DataFrame, _RuleContext], tuple[pd.DataFrame, dict[str, Any], bool | None]]


@dataclass(frozen=True)
class BarRule:
    name: str
    blocking: bool
    description: str
    evaluate: _RuleFn


BAR_RULES: list[BarRule] = []


def _rule(name: str, blocking: bool, description: str) -> Callable[[_RuleFn], _RuleFn]:
    def register(fn: _RuleFn) -> _RuleFn:
        BAR_RULES.append(BarRule(name, blocking, description, fn))
        return fn

    return register


def _flag(frame: pd.DataFrame, mask: pd.Series, reason: str | pd.Series) -> pd.DataFrame:
    hits = frame.loc[mask].copy()
    hits["reason"] = reason if isinstance(reason, str) else reason.loc[mask]
    return hits


def _concat(parts: list[pd.DataFrame], template: pd.DataFrame) -> pd.DataFrame:
    parts = [p for p in parts if len(p)]
    if not parts:
        empty = template.iloc[0:0].copy()
        empty["reason"] = pd.Series(dtype="str")
        return empty
    return pd.concat(parts).sort_values(["timestamp", "id"], kind="stable")


@_rule("complete_values", True, "Every bar has open, high, low, close and volume (no NULL, NaN or infinity).")
def _complete_values(frame, ctx):
    parts = []
    for column in VALUE_COLUMNS:
        values = frame[column]
        bad = values.isna() | ~np.isfinite(values.fillna(0.0))
        parts.append(_flag(frame, bad, f"{column} is NULL/NaN/inf"))
    return _concat(parts, frame), {}, None


@_rule("positive_prices", True, "Prices are > 0 and volume is >= 0.")
def _positive_prices(frame, ctx):
    parts = [_flag(frame, frame[c] <= 0, f"{c} <= 0") for c in PRICE_COLUMNS]
    parts.append(_flag(frame, frame["volume_usd"] < 0, "volume_usd < 0"))
    return _concat(parts, frame), {}, None


@_rule("ohlc_consistent", True, "high >= max(open, close) and low <= min(open, close).")
def _ohlc_consistent(frame, ctx):
    body_high = frame[["open_price", "close_price"]].max(axis=1)
    body_low = frame[["open_price", "close_price"]].min(axis=1)
    parts = [
        _flag(frame, frame["high_price"] < body_high, "high below max(open, close)"),
        _flag(frame, frame["low_price"] > body_low, "low above min(open, close)"),
    ]
    return _concat(parts, frame), {}, None


@_rule(
    "timestamps_aligned_unique",
    True,
    "One bar per timeframe interval: bar opens are multiples of the timeframe, unique, and the "
    "datetime column agrees with the epoch timestamp.",
)
def _timestamps(frame, ctx):
    seconds = ctx.rules.bar_seconds
    parts = [
        _flag(frame, frame["timestamp"] % seconds != 0, f"open not aligned to {ctx.rules.timeframe}"),
        _flag(frame, frame["timestamp"].duplicated(keep=False), "duplicate bar open"),
    ]
    disagrees = frame["datetime_utc"].notna() & (frame["datetime_utc"] != frame["open_time"])
    parts.append(_flag(frame, disagrees, "datetime disagrees with epoch timestamp"))
    # A datetime the collector stored but pandas cannot represent (after year 2262) is no bar open.
    unreadable = frame["datetime_utc"].isna() & frame["datetime"].notna()
    parts.append(_flag(frame, unreadable, "datetime out of range"))
    return _concat(parts, frame), {}, None


@_rule("no_future_bars", True, "No bar opens after the time of validation.")
def _no_future(frame, ctx):
    hits = _flag(frame, frame["open_time"] > ctx.now, "opens in the future")
    # Epoch seconds beyond pandas' range (year 2262), e.g. a timestamp written in milliseconds.
    beyond = _flag(frame, frame["open_time"].isna(), "opens in the future (epoch out of range: milliseconds?)")
    return _concat([hits, beyond], frame), {"validated_at": _iso(ctx.now)}, None


@_rule(
    "price_precision",
    True,
    "Every price keeps enough significant digits at the collector's stored scale "
    "(Numeric(20,8)); coarser prices turn returns into rounding noise.",
)
def _price_precision(frame, ctx):
    scale = 10.0 ** ctx.rules.stored_price_decimals
    parts = []
    for column in PRICE_COLUMNS:
        units = frame[column] * scale
        # Non-finite prices are complete_values' to report (an infinite one has no digit count).
        positive = (units > 0) & np.isfinite(units)
        digits = np.floor(np.log10(units.where(positive, 1.0))) + 1
        coarse = positive & (digits < ctx.rules.min_price_significant_digits)
        reason = column + " has " + digits.astype("Int64").astype(str) + " significant digit(s)"
        parts.append(_flag(frame, coarse, reason))
    meta = {
        "min_significant_digits": ctx.rules.min_price_significant_digits,
        "smallest_price": float(frame[PRICE_COLUMNS].min().min()) if len(frame) else None,
    }
    return _concat(parts, frame), meta, None


@_rule(
    "pool_id_unique_lowercase",
    True,
    "No other pool id equals this one when lower-cased (QLib lower-cases instrument names).",
)
def _lowercase_collision(frame, ctx):
    ids = list(ctx.colliding_pool_ids)
    return _concat([], frame), {"colliding_pool_ids": ids}, not ids


@_rule(
    "pool_registered",
    True,
    "The pool id has a row in the collector's pools table. Bars of an unknown pool (a collector "
    "without foreign keys, e.g. SQLite) cannot be stored: the q50 tables reference pools.id.",
)
def _pool_registered(frame, ctx):
    hits = _flag(frame, pd.Series(not ctx.pool_registered, index=frame.index), "pool_id has no row in pools")
    return _concat([hits], frame), {"pool_registered": ctx.pool_registered}, ctx.pool_registered


@_rule("enough_bars", True, "Enough complete bars to compute features (settings.ohlcv.min_bars).")
def _enough_bars(frame, ctx):
    meta = {"complete_bars": ctx.complete_bars, "min_bars": ctx.rules.min_bars}
    return _concat([], frame), meta, ctx.complete_bars >= ctx.rules.min_bars


@_rule(
    "gaps",
    False,
    "Missing intervals (GeckoTerminal omits empty ones): counted; fails (warning) when one gap is "
    "longer than settings.ohlcv.max_gap_bars.",
)
def _gaps(frame, ctx):
    opens = np.unique(frame["timestamp"].to_numpy())
    missing = np.diff(opens) // ctx.rules.bar_seconds - 1 if len(opens) > 1 else np.array([], dtype=int)
    after_gap = set(opens[1:][missing > 0].tolist())
    gap_sizes = dict(zip(opens[1:].tolist(), missing.tolist()))
    mask = frame["timestamp"].isin(after_gap)
    reason = frame["timestamp"].map(lambda t: f"{gap_sizes.get(t, 0)} bar(s) missing before this bar")
    hits = _flag(frame, mask, reason)
    longest = int(missing.max()) if len(missing) and missing.max() > 0 else 0
    longest_at = None
    if longest:
        longest_at = _iso(pd.to_datetime(int(opens[1:][missing.argmax()]), unit="s", utc=True))
    meta = {
        "gap_count": int((missing > 0).sum()),
        "missing_bars": int(missing[missing > 0].sum()) if len(missing) else 0,
        "longest_gap_bars": longest,
        "longest_gap_ends_before": longest_at,
        "max_gap_bars": ctx.rules.max_gap_bars,
    }
    failing = hits[hits["timestamp"].map(lambda t: gap_sizes.get(t, 0) > ctx.rules.max_gap_bars)]
    # Only gaps above the limit fail; all gaps are counted in the metadata.
    return _concat([failing], frame), meta, None


@_rule("zero_volume", False, "Bars with zero USD volume (2-decimal rounding or no trades): counted, warning.")
def _zero_volume(frame, ctx):
    hits = _flag(frame, frame["volume_usd"] == 0, "volume_usd == 0")
    share = len(hits) / len(frame) if len(frame) else 0.0
    return _concat([hits], frame), {"zero_volume_bars": len(hits), "share": round(share, 4)}, None


@_rule(
    "extreme_moves",
    False,
    "Close-to-close moves beyond a factor of settings extreme_move_ratio in one bar (pumps, rugs): "
    "listed, warning.",
)
def _extreme_moves(frame, ctx):
    ordered = frame.sort_values("timestamp", kind="stable")
    ratio = ordered["close_price"] / ordered["close_price"].shift(1)
    limit = ctx.rules.extreme_move_ratio
    extreme = (ratio > limit) | (ratio < 1.0 / limit)
    reason = "close moved x" + ratio.round(6).astype(str) + " in one bar"
    hits = _flag(ordered, extreme.fillna(False), reason)
    return _concat([hits], frame), {"ratio_limit": limit}, None


# --- validation ------------------------------------------------------------------------

def _iso(value: Any) -> str | None:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return pd.Timestamp(value).isoformat()


_NS_RANGE = (pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC"))


def _utc_ns(values: pd.Series, **to_datetime) -> pd.Series:
    """UTC nanosecond times; NaT where a value is unreadable or beyond the nanosecond range
    (years 1677..2262), e.g. an epoch written in milliseconds. Rules flag the NaT rows."""
    times = pd.to_datetime(values, utc=True, errors="coerce", **to_datetime)
    in_range = times.isna() | ((times >= _NS_RANGE[0]) & (times <= _NS_RANGE[1]))
    return times.where(in_range).dt.as_unit("ns")


def _normalise(raw: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in RAW_COLUMNS if c not in raw.columns]
    if missing:
        raise ValueError(f"ohlcv rows lack columns {missing}")
    frame = raw[RAW_COLUMNS].copy()
    for column in VALUE_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    frame["timestamp"] = frame["timestamp"].astype("int64")
    frame["open_time"] = _utc_ns(frame["timestamp"], unit="s")
    # SQLite returns naive datetimes (stored as UTC); PostgreSQL returns aware ones.
    frame["datetime_utc"] = _utc_ns(frame["datetime"])
    return frame.sort_values(["timestamp", "id"], kind="stable").reset_index(drop=True)


def _to_bars(frame: pd.DataFrame) -> pd.DataFrame:
    bars = pd.DataFrame(
        {
            "open": frame["open_price"].to_numpy(dtype="float64"),
            "high": frame["high_price"].to_numpy(dtype="float64"),
            "low": frame["low_price"].to_numpy(dtype="float64"),
            "close": frame["close_price"].to_numpy(dtype="float64"),
            "volume": frame["volume_usd"].to_numpy(dtype="float64"),
            "ohlcv_id": frame["id"].to_numpy(dtype="int64"),
        },
        index=pd.DatetimeIndex(frame["open_time"], name="open_time"),
    )
    return bars


def validate_bars(
    pool_id: str,
    raw: pd.DataFrame,
    rules: BarRules,
    now: datetime | pd.Timestamp | None = None,
    colliding_pool_ids: tuple[str, ...] | list[str] = (),
    pool_registered: bool = True,
) -> ValidatedBars:
    """Validate one pool's collector rows of ``rules.timeframe``.

    ``raw`` has :data:`RAW_COLUMNS`. ``colliding_pool_ids`` are the other pool ids equal to
    ``pool_id`` when lower-cased; ``pool_registered`` says whether ``pools`` has a row for it.
    Every row read ends up either in ``bars``, in
    ``partial_bar`` (the newest, still revisable bar) or, when a blocking rule failed, in a
    pool marked unsafe with the offending rows listed by the failing rule.
    """
    now_ts = pd.Timestamp(now or datetime.now(timezone.utc))
    now_ts = now_ts.tz_localize("UTC") if now_ts.tzinfo is None else now_ts.tz_convert("UTC")
    frame = _normalise(raw)

    # The newest bar is held back: the collector may still revise it in place.
    newest = frame.index[-1:] if len(frame) else frame.index[0:0]
    complete = frame.drop(index=newest)
    partial = frame.loc[newest]

    ctx = _RuleContext(rules, now_ts, len(complete), tuple(sorted(colliding_pool_ids)), pool_registered)
    outcomes = []
    for rule in BAR_RULES:
        offending, meta, verdict = rule.evaluate(frame, ctx)
        passed = offending.empty if verdict is None else verdict
        meta = {"offending_bars": int(offending["id"].nunique()) if len(offending) else 0, **meta}
        outcomes.append(RuleOutcome(rule.name, passed, rule.blocking, rule.description, offending, meta))

    return ValidatedBars(
        pool_id=pool_id,
        timeframe=rules.timeframe,
        rows_read=len(frame),
        bars=_to_bars(complete),
        partial_bar=_to_bars(partial),
        outcomes=outcomes,
    )


def significant_digits(price: float, decimals: int) -> int:
    """Significant digits ``price`` keeps when stored with ``decimals`` decimals."""
    units = price * 10.0**decimals
    return 0 if units < 1 else int(math.floor(math.log10(units))) + 1
