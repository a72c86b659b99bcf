"""Tests of q50_assets.lineage.backtest.horizon: the q50_horizon rule as a pure function of the signals
(entry on H x E[r] net of the round trip at the intended size, hold H bars, exit), its arithmetic by
hand, and that a target at a bar uses only what was known at that bar's close."""

import math

import numpy as np
import pandas as pd
import pytest

from q50_assets.lineage.backtest.horizon import horizon_expected_return, horizon_schedule
from q50_assets.lineage.common.costs import ReserveSeries, round_trip_cost
from q50_assets.lineage.signals.sizing import SizingParams, edge_optimal_notional

T0 = pd.Timestamp("2025-03-01", tz="UTC")
H1 = pd.Timedelta(hours=1)
SIZING = SizingParams(fee_rate=0.0025, max_reserve_fraction=0.1, base_position_size=0.1, max_position_size=0.5)
CAPITAL = 10_000.0


def _signals(q50, width=0.01, late=()):
    q50 = np.asarray(q50, dtype="float64")
    idx = pd.DatetimeIndex([T0 + i * H1 for i in range(len(q50))], name="open_time")
    known = idx + H1
    known = known.where(~np.isin(np.arange(len(q50)), list(late)), known + 2 * H1)
    return pd.DataFrame({"q10": q50 - width, "q50": q50, "q90": q50 + width, "known_at": known}, index=idx)


def _schedule(signals, opens=None, **kw):
    args = dict(bar=H1, holding_bars=4, risk_premium=0.0, capital_usd=CAPITAL, sizing=SIZING,
                reserves=ReserveSeries(None, fallback_usd=200_000.0))
    args.update(kw)
    return horizon_schedule(signals, signals.index if opens is None else opens, **args)


def test_horizon_expected_return_scales_the_one_bar_forecast():
    assert horizon_expected_return(0.002, 8) == pytest.approx(0.016)
    np.testing.assert_allclose(horizon_expected_return([0.001, -0.003], 3), [0.003, -0.009])
    with pytest.raises(ValueError, match="holding_bars"):
        horizon_expected_return(0.001, 0)


def test_entry_when_the_horizon_return_clears_the_round_trip_at_the_intended_size():
    # E[r] = q50 (symmetric interval): 0.002 x 4 bars = 0.8 % beats a ~0.55 % round trip; 0.001 x 4 does not.
    s = _schedule(_signals([0.002, 0.001]))
    first, second = s.iloc[0], s.iloc[1]
    assert first["qualifies"] and first["action"] == "enter"
    reserve = 200_000.0
    notional = min(edge_optimal_notional(0.008, reserve, 0.0025, 0.1), SIZING.max_position_size * CAPITAL)
    assert first["intended_notional_usd"] == pytest.approx(notional)
    cost = round_trip_cost(notional, reserve, 0.0025, 0.1) / notional
    assert first["cost_fraction"] == pytest.approx(cost)
    assert first["net_edge"] == pytest.approx(0.008 - cost)
    assert first["target"] == pytest.approx(notional / CAPITAL)
    assert first["reserve_usd"] == reserve and first["reserve_source"] == "fallback"
    assert not second["qualifies"] and second["action"] == "" and math.isnan(second["target"])
    # A one-bar rule would not have entered: 0.2 % < the round trip at any size (>= 2 fees = 0.5 %).
    assert 0.002 < 2 * SIZING.fee_rate


def test_enters_on_a_negative_median_when_the_expected_return_is_positive():
    # q50 < 0 but a long right tail: E[r] = 0.3 q10 + 0.4 q50 + 0.3 q90 > 0 (today's q50 rule never enters here).
    sig = pd.DataFrame({"q10": [-0.004], "q50": [-0.0005], "q90": [0.012], "known_at": [T0 + H1]},
                       index=pd.DatetimeIndex([T0], name="open_time"))
    s = _schedule(sig, holding_bars=8)
    er = 0.3 * -0.004 + 0.4 * -0.0005 + 0.3 * 0.012
    assert s["er_1bar"].iloc[0] == pytest.approx(er) and s["er_horizon"].iloc[0] == pytest.approx(8 * er)
    assert s["action"].iloc[0] == "enter" and s["target"].iloc[0] > 0


