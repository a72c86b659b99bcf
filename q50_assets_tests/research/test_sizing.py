"""Tests of q50_assets.research.sizing: Kelly strength and target fraction, by hand."""

import math

import numpy as np
import pytest

from q50_assets.research.signals import prob_up_piecewise
from q50_assets.research.sizing import kelly_fraction_raw, kelly_strength, positive_part_mean, target_fraction


def _expect(q10, q50, q90, f, n=200_000):
    """E[f(r)] under the signals distribution, numerically (midpoint rule)."""
    total = 0.1 * f(np.float64(q10)) + 0.1 * f(np.float64(q90))
    for lo, hi in ((q10, q50), (q50, q90)):
        mids = lo + (np.arange(n) + 0.5) * (hi - lo) / n
        total += 0.4 * np.mean(f(mids))
    return float(total)


def test_positive_part_by_hand():
    # q = (-0.01, 0.01, 0.03): 0.4 * E[max(U,0)] on [-0.01, 0.01] = 0.4 * 0.01^2 / (2 * 0.02) = 0.001,
    # 0.4 * mean of [0.01, 0.03] = 0.008, 0.1 * 0.03 = 0.003 -> 0.012.
    assert positive_part_mean(-0.01, 0.01, 0.03) == pytest.approx(0.012)
    # Negative part: 0.1 * 0.01 + 0.4 * 0.0025 = 0.002.
    assert positive_part_mean(-0.03, -0.01, 0.01) == pytest.approx(0.002)
    assert positive_part_mean(0.01, 0.02, 0.04) == pytest.approx(0.1 * 0.01 + 0.4 * 0.015 + 0.4 * 0.03 + 0.1 * 0.04)
    assert positive_part_mean(-0.03, -0.02, -0.01) == 0.0
    assert positive_part_mean(0.0, 0.0, 0.0) == 0.0


def test_positive_part_matches_numerical_integration():
    rng = np.random.default_rng(0)
    for q in np.sort(rng.normal(0, 0.02, size=(20, 3)), axis=1):
        assert positive_part_mean(*q) == pytest.approx(_expect(*q, lambda r: np.maximum(r, 0.0)), abs=1e-9)


def test_kelly_raw_by_hand():
    # p = 0.7 (= prob_up of the distribution), b_win = 0.012 / 0.7, b_loss = 0.002 / 0.3:
    # f* = 0.7 / (0.002/0.3) - 0.3 / (0.012/0.7) = 105 - 17.5 = 87.5.
    assert prob_up_piecewise(-0.01, 0.01, 0.03) == pytest.approx(0.7)
    assert kelly_fraction_raw(0.7, -0.01, 0.01, 0.03) == pytest.approx(87.5)
    # Symmetric distribution, its own p = 0.5: no edge.
    assert kelly_fraction_raw(0.5, -0.02, 0.0, 0.02) == pytest.approx(0.0, abs=1e-12)
    # Same distribution with a calibrated p = 0.51: b_win = b_loss = 0.006 / 0.5 = 0.012,
    # f* = 0.51 / 0.012 - 0.49 / 0.012 = 1.6667.
    assert kelly_fraction_raw(0.51, -0.02, 0.0, 0.02) == pytest.approx(0.02 / 0.012)


def test_kelly_raw_maximises_log_growth():
    p, q = 0.55, (-0.02, 0.001, 0.018)
    f_star = float(kelly_fraction_raw(p, *q))
    pp = prob_up_piecewise(*q)
    pn = prob_up_piecewise(-q[2], -q[1], -q[0])
    b_win = positive_part_mean(*q) / pp
    b_loss = positive_part_mean(-q[2], -q[1], -q[0]) / pn
    grid = np.linspace(max(f_star - 5, 0), f_star + 5, 20001)
    grid = grid[1 - grid * b_loss > 0]
    growth = p * np.log1p(grid * b_win) + (1 - p) * np.log1p(-grid * b_loss)
    assert grid[np.argmax(growth)] == pytest.approx(f_star, abs=1e-3)


def test_kelly_strength_values():
    assert kelly_strength(0.51, -0.02, 0.0, 0.02) == pytest.approx(0.5 * 0.02 / 0.012)  # 0.8333
    assert kelly_strength(0.51, -0.02, 0.0, 0.02, kelly_fraction=1.0) == 1.0  # clipped
    assert kelly_strength(0.7, -0.01, 0.01, 0.03) == 1.0
    assert kelly_strength(0.5, -0.02, 0.0, 0.02) == 0.0
    assert kelly_strength(0.3, -0.03, -0.01, 0.01) == 0.0  # negative edge -> 0
    assert kelly_strength(1.0, 0.01, 0.02, 0.03) == 1.0  # no downside
    assert kelly_strength(0.0, -0.03, -0.02, -0.01) == 0.0  # no upside
    assert kelly_strength(0.0, 0.0, 0.0, 0.0) == 0.0
    assert kelly_strength(np.nan, -0.01, 0.01, 0.03) == 0.0
    assert kelly_strength(0.7, np.nan, 0.01, 0.03) == 0.0
    assert isinstance(kelly_strength(0.7, -0.01, 0.01, 0.03), float)
    with pytest.raises(ValueError):
        kelly_strength(0.6, -0.01, 0.01, 0.03, kelly_fraction=0.0)


