"""Q50 trading signals: quantile predictions -> a per-bar trade decision, and an as-of lookup.

Pure pandas/numpy. Every formula is here, and every one is row-wise: the signal of bar t
uses only that row's q10/q50/q90, its ``vol_risk`` and the fixed :class:`SignalConfig`. No
rolling window, rank or percentile over the sample (those would let later bars move an
earlier signal); the prefix-invariance test checks it.

Inputs, per pool: a LightGBM quantile model's q10 <= q50 <= q90 of the forward 1-bar return,
indexed by bar ``open_time`` (UTC), with the time ``predicted_at`` the prediction existed;
and ``vol_risk`` = (6-bar std of 1-bar log returns)^2, a variance of one-bar returns.

The return distribution the formulas assume (one model, used by ``prob_up`` and
``expected_value``): the piecewise-linear CDF through (q10, 0.1), (q50, 0.5), (q90, 0.9), i.e.
mass 0.4 spread uniformly on [q10, q50] and on [q50, q90], and the two unmodelled 10 % tails
collapsed onto q10 and q90 (point masses of 0.1; the tails' shape is unknown, so no mass is
invented beyond the outer quantiles).

Total risk of a bar: ``vol_risk + (spread/2)^2`` = market noise (realised variance) plus model
uncertainty (half the 80 % interval, squared). It is the denominator of
``enhanced_info_ratio`` and the variance penalty of ``threshold``.

Known time: a signal for bar t is known at ``known_at`` = ``predicted_at`` (at the earliest the
bar's close, open_time + bar; later if the prediction ran late). :class:`Q50SignalLoader` returns
the latest signal whose ``known_at`` <= t, never one known later.

Costs: the threshold, ``expected_value_net`` and ``tradeable`` are priced by the one cost
model (:mod:`q50_assets.lineage.common.costs`: swap fee + constant-product impact at the pool's
liquidity known at the bar's close) at the INTENDED size: the size
:func:`q50_assets.lineage.signals.sizing.size_entry` would enter with from a flat book holding
``capital_usd``, in a neutral regime (multiplier 1, no adjustment). The strategy applies the
same functions bar by bar with its own equity, position and regime.

Output columns (:data:`SIGNAL_COLUMNS` holds the definition of each, in order): q10, q50,
q90, spread, abs_q50, prob_up, vol_risk, enhanced_info_ratio, expected_value,
expected_value_net, threshold, tradeable, side, signal_tier, known_at, reason,
intended_notional_usd, expected_cost_usd, expected_cost_fraction, reserve_usd, reserve_source.
"""

from __future__ import annotations

import bisect
import math

import numpy as np
import pandas as pd
from pydantic import model_validator

from q50_assets.lineage.common.costs import ReserveSeries
from q50_assets.lineage.signals.sizing import SizingParams, kelly_fraction_raw, risk_budget, size_entry
from q50_assets.settings import CapitalSettings, KellySettings, PositionLimits, Settings, SignalSettings

# Reasons a row is held (column ``reason``), in order of precedence: the first that applies wins.
REASON_PREDICTION_MISSING = "prediction missing"
REASON_VOL_MISSING = "vol_risk missing"
REASON_BELOW_THRESHOLD = "below threshold"
REASON_NEGATIVE_EV = "negative expected value"
REASON_TINY_EDGE = "net edge under one cent"
REASON_PROB_EDGE = "prob edge too small"
REASON_SHORT_NOT_ALLOWED = "short not allowed"
HOLD_REASONS = (
    REASON_PREDICTION_MISSING,
    REASON_VOL_MISSING,
    REASON_BELOW_THRESHOLD,
    REASON_NEGATIVE_EV,
    REASON_TINY_EDGE,
    REASON_PROB_EDGE,
    REASON_SHORT_NOT_ALLOWED,
)

TIERS = ("A", "B", "C", "D")  # best first

