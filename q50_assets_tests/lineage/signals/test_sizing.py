"""Tests of q50_assets.lineage.signals.sizing: Kelly, risk budget, cost-optimal size and the hold/exit rule, by hand."""

import math

import numpy as np
import pytest

from q50_assets.lineage.common.costs import round_trip_cost, trade_cost
from q50_assets.lineage.signals.rules import prob_up_piecewise
from q50_assets.lineage.signals.sizing import (SizingParams, decide, edge_optimal_notional, kelly_fraction_raw,
                                        kelly_strength, positive_part_mean, risk_budget, size_entry)


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


def test_kelly_strength_cap():
    assert kelly_strength(0.7, -0.01, 0.01, 0.03, cap=5.0) == 5.0  # 0.5 * 87.5 capped at 5
    assert kelly_strength(0.51, -0.02, 0.0, 0.02, cap=5.0) == pytest.approx(0.5 * 0.02 / 0.012)
    with pytest.raises(ValueError):
        kelly_strength(0.7, -0.01, 0.01, 0.03, cap=0.0)


P = SizingParams()


def test_risk_budget_and_max_position_size_binds():
    # base 0.1 x multiplier 1 x half Kelly x f*: one fractional-Kelly unit holds the base size.
    assert risk_budget(2.0, 1.0, P) == pytest.approx(0.1)
    assert risk_budget(4.0, 0.5, P) == pytest.approx(0.1)
    # Hourly forecasts have f* in the tens: the cap binds.
    assert risk_budget(87.5, 1.0, P) == 0.5
    assert risk_budget(87.5, 1.0, SizingParams(max_position_size=0.3)) == 0.3
    assert risk_budget(math.inf, 0.6, P) == 0.5
    for kelly, mult in ((-1.0, 1.0), (0.0, 1.0), (np.nan, 1.0), (50.0, 0.0), (50.0, -1.0)):
        assert risk_budget(kelly, mult, P) == 0.0


def test_edge_optimal_notional_is_the_maximum_of_edge_minus_round_trip():
    for ev in (0.006, 0.014, 0.05, 0.3, 2.0):
        for reserve in (2_000.0, 50_000.0, 1e7):
            n = edge_optimal_notional(ev, reserve, 0.0025, 0.1)
            grid = np.linspace(0.0, 0.1 * reserve / 2, 4001)
            edge = grid * ev - np.array([round_trip_cost(g, reserve, 0.0025, 0.1) for g in grid])
            assert n * ev - round_trip_cost(n, reserve, 0.0025, 0.1) >= edge.max() - 1e-9 * reserve
            assert 0 < n <= 0.1 * reserve / 2
    # First order: n* ~ Y (ev - 2f) / 4 -- a 1.4 % forecast in a 50 000 USD pool: ~56 USD.
    assert edge_optimal_notional(0.014, 50_000.0, 0.0025, 0.1) == pytest.approx(56.25, rel=1e-3)
    assert edge_optimal_notional(0.005, 50_000.0, 0.0025, 0.1) == 0.0  # only pays its fees
    assert edge_optimal_notional(0.004, 50_000.0, 0.0025, 0.1) == 0.0
    assert edge_optimal_notional(0.014, None, 0.0025, 0.1) == math.inf  # no impact: other limits bind
    assert edge_optimal_notional(5.0, 50_000.0, 0.0025, 0.1) == pytest.approx(2_500.0)  # the reserve cap


def test_size_entry_prices_the_round_trip_at_the_intended_size():
    e = size_entry(0.014, 0.014, 1e-4, 10_000.0, 0.5, 50_000.0, P)
    assert e.ok and e.notional_usd == pytest.approx(56.25, rel=1e-3)
    assert e.cost_usd == pytest.approx(round_trip_cost(e.notional_usd, 50_000.0, 0.0025, 0.1))
    assert e.cost_fraction == pytest.approx(e.cost_usd / e.notional_usd)
    assert e.net_edge == pytest.approx(0.014 - e.cost_fraction) and e.net_edge_usd == pytest.approx(
        e.notional_usd * e.net_edge)
    assert e.threshold == pytest.approx(e.cost_fraction + 1e-4)
    # The same forecast sized at the cap (5 000 USD) would cost far more than it earns.
    assert round_trip_cost(5_000.0, 50_000.0, 0.0025, 0.1) / 5_000.0 > 0.014
    # Deep pool: the risk budget binds, so max_position_size decides the size.
    deep = size_entry(0.014, 0.014, 1e-4, 10_000.0, 0.3, 1e12, P)
    assert deep.notional_usd == pytest.approx(3_000.0) and deep.ok
    # A regime adjustment or variance premium can block; so can an edge under a cent.
    assert not size_entry(0.014, 0.014, 1e-4, 10_000.0, 0.5, 50_000.0, P, adjustment=0.01).ok
    assert not size_entry(0.014, 0.014, 0.01, 10_000.0, 0.5, 50_000.0, P).ok
    tiny = size_entry(0.0051, 0.02, 0.0, 10_000.0, 0.5, 50_000.0, P)
    assert tiny.notional_usd > 0 and tiny.net_edge > 0 and tiny.net_edge_usd < 0.01 and not tiny.ok
    unknown_var = size_entry(0.014, 0.014, np.nan, 10_000.0, 0.5, 50_000.0, P)
    assert unknown_var.notional_usd > 0 and math.isnan(unknown_var.threshold) and not unknown_var.ok
    assert not size_entry(np.nan, 0.014, 1e-4, 10_000.0, 0.5, 50_000.0, P).ok


def _decide(**kw):
    base = dict(has_signal=True, long_side=True, expected_value=0.014, abs_q50=0.014, total_variance=1e-4,
                kelly_raw=80.0, regime_multiplier=1.0, threshold_adjustment=0.0, equity=10_000.0,
                held_value=0.0, reserve_usd=50_000.0, params=P)
    return decide(**{**base, **kw})


def test_decide_enter_keep_add_trim_exit():
    enter = _decide()
    assert enter.action == "enter" and enter.target == pytest.approx(enter.entry.notional_usd / 10_000.0)
    # Holding: a forecast far below the entry threshold but above minus the exit cost keeps the
    # position (entering pays the costs, holding pays nothing).
    keep = _decide(held_value=56.0, expected_value=-0.001, abs_q50=0.0)
    assert keep.action == "keep" and math.isnan(keep.target)
    assert keep.exit_cost_fraction == pytest.approx(trade_cost(56.0, False, 50_000.0, 0.0025, 0.1).fraction)
    assert keep.exit_cost_fraction > 0.001
    exit_ = _decide(held_value=56.0, expected_value=-0.01)
    assert exit_.action == "exit" and exit_.target == 0.0 and "reversed" in exit_.reason
    assert _decide(held_value=56.0, regime_multiplier=0.0).action == "exit"
    assert _decide(held_value=56.0, has_signal=False).action == "exit"
    add = _decide(held_value=20.0)
    assert add.action == "add" and add.target * 10_000.0 > 20.0
    trim = _decide(held_value=6_000.0, expected_value=0.0, abs_q50=0.0)
    assert trim.action == "trim" and trim.target == 0.5
    # Flat: nothing without a long signal, a regime or an edge after costs.
    assert _decide(long_side=False).action == "none"
    assert _decide(regime_multiplier=0.0).action == "none"
    assert _decide(has_signal=False).action == "none"
    assert _decide(expected_value=0.004, abs_q50=0.004).action == "none"
