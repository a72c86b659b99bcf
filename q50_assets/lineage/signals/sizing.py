"""Position sizing and the hold/exit rule: how much to buy, when to keep, when to leave.

Pure Python/numpy. Three steps, each checkable by hand:

1. :func:`kelly_fraction_raw` / :func:`kelly_strength` -> how strongly the quantile forecast
   supports a long bet (fractional Kelly).
2. :func:`risk_budget` -> the most equity a position may hold: ``base_position_size`` x regime
   multiplier x fractional-Kelly strength, capped at ``max_position_size`` (``config.yaml``'s
   ``risk_management``).
3. :func:`size_entry` -> the intended notional: the size where the expected edge NET of the
   round trip's cost (:mod:`q50_assets.lineage.common.costs`: fee + constant-product impact, at the
   pool's liquidity at that time) is largest, within the risk budget. Impact grows with size, so
   the best size is often far below the budget. :func:`decide` adds the path-dependent part
   (enter, add, keep, trim, exit) the strategy applies bar by bar.

The return distribution is the one of :mod:`q50_assets.lineage.signals.rules` (its module
docstring): point masses of 0.1 at q10 and at q90, 0.4 spread uniformly on [q10, q50] and
0.4 uniformly on [q50, q90].

Kelly for a binary-outcome bet that gains ``b_win`` per unit staked with probability p and
loses ``b_loss`` per unit with probability 1 - p: maximise p*ln(1 + f*b_win) +
(1-p)*ln(1 - f*b_loss), whose optimum is

    f* = p / b_loss - (1 - p) / b_win

with b_win = E[r | r > 0] and b_loss = E[-r | r < 0], both conditional means taken from the
distribution above (so skew and the tails count). ``strength = clip(kelly_fraction * f*, 0, 1)``
with ``kelly_fraction = 0.5`` by default (half Kelly: ~75 % of the growth for half the
variance, and a hedge against an over-confident forecast).

Caveat worth knowing: on 1-hour returns b_win and b_loss are ~1e-2, so
f* = E[r] / (b_win * b_loss) (for the distribution's own p) is large (tens) as soon as the edge is
positive: :func:`risk_budget` then reaches ``max_position_size``, and what limits a position is
the cost of trading it (:func:`size_entry`), not Kelly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from q50_assets.lineage.common.costs import round_trip_cost, trade_cost

DEFAULT_KELLY_FRACTION = 0.5


def _uniform_positive_part(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """E[max(U, 0)] for U uniform on [lo, hi] (lo <= hi); max(lo, 0) when lo == hi."""
    width = hi - lo
    with np.errstate(divide="ignore", invalid="ignore"):
        straddle = hi * hi / (2.0 * np.where(width > 0, width, 1.0))
    out = np.where(lo >= 0, (lo + hi) / 2.0, np.where(hi <= 0, 0.0, straddle))
    return np.where(width > 0, out, np.maximum(lo, 0.0))


def positive_part_mean(q10, q50, q90) -> np.ndarray:
    """E[max(r, 0)] under the signals distribution (0.1 at q10 and q90, 0.4 uniform on
    each inner segment). Vectorised; NaN in, NaN out."""
    q10, q50, q90 = np.broadcast_arrays(*(np.asarray(q, dtype="float64") for q in (q10, q50, q90)))
    return (0.1 * np.maximum(q10, 0.0) + 0.4 * _uniform_positive_part(q10, q50)
            + 0.4 * _uniform_positive_part(q50, q90) + 0.1 * np.maximum(q90, 0.0))


def kelly_fraction_raw(prob_up, q10, q50, q90) -> np.ndarray:
    """Unclipped Kelly fraction f* = p / b_loss - (1 - p) / b_win (see module docstring).

    ``p`` = ``prob_up`` as given (normally ``prob_up_piecewise(q10, q50, q90)``; a calibrated
    probability may be passed instead). b_win = E[max(r,0)] / P(r > 0) and
    b_loss = E[max(-r,0)] / P(r < 0) from the distribution of the quantiles. No downside
    (P(r < 0) = 0) and p > 0 -> +inf; no upside (P(r > 0) = 0) -> -inf; neither -> 0.
    NaN when any input is NaN.
    """
    from q50_assets.lineage.signals.rules import prob_up_piecewise  # signals imports this module

    p, q10, q50, q90 = np.broadcast_arrays(*(np.asarray(v, dtype="float64") for v in (prob_up, q10, q50, q90)))
    p_pos = prob_up_piecewise(q10, q50, q90)
    p_neg = prob_up_piecewise(-q90, -q50, -q10)  # P(r < 0) = P(-r > 0), mirrored quantiles
    gain = positive_part_mean(q10, q50, q90)
    loss = positive_part_mean(-q90, -q50, -q10)
    has_up = (p_pos > 0) & (gain > 0)
    has_down = (p_neg > 0) & (loss > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        b_win = np.where(has_up, gain / np.where(has_up, p_pos, 1.0), np.nan)
        b_loss = np.where(has_down, loss / np.where(has_down, p_neg, 1.0), np.nan)
        f = p / b_loss - (1.0 - p) / b_win
    f = np.where(has_up & ~has_down, np.where(p > 0, np.inf, 0.0), f)
    f = np.where(~has_up & has_down, -np.inf, f)
    f = np.where(~has_up & ~has_down, 0.0, f)
    nan_in = np.isnan(p) | np.isnan(q10) | np.isnan(q50) | np.isnan(q90)
    return np.where(nan_in, np.nan, f)


def kelly_strength(prob_up, q10, q50, q90, kelly_fraction: float = DEFAULT_KELLY_FRACTION, cap: float = 1.0):
    """Strength of a long bet in [0, cap]: ``clip(kelly_fraction * f*, 0, cap)``.

    f* from :func:`kelly_fraction_raw`. A NaN input gives 0 (no information, no bet).
    Returns a float for scalar inputs, an ndarray otherwise.
    """
    if not np.isfinite(kelly_fraction) or kelly_fraction <= 0:
        raise ValueError(f"kelly_fraction must be a finite number > 0, got {kelly_fraction!r}")
    if not cap > 0:
        raise ValueError(f"cap must be > 0, got {cap!r}")
    f = kelly_fraction_raw(prob_up, q10, q50, q90)
    with np.errstate(invalid="ignore"):
        strength = np.clip(kelly_fraction * f, 0.0, cap)
    strength = np.where(np.isnan(strength), 0.0, strength)
    return float(strength) if strength.ndim == 0 else strength


# ------------------------------------------------------------------------------------------
# Risk budget, cost-optimal entry size, and the bar-by-bar decision.

# An entry whose expected net edge is below one cent is not worth it: Nautilus keeps USD balances
# in cents, so its rounding alone is of that size.
MIN_EDGE_USD = 0.01


@dataclass(frozen=True)
class SizingParams:
    """Everything :func:`decide` needs besides the bar's signal, regime and book.

    fee_rate, max_reserve_fraction: the cost model's (:mod:`q50_assets.lineage.common.costs`).
    base_position_size, max_position_size: ``risk_management``; kelly_fraction: fractional Kelly.
    variance_multiplier, base_threshold: the signal threshold's risk premium
    (:mod:`q50_assets.lineage.signals.rules`).
    """

    fee_rate: float = 0.0025
    max_reserve_fraction: float = 0.1
    base_position_size: float = 0.1
    max_position_size: float = 0.5
    kelly_fraction: float = DEFAULT_KELLY_FRACTION
    variance_multiplier: float = 1.0
    base_threshold: float = 0.0

    def __post_init__(self) -> None:
        for name in ("base_position_size", "max_position_size"):
            value = getattr(self, name)
            if not math.isfinite(value) or not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")
        if self.base_position_size > self.max_position_size:
            raise ValueError(f"base_position_size ({self.base_position_size}) exceeds max_position_size "
                             f"({self.max_position_size})")
        if not math.isfinite(self.kelly_fraction) or self.kelly_fraction <= 0:
            raise ValueError(f"kelly_fraction must be a finite number > 0, got {self.kelly_fraction!r}")
        for name in ("variance_multiplier", "base_threshold"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")

    def variance_premium(self, total_variance: float) -> float:
        """The threshold's risk premium: max(base_threshold, variance_multiplier * variance)."""
        return max(self.base_threshold, self.variance_multiplier * total_variance)