SIGNAL_COLUMNS: dict[str, str] = {
    "q10": "Predicted 10 % quantile of the forward 1-bar return (model output, unchanged).",
    "q50": "Predicted median of the forward 1-bar return; its sign is the trade direction "
    "(q50 > 0 long, q50 < 0 short, q50 = 0 no direction).",
    "q90": "Predicted 90 % quantile of the forward 1-bar return (model output, unchanged).",
    "spread": "Width of the 80 % prediction interval: spread = q90 - q10 (model uncertainty).",
    "abs_q50": "Size of the predicted move: abs_q50 = |q50|; compared with ``threshold``.",
    "prob_up": "P(return > 0) under the piecewise-linear CDF F through (q10, 0.1), (q50, 0.5), "
    "(q90, 0.9): prob_up = 1 - F(0), i.e. 1 - (0.1 + 0.4 * (0 - q10) / (q50 - q10)) when "
    "q10 < 0 <= q50 and 1 - (0.5 + 0.4 * (0 - q50) / (q90 - q50)) when q50 < 0 < q90; "
    "0 when q90 <= 0, 1 when q10 > 0, 0.5 when q50 = 0 < q90 (F(q50) = 0.5), and 0.9 when "
    "q10 = 0 < q50 (the 0.1 point mass at q10 = 0 is not up); no division by a zero-width segment. "
    "prob_up > 0.5 exactly when q50 > 0.",
    "vol_risk": "Input feature: (6-bar std of 1-bar log returns)^2, the variance of one-bar "
    "returns (market noise); NaN, negative or infinite values make the row untradeable.",
    "enhanced_info_ratio": "Signal-to-noise of the predicted move: |q50| / sqrt(vol_risk + "
    "(spread/2)^2), the denominator being market noise plus model uncertainty; 0 when the "
    "denominator is 0 (no dispersion at all is not trusted), NaN when vol_risk is invalid.",
    "expected_value": "Gross expected return of trading in the direction of q50 (long when "
    "q50 >= 0, short otherwise), under the distribution of prob_up with the 10 % tails put on "
    "q10 and q90: long EV = prob_up * E[gain | up] - (1 - prob_up) * E[loss | down] = "
    "E[max(r,0)] - E[max(-r,0)] = E[r] = 0.3*q10 + 0.4*q50 + 0.3*q90 (E[gain|up] and "
    "E[loss|down] are the conditional means of the positive and negative parts of that same "
    "distribution, so the tails and skew count); short EV = -E[r]. Can be negative when the "
    "interval is skewed against q50.",
    "expected_value_net": "expected_value - expected_cost_fraction: the expected return left after "
    "the round trip's fee and impact at the intended size.",
    "threshold": "Minimum |q50| to trade, growing with variance and including costs: "
    "threshold = expected_cost_fraction + max(base_threshold, variance_multiplier * (vol_risk + "
    "(spread/2)^2)), a mean-variance risk premium (variance_multiplier = risk aversion) on top "
    "of the round trip at the intended size; >= 2 x swap fee, increasing in vol_risk; NaN when "
    "vol_risk is invalid.",
    "tradeable": "True iff the row is traded (side != 'hold'): abs_q50 > threshold, "
    "expected_value_net > 0, the net edge at the intended size is worth at least one cent, "
    "|prob_up - 0.5| >= min_prob_edge, and the direction is long or allow_short is set.",
    "side": "'long' (q50 > 0) or 'short' (q50 < 0, only with allow_short) when tradeable, "
    "else 'hold'.",
    "signal_tier": "Quality grade from enhanced_info_ratio (eir) against tier_cuts (c1, c2, c3): "
    "'A' if eir >= c3, 'B' if eir >= c2, 'C' if eir >= c1, else 'D' (also when eir is NaN). "
    "Given to every row, traded or not.",
    "known_at": "When the signal became known, = predicted_at (UTC): at the earliest the bar's "
    "close (open_time + bar), later if the prediction ran late. Look-ups as of time t may "
    "only use rows with known_at <= t.",
    "reason": "Why the row is held, the first that applies: 'prediction missing' (a quantile "
    "is NaN), 'vol_risk missing', 'below threshold', 'negative expected value', "
    "'net edge under one cent', 'prob edge too small', 'short not allowed'; '' when trading.",
    "intended_notional_usd": "The entry size (USD at mid price) the cost model and the risk budget give "
    "a flat book holding capital_usd: min(edge-optimal notional, risk_budget x capital_usd), "
    "research/sizing.py size_entry; 0 when no size pays for its fee.",
    "expected_cost_usd": "Expected fee + impact (USD) of entering and later leaving at the intended size, "
    "at the reserve known at known_at (research/costs.py round_trip_cost).",
    "expected_cost_fraction": "expected_cost_usd / intended_notional_usd (2 x swap fee at a zero size).",
    "reserve_usd": "Pool liquidity (USD, both sides) the costs assumed: the latest collector observation "
    "at or before known_at, else the configured fallback (NaN: no impact modelled).",
    "reserve_source": "Where reserve_usd came from: collector_snapshot, collector_history, "
    "collector_history_enhanced, fallback, none.",
}


