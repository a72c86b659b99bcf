"""Position sizing: Kelly strength of a long bet, and the target fraction of equity to hold.

Pure numpy. Two steps, kept apart so each can be checked by hand:

1. :func:`kelly_strength` -> a number in [0, 1] saying how strongly the quantile forecast
   supports a long bet (fractional Kelly, capped at "all in, no leverage").
2. :func:`target_fraction` -> the fraction of equity to hold in the token, combining the
   side of the signal, that strength, a regime multiplier and the risk limits
   (``base_position_size``, ``max_position_size`` of ``config.yaml``'s ``risk_management``).

The return distribution is the one of :mod:`q50_assets.research.signals` (its module
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
positive, and the strength saturates at 1 -- it acts as a gate with a linear ramp only for
marginal edges, i.e. where E[r] < b_win * b_loss / kelly_fraction. Risk is then limited by
``base_position_size`` / ``max_position_size``, not by Kelly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from q50_assets.research.signals import prob_up_piecewise

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


def kelly_strength(prob_up, q10, q50, q90, kelly_fraction: float = DEFAULT_KELLY_FRACTION):
    """Strength of a long bet in [0, 1]: ``clip(kelly_fraction * f*, 0, 1)``.

    f* from :func:`kelly_fraction_raw`. A NaN input gives 0 (no information, no bet).
    Returns a float for scalar inputs, an ndarray otherwise.
    """
    if not np.isfinite(kelly_fraction) or kelly_fraction <= 0:
        raise ValueError(f"kelly_fraction must be a finite number > 0, got {kelly_fraction!r}")
    f = kelly_fraction_raw(prob_up, q10, q50, q90)
    with np.errstate(invalid="ignore"):
        strength = np.clip(kelly_fraction * f, 0.0, 1.0)
    strength = np.where(np.isnan(strength), 0.0, strength)
    return float(strength) if strength.ndim == 0 else strength


def target_fraction(side, strength, regime_multiplier, base_position_size: float = 0.1,
                    max_position_size: float = 0.5):
    """Fraction of equity to hold in the token (spot, long only).

    ``side == "long"``: ``min(max_position_size, base_position_size * regime_multiplier *
    strength)``, floored at 0. So strength 1 with regime multiplier 1 holds exactly
    ``base_position_size`` of equity (0.1 with the project config); the regime multiplier
    scales that up or down (e.g. 2 -> 0.2) and ``max_position_size`` (0.5) is the hard cap.
    ``"short"`` and ``"hold"`` (and anything else) -> 0: spot DEX, no borrowing is modelled,
    so a short signal means "be flat". NaN or infinite strength or multiplier -> 0.

    Vectorised over array-likes (``side`` may be an array of strings); a float for scalars.
    """
    for name, value in (("base_position_size", base_position_size), ("max_position_size", max_position_size)):
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    side_arr = np.asarray(side, dtype=object)
    strength_arr = np.asarray(strength, dtype="float64")
    mult_arr = np.asarray(regime_multiplier, dtype="float64")
    side_arr, strength_arr, mult_arr = np.broadcast_arrays(side_arr, strength_arr, mult_arr)
    is_long = np.vectorize(lambda s: s == "long", otypes=[bool])(side_arr) if side_arr.size else side_arr.astype(bool)
    with np.errstate(invalid="ignore"):
        raw = base_position_size * mult_arr * strength_arr
        frac = np.minimum(max_position_size, np.maximum(raw, 0.0))
    frac = np.where(is_long & np.isfinite(raw), frac, 0.0)
    return float(frac) if frac.ndim == 0 else frac


DECISION_COLUMNS: dict[str, str] = {
    "side": "Signal side ('long' / 'short' / 'hold') as the signal stage decided it.",
    "regime": "Regime label known at the signal's known_at (as-of backward); 'unknown_unknown' if none.",
    "position_multiplier": "The regime's size multiplier (0 when no regime is known yet).",
    "threshold_adjustment": "The regime's addition to the signal threshold (0 when no regime is known).",
    "adjusted_threshold": "threshold + threshold_adjustment.",
    "strength": "kelly_strength(prob_up, q10, q50, q90, kelly_fraction).",
    "decision": "'long' iff side == 'long' and abs_q50 > adjusted_threshold and position_multiplier > 0; "
    "else 'flat' (spot: short signals mean flat).",
    "target": "Fraction of equity to hold after this bar's close: target_fraction(decision, strength, "
    "position_multiplier, base_position_size, max_position_size).",
    "known_at": "When the decision is known: max(signal known_at, regime known_at) - never before the bar's close.",
}


def decide_targets(signals: pd.DataFrame, regimes: pd.DataFrame, *, base_position_size: float,
                   max_position_size: float, kelly_fraction: float = DEFAULT_KELLY_FRACTION) -> pd.DataFrame:
    """One pool's signals + regime labels -> the target position at each signal bar's close.

    ``signals``: index open_time, columns q10, q50, q90, prob_up, abs_q50, threshold, side,
    known_at (research/signals.py). ``regimes``: index open_time, columns regime,
    position_multiplier, threshold_adjustment, known_at (research/regimes.py). Each signal is
    joined to the latest regime KNOWN at the signal's known_at (never a later one), so the
    decision uses only what was known at that bar's close. Columns: :data:`DECISION_COLUMNS`.
    """
    missing = [c for c in ("q10", "q50", "q90", "prob_up", "abs_q50", "threshold", "side", "known_at")
               if c not in signals.columns]
    missing += [f"regimes.{c}" for c in ("regime", "position_multiplier", "threshold_adjustment", "known_at")
                if c not in regimes.columns]
    if missing:
        raise ValueError(f"decide_targets: missing columns {missing}")
    left = signals[["q10", "q50", "q90", "prob_up", "abs_q50", "threshold", "side", "known_at"]].copy()
    left["open_time"] = left.index
    right = regimes[["regime", "position_multiplier", "threshold_adjustment", "known_at"]].rename(
        columns={"known_at": "regime_known_at"}).sort_values("regime_known_at")
    right = right[right["regime_known_at"].notna()]
    merged = pd.merge_asof(left.sort_values("known_at"), right, left_on="known_at", right_on="regime_known_at",
                           direction="backward").set_index("open_time").sort_index()
    merged.index.name = signals.index.name or "open_time"
    no_regime = merged["regime"].isna()
    merged.loc[no_regime, "regime"] = "unknown_unknown"
    merged["position_multiplier"] = merged["position_multiplier"].fillna(0.0)
    merged["threshold_adjustment"] = merged["threshold_adjustment"].fillna(0.0)
    merged["adjusted_threshold"] = merged["threshold"] + merged["threshold_adjustment"]
    merged["strength"] = kelly_strength(merged["prob_up"].to_numpy(), merged["q10"].to_numpy(),
                                        merged["q50"].to_numpy(), merged["q90"].to_numpy(), kelly_fraction)
    go_long = ((merged["side"] == "long") & (merged["abs_q50"] > merged["adjusted_threshold"])
               & (merged["position_multiplier"] > 0))
    merged["decision"] = np.where(go_long, "long", "flat")
    merged["target"] = target_fraction(merged["decision"].to_numpy(), merged["strength"].to_numpy(),
                                       merged["position_multiplier"].to_numpy(), base_position_size,
                                       max_position_size)
    merged["known_at"] = merged[["known_at", "regime_known_at"]].max(axis=1)
    return merged[list(DECISION_COLUMNS)]


__all__ = [
    "DECISION_COLUMNS",
    "decide_targets",
    "DEFAULT_KELLY_FRACTION",
    "kelly_fraction_raw",
    "kelly_strength",
    "positive_part_mean",
    "target_fraction",
]