def risk_budget(kelly_raw: float, regime_multiplier: float, params: SizingParams) -> float:
    """Most equity a long position may hold: ``min(max_position_size, base_position_size x
    regime_multiplier x kelly_fraction x f*)``, >= 0.

    So a fractional-Kelly bet of one unit (kelly_fraction x f* = 1) in a neutral regime holds
    ``base_position_size``; stronger forecasts scale it up until ``max_position_size`` binds (on
    hourly returns f* is in the tens, so it usually does). f* <= 0, NaN, or a multiplier <= 0
    give 0; f* = +inf (no modelled downside) gives the cap.
    """
    if not regime_multiplier > 0 or math.isnan(kelly_raw) or not kelly_raw > 0:
        return 0.0
    raw = params.base_position_size * regime_multiplier * params.kelly_fraction * kelly_raw
    return min(params.max_position_size, raw)


def edge_optimal_notional(expected_value: float, reserve_usd: float | None, fee_rate: float,
                          max_reserve_fraction: float) -> float:
    """The notional n maximising n * expected_value - round_trip_cost(n) (costs.py).

    With u = n / Y (Y = reserve_usd / 2) the round trip costs 2 n (u + f) / (1 - u^2), so the
    objective's derivative in u is ev - 2 (f + 2u + f u^2) / (1 - u^2)^2: decreasing, one root.
    0 when ev <= 2f (no size pays for its fee); u capped at ``max_reserve_fraction``; +inf
    without a reserve (no impact: the edge grows linearly with size, other limits bind).
    """
    f = fee_rate
    if not expected_value > 2.0 * f:
        return 0.0
    if reserve_usd is None:
        return math.inf
    ev = expected_value

    def slope(x: float) -> float:
        return (1.0 - x * x) ** 2 * ev - 2.0 * (f + 2.0 * x + f * x * x)

    cap = max_reserve_fraction
    if slope(cap) >= 0:
        return cap * reserve_usd / 2.0
    lo, hi = 0.0, cap
    x = min(max((ev - 2.0 * f) / 4.0, 0.0), cap)  # the small-u optimum, Newton's start
    for _ in range(60):  # safeguarded Newton: a bisection step whenever Newton leaves the bracket
        value = slope(x)
        if abs(value) < 1e-16:
            break
        if value > 0:
            lo = x
        else:
            hi = x
        if hi - lo < 1e-16:
            break
        derivative = -4.0 * x * (1.0 - x * x) * ev - 2.0 * (2.0 + 2.0 * f * x)
        step = x - value / derivative
        x = step if lo < step < hi else (lo + hi) / 2.0
    return x * reserve_usd / 2.0


