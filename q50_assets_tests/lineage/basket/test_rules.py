"""The basket's pure rules: who is a member at each bar, ties, the schedule, the cost filter, no
look-ahead, and a yardstick that reads no forecast column."""

import numpy as np
import pandas as pd
import pytest

from q50_assets.lineage.basket.rules import (FORECAST, VOLATILITY, BasketConfig, basket_membership, candidate_panel,
                                             first_basket_close, target_schedule)
from q50_assets.settings import Settings

H = pd.Timedelta(hours=1)
T0 = pd.Timestamp("2025-03-01", tz="UTC")  # a bar number since the epoch divisible by 2, 3, 4, 6


def config(**basket) -> BasketConfig:
    values = {"top_k": 2, "min_candidate_pools": 3, "rebalance_bars": 2, "cost_filter": False, **basket}
    return BasketConfig.of(Settings.model_validate({"basket": values}))


def frame(opens, q50, vol, spread=0.02, reserve=1e9, known_late=()):
    opens = pd.DatetimeIndex(opens, name="open_time")
    q50 = np.asarray(q50, dtype=float)
    known = opens + H
    known = known.where(~opens.isin(list(known_late)), known + H)
    return pd.DataFrame({"q10": q50 - spread / 2, "q50": q50, "q90": q50 + spread / 2, "vol_risk": vol,
                         "known_at": known, "reserve_usd": reserve}, index=opens)


def hand_panel():
    """Four pools over 6 bars: E[r] = q50 (symmetric interval)."""
    opens = [T0 + i * H for i in range(6)]
    return {
        "pool_c": frame(opens, [0.03, 0.03, 0.00, 0.00, 0.01, 0.01], [4e-4] * 6),
        "pool_a": frame(opens, [0.03, 0.03, 0.01, 0.01, 0.02, 0.02], [1e-4] * 6),  # ties pool_c at first
        "pool_b": frame(opens, [0.01, 0.01, 0.05, 0.05, 0.03, 0.03], [3e-4] * 6),
        "pool_d": frame(opens[:3], [0.00, 0.00, 0.00], [9e-4] * 3),  # stops after 3 bars
    }


def members_at(m, t):
    row = m.members.loc[t]
    return sorted(row.index[row > 0])


def test_membership_on_a_hand_built_panel_ties_by_pool_id():
    cfg = config()
    panel = candidate_panel(hand_panel(), cfg)
    forecast = basket_membership(panel, cfg, FORECAST)
    closes = [T0 + (i + 1) * H for i in range(6)]
    # Bar 1 closes at T0 + 1h: not a rebalance bar (odd bar number): no basket yet.
    assert members_at(forecast, closes[0]) == []
    # T0 + 2h: 4 candidates; a and c tie at 0.03 ahead of b (0.01) and d (0.00): both in, a ranked first.
    assert members_at(forecast, closes[1]) == ["pool_a", "pool_c"]
    assert members_at(forecast, closes[2]) == ["pool_a", "pool_c"]  # held between rebalances
    # T0 + 4h: only 3 candidates left (d stopped) = the minimum: b 0.05, a 0.01, c 0.00.
    assert members_at(forecast, closes[3]) == ["pool_a", "pool_b"]
    assert members_at(forecast, closes[5]) == ["pool_a", "pool_b"]  # T0 + 6h: b 0.03, a 0.02, c 0.01
    vol = basket_membership(panel, cfg, VOLATILITY)
    assert members_at(vol, closes[1]) == ["pool_c", "pool_d"]  # the two most volatile
    assert members_at(vol, closes[3]) == ["pool_b", "pool_c"]
    assert forecast.decisions.loc[closes[1], "candidates"] == 4
    # One slot and a tie at the boundary (a and c both 0.03): the lower pool id wins, every time.
    one = config(top_k=1)
    assert members_at(basket_membership(candidate_panel(hand_panel(), one), one, FORECAST), closes[1]) == ["pool_a"]
    reordered = dict(reversed(list(hand_panel().items())))
    assert members_at(basket_membership(candidate_panel(reordered, one), one, FORECAST), closes[1]) == ["pool_a"]
    assert first_basket_close({"f": forecast, "v": vol}) == closes[1]