class SignalConfig(SignalSettings, CapitalSettings, PositionLimits, KellySettings):
    """Parameters of :func:`compute_signals` (formulas in :data:`SIGNAL_COLUMNS`): the signal rules,
    and the cost model's fee per side and impact cap and the intended size of an entry from a flat
    book (starting_capital_usd, position limits, Kelly fraction: lineage/signals/sizing.py), each
    from its settings section."""

    @model_validator(mode="after")
    def _valid_sizing(self):
        self.sizing_params()  # validates the sizing parameters, one error per bad value
        return self

    @classmethod
    def of(cls, settings: Settings) -> "SignalConfig":
        nt = settings.nautilus_trader
        return cls(**settings.signals.model_dump(),
                   **nt.backtest.model_dump(include=set(CapitalSettings.model_fields) | set(KellySettings.model_fields)),
                   **nt.risk_management.model_dump(include=set(PositionLimits.model_fields)))

    def sizing_params(self) -> SizingParams:
        return SizingParams(fee_rate=self.swap_fee, max_reserve_fraction=self.max_reserve_fraction,
                            base_position_size=self.base_position_size, max_position_size=self.max_position_size,
                            kelly_fraction=self.kelly_fraction, variance_multiplier=self.variance_multiplier,
                            base_threshold=self.base_threshold)


def prob_up_piecewise(q10, q50, q90) -> np.ndarray:
    """P(return > 0) from the piecewise-linear CDF through (q10, 0.1), (q50, 0.5), (q90, 0.9).

    Vectorised over broadcastable inputs (q10 <= q50 <= q90 assumed). 0 where q90 <= 0, 1 where
    q10 > 0 (mass at exactly 0 is never "up": q10 = 0 < q50 gives 0.9, q50 = 0 < q90 gives 0.5,
    all three 0 gives 0); inside,
    linear interpolation on the segment containing 0. Degenerate segments (q50 == q10 or
    q90 == q50) never reach a division: a zero-width segment cannot strictly contain 0 in
    the branch that uses it. NaN in, NaN out. Result in [0, 1].
    """
    q10, q50, q90 = np.broadcast_arrays(*(np.asarray(q, dtype="float64") for q in (q10, q50, q90)))
    lower_width = q50 - q10
    upper_width = q90 - q50
    with np.errstate(divide="ignore", invalid="ignore"):
        # 0 in (q10, q50]: F(0) = 0.1 + 0.4 * (0 - q10) / (q50 - q10)
        cdf_lower = 0.1 + 0.4 * (-q10) / np.where(lower_width > 0, lower_width, 1.0)
        # 0 in (q50, q90): F(0) = 0.5 + 0.4 * (0 - q50) / (q90 - q50)
        cdf_upper = 0.5 + 0.4 * (-q50) / np.where(upper_width > 0, upper_width, 1.0)
    # q50 == 0 takes the upper branch: F(0) = F(q50) = 0.5 exactly.
    cdf_at_zero = np.where(q50 > 0, cdf_lower, cdf_upper)
    prob = 1.0 - cdf_at_zero
    prob = np.where(q10 > 0, 1.0, prob)
    prob = np.where(q90 <= 0, 0.0, prob)
    prob = np.where(np.isnan(q10) | np.isnan(q50) | np.isnan(q90), np.nan, prob)
    return np.clip(prob, 0.0, 1.0)