def test_risk_premium_is_a_stated_hurdle_and_the_width_is_not_counted_twice():
    base = _schedule(_signals([0.002]))
    assert base["qualifies"].iloc[0]
    margin = base["net_edge"].iloc[0]
    assert not _schedule(_signals([0.002]), risk_premium=margin + 1e-4)["qualifies"].iloc[0]
    assert _schedule(_signals([0.002]), risk_premium=margin / 2)["qualifies"].iloc[0]
    # A wider (symmetric) interval leaves E[r] and so the decision unchanged: no variance premium.
    wide = _schedule(_signals([0.002], width=0.05))
    assert wide["qualifies"].iloc[0] and wide["net_edge"].iloc[0] == pytest.approx(margin)


def test_hold_h_bars_from_the_last_qualifying_signal_then_exit():
    q = [0.0] * 20
    q[2] = q[5] = 0.003  # entry at bar 2, extended at bar 5 (inside the 4-bar hold)
    q[15] = 0.004  # a new entry later
    s = _schedule(_signals(q))
    actions = s["action"]
    assert actions.iloc[2] == "enter" and actions.iloc[5] == "extend"
    # The hold ends 4 bars after the last qualifying close: exit decided at bar 9, nothing before.
    assert actions.iloc[9] == "exit" and s["target"].iloc[9] == 0
    assert (actions.iloc[[3, 4, 6, 7, 8]] == "").all() and s["target"].iloc[[3, 4, 6, 7, 8]].isna().all()
    # The extension raises the target only when it sizes larger (it never trims).
    assert math.isnan(s["target"].iloc[5]) or s["target"].iloc[5] > s["target"].iloc[2]
    assert actions.iloc[15] == "enter" and actions.iloc[19] == "exit"
    assert set(actions) <= {"enter", "extend", "exit", ""}


def test_exit_at_the_first_bar_that_exists_after_the_hold():
    q = [0.0] * 12
    q[1] = 0.003
    sig = _signals(q)
    opens = sig.index.delete([5, 6])  # the bar the hold ends on has no swaps: no decision can be made there
    s = _schedule(sig, opens=opens)
    assert s.loc[sig.index[1], "action"] == "enter"
    assert s.loc[sig.index[7], "action"] == "exit" and (s["action"] == "exit").sum() == 1


def test_a_signal_known_after_its_bar_closed_counts_as_none():
    s = _schedule(_signals([0.003, 0.0], late=[0]))
    assert not s["qualifies"].iloc[0] and s["target"].isna().all() and np.isnan(s["er_1bar"].iloc[0])


def test_no_look_ahead_a_prefix_gives_the_same_schedule():
    rng = np.random.default_rng(11)
    sig = _signals(rng.normal(0.0005, 0.002, 300), width=0.004)
    full = _schedule(sig, holding_bars=6)
    assert (full["action"] == "enter").sum() >= 3 and (full["action"] == "exit").sum() >= 2
    for cut in (40, 117, 250):
        part = _schedule(sig.iloc[:cut], holding_bars=6)
        pd.testing.assert_frame_equal(part, full.iloc[:cut])
    # Changing the future changes nothing before it.
    changed = sig.copy()
    changed.iloc[200:, :3] = changed.iloc[200:, :3] * -3.0
    pd.testing.assert_frame_equal(_schedule(changed, holding_bars=6).iloc[:200], full.iloc[:200])


def test_bad_input_is_named():
    sig = _signals([0.001, 0.002])
    with pytest.raises(ValueError, match="lack columns"):
        _schedule(sig.drop(columns="known_at"))
    with pytest.raises(ValueError, match="duplicates"):
        _schedule(pd.concat([sig, sig.iloc[:1]]))
    with pytest.raises(ValueError, match="risk_premium"):
        _schedule(sig, risk_premium=-0.01)