def test_kelly_strength_vectorised_and_bounded():
    rng = np.random.default_rng(1)
    q = np.sort(rng.normal(0.0005, 0.01, size=(500, 3)), axis=1)
    p = prob_up_piecewise(q[:, 0], q[:, 1], q[:, 2])
    s = kelly_strength(p, q[:, 0], q[:, 1], q[:, 2])
    assert s.shape == (500,)
    assert ((s >= 0) & (s <= 1)).all()
    for i in range(0, 500, 50):
        assert s[i] == kelly_strength(p[i], *q[i])
    # With the distribution's own p, f* has the sign of E[r] = 0.3 q10 + 0.4 q50 + 0.3 q90.
    ev = 0.3 * q[:, 0] + 0.4 * q[:, 1] + 0.3 * q[:, 2]
    assert (s[ev < -1e-12] == 0).all()
    assert (s[ev > 1e-12] > 0).all()


def test_target_fraction_by_hand():
    # strength 1, multiplier 1 -> base_position_size.
    assert target_fraction("long", 1.0, 1.0, 0.1, 0.5) == pytest.approx(0.1)
    assert target_fraction("long", 0.5, 2.0, 0.1, 0.5) == pytest.approx(0.1)
    assert target_fraction("long", 0.8, 1.5, 0.2, 0.5) == pytest.approx(0.24)
    assert target_fraction("long", 1.0, 10.0, 0.1, 0.5) == 0.5  # capped
    assert target_fraction("long", 0.0, 1.0) == 0.0
    assert target_fraction("long", 1.0, -1.0) == 0.0  # floored at 0
    assert target_fraction("short", 1.0, 1.0) == 0.0
    assert target_fraction("hold", 1.0, 1.0) == 0.0
    assert target_fraction("long", np.nan, 1.0) == 0.0
    assert target_fraction("long", 1.0, np.nan) == 0.0
    assert target_fraction("long", 1.0, math.inf) == 0.0
    assert isinstance(target_fraction("long", 1.0, 1.0), float)
    with pytest.raises(ValueError):
        target_fraction("long", 1.0, 1.0, base_position_size=-0.1)


def test_target_fraction_vectorised():
    out = target_fraction(np.array(["long", "short", "hold", "long"], dtype=object),
                          np.array([1.0, 1.0, 1.0, np.nan]), np.array([2.0, 2.0, 2.0, 2.0]), 0.1, 0.5)
    assert out.tolist() == pytest.approx([0.2, 0.0, 0.0, 0.0])


def test_decide_targets_uses_the_regime_known_at_the_signal_close_only():
    import pandas as pd

    from q50_assets.research.sizing import decide_targets

    opens = pd.date_range("2025-07-01", periods=4, freq="h", tz="UTC")
    h = pd.Timedelta(hours=1)
    signals = pd.DataFrame({
        "q10": [-0.01, -0.01, -0.01, -0.01], "q50": [0.02, 0.02, 0.02, 0.004], "q90": [0.05] * 4,
        "prob_up": [0.8] * 4, "abs_q50": [0.02, 0.02, 0.02, 0.004], "threshold": [0.006] * 4,
        "side": ["long", "long", "long", "long"], "known_at": opens + h,
    }, index=opens)
    # Regime of bar 1 becomes known only at bar 2's close (late): bar 1 must still use bar 0's.
    regimes = pd.DataFrame({
        "regime": ["medium_ranging", "extreme_ranging", "high_ranging", "medium_ranging"],
        "position_multiplier": [1.0, 0.0, 0.6, 1.0],
        "threshold_adjustment": [0.0, 0.005, 0.015, 0.0],
        "known_at": [opens[0] + h, opens[2] + h, opens[2] + h, opens[3] + h],
    }, index=opens)
    out = decide_targets(signals, regimes, base_position_size=0.1, max_position_size=0.5)
    assert list(out["regime"]) == ["medium_ranging", "medium_ranging", "high_ranging", "medium_ranging"]
    # bar 0, 1: long at base size x 1.0 (strength saturates); bar 2: 0.02 < 0.006 + 0.015 -> flat;
    # bar 3: |q50| 0.004 below the threshold -> flat.
    assert list(out["decision"]) == ["long", "long", "flat", "flat"]
    assert out["target"].tolist() == pytest.approx([0.1, 0.1, 0.0, 0.0])
    assert (out["known_at"] >= signals["known_at"]).all()
    assert out.loc[opens[2], "adjusted_threshold"] == pytest.approx(0.021)
    # No regime known yet -> no new risk.
    none_known = decide_targets(signals, regimes.assign(known_at=opens + 10 * h),
                                base_position_size=0.1, max_position_size=0.5)
    assert (none_known["decision"] == "flat").all() and (none_known["regime"] == "unknown_unknown").all()