def expected_return_piecewise(q10, q50, q90) -> np.ndarray:
    """E[r] of the assumed distribution: 0.1 at q10, 0.4 uniform on [q10, q50] and on
    [q50, q90], 0.1 at q90. = 0.1*q10 + 0.4*(q10+q50)/2 + 0.4*(q50+q90)/2 + 0.1*q90
    = 0.3*q10 + 0.4*q50 + 0.3*q90. This equals prob_up * E[gain|up] - (1-prob_up) * E[loss|down]
    with both conditional means taken from the same distribution."""
    q10, q50, q90 = (np.asarray(q, dtype="float64") for q in (q10, q50, q90))
    return 0.3 * q10 + 0.4 * q50 + 0.3 * q90


def _to_utc_index(index: pd.Index) -> pd.DatetimeIndex:
    index = pd.DatetimeIndex(index)
    return index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")


def _to_utc_series(values: pd.Series) -> pd.Series:
    values = pd.to_datetime(values)
    return values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")


def compute_signals(predictions: pd.DataFrame, vol_risk: pd.Series, config: SignalConfig, *,
                    reserves: ReserveSeries | None) -> pd.DataFrame:
    """One pool's quantile predictions -> one signal row per bar (columns of SIGNAL_COLUMNS).

    ``predictions``: index open_time (DatetimeIndex, UTC; naive is taken as UTC), columns
    q10, q50, q90, predicted_at. ``vol_risk``: aligned on that index (reindexed; a bar without
    a value is not tradeable). ``reserves``: the pool's liquidity over time (the cost model's;
    None = no impact, fee only), read as of each row's known_at. Raises ValueError on a
    duplicated index, q10 > q50 or q50 > q90, a missing ``predicted_at``, or ``predicted_at``
    <= open_time (a prediction cannot be known before its bar has closed). Row-wise: each
    output row depends on its own input row (and the liquidity known at its time) only.
    """
    missing = [c for c in ("q10", "q50", "q90", "predicted_at") if c not in predictions.columns]
    if missing:
        raise ValueError(f"predictions lack columns {missing}")
    index = _to_utc_index(predictions.index)
    if index.has_duplicates:
        raise ValueError("predictions index (open_time) has duplicates; one pool per call")
    index.name = predictions.index.name or "open_time"

    q10 = predictions["q10"].to_numpy(dtype="float64")
    q50 = predictions["q50"].to_numpy(dtype="float64")
    q90 = predictions["q90"].to_numpy(dtype="float64")
    with np.errstate(invalid="ignore"):
        unsorted = (q10 > q50) | (q50 > q90)
    if unsorted.any():
        raise ValueError(f"{int(unsorted.sum())} rows with q10 > q50 or q50 > q90; sort the quantiles first")

    known_at = _to_utc_series(predictions["predicted_at"]).set_axis(index)
    if known_at.isna().any():
        raise ValueError(f"{int(known_at.isna().sum())} rows without predicted_at: unknown when the signal is known")
    early = known_at <= index.to_series(index=index)
    if early.any():
        raise ValueError(f"{int(early.sum())} rows with predicted_at <= open_time (look-ahead)")

    vol_series = pd.Series(vol_risk).copy()
    vol_series.index = _to_utc_index(vol_series.index)
    vol = vol_series.reindex(index).to_numpy(dtype="float64")
    vol_ok = np.isfinite(vol) & (vol >= 0)
    vol = np.where(vol_ok, vol, np.nan)
    pred_ok = ~(np.isnan(q10) | np.isnan(q50) | np.isnan(q90))

    spread = q90 - q10
    abs_q50 = np.abs(q50)
    prob_up = prob_up_piecewise(q10, q50, q90)

    total_var = vol + (spread / 2.0) ** 2
    denom = np.sqrt(total_var)
    with np.errstate(divide="ignore", invalid="ignore"):
        eir = np.where(denom > 0, abs_q50 / np.where(denom > 0, denom, 1.0), 0.0)
    eir = np.where(np.isnan(denom), np.nan, eir)

    direction = np.where(q50 >= 0, 1.0, -1.0)
    expected_value = direction * expected_return_piecewise(q10, q50, q90)
    # Kelly of the trade's own direction: a short is the long of the mirrored distribution.
    kelly_long = kelly_fraction_raw(prob_up, q10, q50, q90)
    kelly_short = kelly_fraction_raw(1.0 - prob_up, -q90, -q50, -q10)
    kelly = np.where(direction > 0, kelly_long, kelly_short)

    # The one cost model at the intended size, row by row (the strategy's own functions).
    params = config.sizing_params()
    if reserves is None:
        reserve = np.full(len(index), np.nan)
        reserve_source = np.full(len(index), "none", dtype=object)
    else:
        reserve, reserve_source = reserves.sample(known_at.dt.as_unit("ns").astype("int64").to_numpy())
    n = len(index)
    notional, cost_usd, cost_fraction = np.zeros(n), np.zeros(n), np.full(n, np.nan)
    net, threshold, entry_ok = np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, dtype=bool)
    for i in range(n):
        y = None if math.isnan(reserve[i]) else float(reserve[i])
        budget = risk_budget(float(kelly[i]), 1.0, params)
        e = size_entry(float(expected_value[i]), float(abs_q50[i]), float(total_var[i]), config.starting_capital_usd,
                       budget, y, params)
        notional[i], cost_usd[i], cost_fraction[i] = e.notional_usd, e.cost_usd, e.cost_fraction
        net[i], threshold[i], entry_ok[i] = e.net_edge, e.threshold, e.ok
    expected_value_net = net

    with np.errstate(invalid="ignore"):
        above = abs_q50 > threshold  # False when threshold is NaN
        positive_ev = expected_value_net > 0
        prob_edge_ok = np.abs(prob_up - 0.5) >= config.min_prob_edge
    tiny_edge = above & positive_ev & ~entry_ok
    short_blocked = (q50 < 0) & (not config.allow_short)

    reason = np.full(len(index), "", dtype=object)
    # Assign in reverse precedence so the first applicable reason is the one left.
    reason[short_blocked] = REASON_SHORT_NOT_ALLOWED
    reason[~prob_edge_ok] = REASON_PROB_EDGE
    reason[tiny_edge] = REASON_TINY_EDGE
    reason[~positive_ev] = REASON_NEGATIVE_EV
    reason[~above] = REASON_BELOW_THRESHOLD
    reason[~vol_ok] = REASON_VOL_MISSING
    reason[~pred_ok] = REASON_PREDICTION_MISSING
    tradeable = reason == ""
    side = np.where(tradeable, np.where(q50 > 0, "long", "short"), "hold").astype(object)

    c1, c2, c3 = config.tier_cuts
    with np.errstate(invalid="ignore"):
        tier = np.select([eir >= c3, eir >= c2, eir >= c1], ["A", "B", "C"], default="D").astype(object)

    out = pd.DataFrame(
        {
            "q10": q10,
            "q50": q50,
            "q90": q90,
            "spread": spread,
            "abs_q50": abs_q50,
            "prob_up": prob_up,
            "vol_risk": vol,
            "enhanced_info_ratio": eir,
            "expected_value": expected_value,
            "expected_value_net": expected_value_net,
            "threshold": threshold,
            "tradeable": tradeable.astype(bool),
            "side": side,
            "signal_tier": tier,
            "known_at": known_at.to_numpy(),
            "reason": reason,
            "intended_notional_usd": notional,
            "expected_cost_usd": cost_usd,
            "expected_cost_fraction": cost_fraction,
            "reserve_usd": reserve,
            "reserve_source": reserve_source,
        },
        index=index,
    )
    out["known_at"] = known_at
    return out[list(SIGNAL_COLUMNS)]