def test_too_few_candidates_form_no_basket_and_late_signals_are_counted():
    cfg = config(min_candidate_pools=4)
    signals = hand_panel()
    signals["pool_b"] = frame(signals["pool_b"].index, signals["pool_b"]["q50"], 3e-4, known_late=[T0 + 1 * H])
    panel = candidate_panel(signals, cfg)
    assert panel.not_candidates["known_after_bar_close"] == 1
    forecast = basket_membership(panel, cfg, FORECAST)
    # At T0 + 2h pool_b's signal was known too late: 3 candidates < 4, no basket at all after that.
    assert forecast.members.to_numpy().sum() == 0
    assert list(forecast.decisions["candidates"]) == [3, 3, 3]


def test_cost_filter_leaves_a_slot_empty_when_the_edge_does_not_pay_the_round_trip():
    signals = hand_panel()
    # 0.5 % fee per side, no impact (huge reserve): the round trip costs about 1 %; held for 2 bars,
    # E[r] 0.03 -> 6 % clears it, 0.01 -> 2 % clears, 0.00 does not.
    cfg = config(cost_filter=True, top_k=3).model_copy(update={"swap_fee": 0.005})
    panel = candidate_panel(signals, cfg)
    forecast = basket_membership(panel, cfg, FORECAST)
    t = T0 + 2 * H
    assert members_at(forecast, t) == ["pool_a", "pool_b", "pool_c"]  # 0.03, 0.03, 0.01: every edge pays
    assert forecast.decisions.loc[t, "filtered_out"] == ""
    t4 = T0 + 4 * H  # b 0.05, a 0.01, c 0.00 -> c is filtered out
    assert members_at(forecast, t4) == ["pool_a", "pool_b"]
    assert forecast.decisions.loc[t4, "filtered_out"] == "pool_c"


def _random_signals(seed: int, pools: int = 12, bars: int = 120):
    rng = np.random.default_rng(seed)
    opens = [T0 + i * H for i in range(bars)]
    out = {}
    for p in range(pools):
        start = int(rng.integers(0, 20))
        q50 = rng.normal(0, 0.01, bars - start)
        out[f"pool_{p:02d}"] = frame(opens[start:], q50, rng.uniform(1e-5, 1e-3, bars - start),
                                     spread=float(rng.uniform(0.01, 0.05)))
    return out


@pytest.mark.parametrize("basket", [FORECAST, VOLATILITY])
def test_membership_at_t_is_unchanged_when_later_bars_are_appended(basket):
    cfg = config(top_k=3, min_candidate_pools=5, rebalance_bars=3)
    full = _random_signals(3)
    cut = T0 + 70 * H
    prefix = {p: f[f.index < cut] for p, f in full.items()}
    whole = basket_membership(candidate_panel(full, cfg), cfg, basket).members
    early = basket_membership(candidate_panel(prefix, cfg), cfg, basket).members
    assert len(early) > 30 and early.to_numpy().sum() > 0
    pd.testing.assert_frame_equal(whole.loc[early.index, early.columns], early)


def test_the_yardstick_reads_no_forecast_column():
    cfg = config(top_k=3, min_candidate_pools=5, rebalance_bars=3, cost_filter=True)
    signals = _random_signals(5)
    rng = np.random.default_rng(11)
    perturbed = {}
    for p, f in signals.items():
        g = f.copy()
        shift = rng.normal(0, 0.05, len(g))
        g["q10"], g["q50"], g["q90"] = g["q10"] + shift, g["q50"] + shift, g["q90"] + 2 * abs(shift) + shift
        perturbed[p] = g
    vol = basket_membership(candidate_panel(signals, cfg), cfg, VOLATILITY).members
    vol_after = basket_membership(candidate_panel(perturbed, cfg), cfg, VOLATILITY).members
    pd.testing.assert_frame_equal(vol, vol_after)
    forecast = basket_membership(candidate_panel(signals, cfg), cfg, FORECAST).members
    forecast_after = basket_membership(candidate_panel(perturbed, cfg), cfg, FORECAST).members
    assert not forecast.equals(forecast_after)  # the forecast basket does read them


def test_bad_signals_name_the_pool_and_targets_are_stamped_at_the_decision_bar_open():
    cfg = config()
    bad = hand_panel()
    bad["pool_x"] = bad["pool_a"].drop(columns=["vol_risk"])
    with pytest.raises(ValueError, match="pool_x.*vol_risk"):
        candidate_panel(bad, cfg)
    forecast = basket_membership(candidate_panel(hand_panel(), cfg), cfg, FORECAST)
    targets = target_schedule(forecast.members["pool_a"], H, T0 + 2 * H)
    assert targets.index[0] == T0 + H and targets.iloc[0] == 1.0  # decided at the close of the bar opened at T0+1h