class EntrySize(NamedTuple):
    """The intended entry and what the cost model expects of it (all at the decision time)."""

    notional_usd: float  # intended notional at mid price (0 = no entry)
    cost_usd: float  # expected round-trip cost (fee + impact in and out) at that size
    cost_fraction: float  # cost_usd / notional; 2 x fee for a zero notional (the marginal rate)
    net_edge: float  # expected_value - cost_fraction
    net_edge_usd: float  # notional * net_edge
    threshold: float  # cost_fraction + variance premium + regime adjustment
    ok: bool  # worth entering


def size_entry(expected_value: float, abs_q50: float, total_variance: float, equity: float,
               risk_fraction: float, reserve_usd: float | None, params: SizingParams,
               adjustment: float = 0.0) -> EntrySize:
    """The cost-optimal long entry within ``risk_fraction`` of ``equity``, and whether to make it.

    notional = min(:func:`edge_optimal_notional`, risk_fraction x equity). The round trip is
    priced by :func:`q50_assets.lineage.common.costs.round_trip_cost` at THAT size and liquidity, and
    ok = |q50| > threshold (= cost fraction + max(base_threshold, variance_multiplier x
    variance) + ``adjustment``), the net edge is > 0 and worth at least :data:`MIN_EDGE_USD`.
    A NaN expected value or |q50| gives no size; a NaN variance a size (the cost does not depend
    on it) but a NaN threshold and no entry.
    """
    if math.isnan(expected_value) or math.isnan(abs_q50) or math.isnan(equity) or not equity > 0:
        return EntrySize(0.0, 0.0, 2.0 * params.fee_rate, math.nan, 0.0, math.nan, False)
    cap = max(risk_fraction, 0.0) * equity
    notional = min(edge_optimal_notional(expected_value, reserve_usd, params.fee_rate, params.max_reserve_fraction),
                   cap)
    if reserve_usd is not None:
        notional = min(notional, params.max_reserve_fraction * reserve_usd / 2.0)
    if notional > 0:
        cost = round_trip_cost(notional, reserve_usd, params.fee_rate, params.max_reserve_fraction)
        fraction = cost / notional
    else:
        notional, cost, fraction = 0.0, 0.0, 2.0 * params.fee_rate
    net = expected_value - fraction
    # An unknown variance (NaN) leaves the threshold unknown: never an entry.
    premium = math.nan if math.isnan(total_variance) else params.variance_premium(total_variance)
    threshold = fraction + premium + adjustment
    ok = notional > 0 and abs_q50 > threshold and net > 0 and notional * net >= MIN_EDGE_USD
    return EntrySize(notional, cost, fraction, net, notional * net, threshold, bool(ok))