class Q50SignalLoader:
    """The integration plan's signal loader: one pool's signals, looked up as of a time.

    ``get_signal_for_timestamp(t)`` returns the latest signal KNOWN at t (greatest ``known_at``
    <= t; among equal ``known_at`` the latest ``open_time``), never a nearer later one, as a
    dict of that row's columns plus ``open_time``; None before any signal is known. Rows with
    NaT ``known_at`` are never returned.

    Built from wherever the signals live: a signals frame (:func:`compute_signals`' output, or
    the rows of the ``q50_signals`` table read by ``ProjectTables.signal_rows_many``). Needs
    q10, q50, q90, vol_risk, known_at (others optional: prob_up, signal_tier, ... are recomputed
    or carried). Unsorted input is sorted once; each lookup is a binary search.

    The strategy's fast path is :meth:`index_at_ns` + the plain-float lists (``open_ns``,
    ``expected_value_long``, ``abs_q50``, ``q50``, ``total_variance``, ``kelly_long``, ``tier``):
    no pandas per bar.
    """

    def __init__(self, signals: pd.DataFrame):
        missing = [c for c in ("q10", "q50", "q90", "vol_risk", "known_at") if c not in signals.columns]
        if missing:
            raise ValueError(f"signals lack columns {missing}")
        frame = signals.copy()
        frame.index = _to_utc_index(frame.index)
        frame.index.name = "open_time"
        frame["known_at"] = _to_utc_series(frame["known_at"])
        frame = frame[frame["known_at"].notna()]
        # Sort by (known_at, open_time): the last row of a known_at tie has the latest open_time.
        order = np.lexsort((frame.index.asi8, frame["known_at"].dt.as_unit("ns").astype("int64").to_numpy()))
        self._frame = frame.iloc[order]
        f = self._frame
        q10, q50, q90 = (f[c].to_numpy(dtype="float64") for c in ("q10", "q50", "q90"))
        vol = f["vol_risk"].to_numpy(dtype="float64")
        vol = np.where(np.isfinite(vol) & (vol >= 0), vol, np.nan)
        prob = prob_up_piecewise(q10, q50, q90)
        self.known_ns: list[int] = [int(v) for v in f["known_at"].dt.as_unit("ns").astype("int64")]
        self.open_ns: list[int] = [int(v) for v in f.index.as_unit("ns").asi8]
        self.q50: list[float] = q50.tolist()
        self.abs_q50: list[float] = np.abs(q50).tolist()
        self.expected_value_long: list[float] = expected_return_piecewise(q10, q50, q90).tolist()
        self.total_variance: list[float] = (vol + ((q90 - q10) / 2.0) ** 2).tolist()
        self.kelly_long: list[float] = np.asarray(kelly_fraction_raw(prob, q10, q50, q90), dtype="float64").tolist()
        self.tier: list[str] = (f["signal_tier"].astype(str).tolist() if "signal_tier" in f.columns
                                else ["D"] * len(f))

    def __len__(self) -> int:
        return len(self._frame)

    @property
    def frame(self) -> pd.DataFrame:
        """The signals, sorted by (known_at, open_time)."""
        return self._frame

    def index_at_ns(self, ts_ns: int) -> int:
        """Position of the latest signal known at ``ts_ns`` (epoch ns), -1 if none."""
        return bisect.bisect_right(self.known_ns, ts_ns) - 1

    def get_signal_for_timestamp(self, timestamp) -> dict | None:
        """The row with the greatest known_at <= ``timestamp``, as a dict (with ``open_time``), or None.

        ``timestamp``: Timestamp, datetime or anything ``pd.Timestamp`` accepts; naive means UTC.
        """
        ts = pd.Timestamp(timestamp)
        if ts is pd.NaT or pd.isna(ts):
            raise ValueError("timestamp must be a time, got NaT")
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        position = self.index_at_ns(ts.as_unit("ns").value)
        if position < 0:
            return None
        row = self._frame.iloc[position]
        return {"open_time": row.name, **row.to_dict()}


__all__ = [
    "HOLD_REASONS",
    "SIGNAL_COLUMNS",
    "SignalConfig",
    "Q50SignalLoader",
    "TIERS",
    "compute_signals",
    "expected_return_piecewise",
    "prob_up_piecewise",
]