# Decision actions (the ``action`` column of the strategy's decisions).
ACTIONS = ("enter", "add", "keep", "trim", "exit", "none")


class Decision(NamedTuple):
    """One bar's decision. ``target`` = fraction of equity to hold after the fill; NaN = leave the
    position as it is (no order)."""

    target: float
    action: str
    reason: str
    entry: EntrySize | None
    exit_cost_fraction: float


def decide(*, has_signal: bool, long_side: bool, expected_value: float, abs_q50: float, total_variance: float,
           kelly_raw: float, regime_multiplier: float, threshold_adjustment: float, equity: float,
           held_value: float, reserve_usd: float | None, params: SizingParams) -> Decision:
    """The path-dependent decision at one bar close: enter, add, keep, trim or exit.

    Entering pays fee + impact, holding pays nothing, so a held position is KEPT while its
    expected return is above minus the cost of leaving it (not while it clears the entry
    threshold), and EXITED when the edge has reversed beyond that cost, when the regime forbids
    holding (multiplier 0) or when no current signal exists (no information, no risk). Flat: enter
    when :func:`size_entry` says so (long side only: spot, no borrowing). Held: add up to the
    entry size when that is larger than the position, trim to ``max_position_size`` when the
    position has grown beyond it, else keep. The rebalance band (``min_trade_fraction``) is
    applied where the order is scheduled (:mod:`q50_assets.lineage.backtest.strategy`), to adds, trims
    and exits alike.
    """
    if held_value > 0:
        exit_cost = trade_cost(held_value, False, reserve_usd, params.fee_rate, params.max_reserve_fraction).fraction
        if not has_signal:
            return Decision(0.0, "exit", "no current signal", None, exit_cost)
        if not regime_multiplier > 0:
            return Decision(0.0, "exit", "regime forbids holding", None, exit_cost)
        if not expected_value >= -exit_cost:  # NaN exits too
            return Decision(0.0, "exit", "edge reversed beyond the exit cost", None, exit_cost)
        budget = risk_budget(kelly_raw, regime_multiplier, params)
        entry = size_entry(expected_value, abs_q50, total_variance, equity, budget, reserve_usd, params,
                           threshold_adjustment) if long_side else None
        if entry is not None and entry.ok and entry.notional_usd > held_value:
            return Decision(entry.notional_usd / equity, "add", "", entry, exit_cost)
        if held_value > params.max_position_size * equity:
            return Decision(params.max_position_size, "trim", "above max_position_size", entry, exit_cost)
        return Decision(math.nan, "keep", "", entry, exit_cost)
    if not has_signal:
        return Decision(math.nan, "none", "no current signal", None, math.nan)
    if not long_side:
        return Decision(math.nan, "none", "signal not long", None, math.nan)
    if not regime_multiplier > 0:
        return Decision(math.nan, "none", "regime forbids new risk", None, math.nan)
    budget = risk_budget(kelly_raw, regime_multiplier, params)
    entry = size_entry(expected_value, abs_q50, total_variance, equity, budget, reserve_usd, params,
                       threshold_adjustment)
    if entry.ok:
        return Decision(entry.notional_usd / equity, "enter", "", entry, math.nan)
    return Decision(math.nan, "none", "no edge after costs at the intended size", entry, math.nan)


__all__ = [
    "ACTIONS",
    "DEFAULT_KELLY_FRACTION",
    "Decision",
    "EntrySize",
    "MIN_EDGE_USD",
    "SizingParams",
    "decide",
    "edge_optimal_notional",
    "kelly_fraction_raw",
    "kelly_strength",
    "positive_part_mean",
    "risk_budget",
    "size_entry",
]
