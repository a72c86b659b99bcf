"""Tests of q50_assets.lineage.signals.rules: formulas by hand, invariants, validation, as-of lookup."""

import warnings

import numpy as np
import pandas as pd
import pytest

from q50_assets.lineage.common.costs import ReserveSeries, round_trip_cost
from q50_assets.lineage.signals.rules import (HOLD_REASONS, SIGNAL_COLUMNS, Q50SignalLoader, SignalConfig,
                                         compute_signals, expected_return_piecewise, prob_up_piecewise)

T0 = pd.Timestamp("2025-01-01", tz="UTC")
H = pd.Timedelta(hours=1)


def _frame(quantiles, vol, predicted_at=None):
    """Hourly UTC frame; predicted_at defaults to open_time + 1h (the bar's close)."""
    q = np.asarray(quantiles, dtype=float)
    idx = pd.DatetimeIndex([T0 + i * H for i in range(len(q))], name="open_time")
    pred = pd.DataFrame({"q10": q[:, 0], "q50": q[:, 1], "q90": q[:, 2],
                         "predicted_at": idx + H if predicted_at is None else predicted_at}, index=idx)
    return pred, pd.Series(vol, index=idx, dtype=float)


def _expect(q10, q50, q90, f, n=200_000):
    """E[f(r)] under the stated distribution, numerically: 0.1 point masses at q10 and q90,
    0.4 uniform on each segment (midpoint rule)."""
    total = 0.1 * f(np.float64(q10)) + 0.1 * f(np.float64(q90))
    for lo, hi in ((q10, q50), (q50, q90)):
        mids = lo + (np.arange(n) + 0.5) * (hi - lo) / n
        total += 0.4 * np.mean(f(mids))
    return float(total)


def _random_triples(seed, n):
    rng = np.random.default_rng(seed)
    q = np.sort(rng.normal(0.0, 0.02, size=(n, 3)), axis=1)
    return q[:, 0], q[:, 1], q[:, 2]


# 1. prob_up_piecewise
@pytest.mark.parametrize("q, expected", [
    ((-0.01, 0.02, 0.05), 1 - (0.1 + 0.4 * 0.01 / 0.03)),   # 0 inside [q10, q50]
    ((-0.01, 0.0, 0.05), 0.5),                               # 0 == q50
    ((-0.05, -0.02, 0.01), 1 - (0.5 + 0.4 * 0.02 / 0.03)),  # 0 inside (q50, q90)
    ((0.001, 0.02, 0.05), 1.0),                              # q10 > 0
    ((-0.05, -0.02, -0.001), 0.0),                           # q90 <= 0
    ((-0.05, -0.02, 0.0), 0.0),                              # q90 == 0
    ((0.0, 0.0, 0.0), 0.0),                                  # point mass at 0 is not up
    ((-0.02, -0.02, 0.02), 0.3),                             # degenerate lower segment
    ((-0.02, 0.02, 0.02), 0.7),                              # degenerate upper segment
    ((0.01, 0.01, 0.01), 1.0),
    ((-0.01, -0.01, -0.01), 0.0),
])
def test_prob_up_hand_values_without_warnings(q, expected):
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        got = prob_up_piecewise(*q)
    assert np.isfinite(got) and got == pytest.approx(expected, abs=1e-12)


def test_prob_up_nan_in_nan_out_elementwise():
    got = prob_up_piecewise([np.nan, -0.01, -0.01, -0.01], [0.02, np.nan, 0.02, 0.02], [0.05, 0.05, np.nan, 0.05])
    assert np.isnan(got[:3]).all()
    assert got[3] == pytest.approx(1 - (0.1 + 0.4 * 0.01 / 0.03))


@pytest.mark.parametrize("q", [(-0.03, 0.01, 0.02), (-0.02, -0.02, 0.02), (-0.01, 0.0, 0.0), (0.0, 0.0, 0.0)])
def test_prob_up_monotone_in_a_shift_of_all_quantiles(q):
    shifts = np.linspace(-0.1, 0.1, 4001)
    probs = prob_up_piecewise(q[0] + shifts, q[1] + shifts, q[2] + shifts)
    assert np.all(np.diff(probs) >= -1e-12)
    assert probs[0] == 0.0 and probs[-1] == 1.0


def test_prob_up_above_half_iff_q50_positive_and_matches_the_distribution():
    q10, q50, q90 = _random_triples(0, 300)
    probs = prob_up_piecewise(q10, q50, q90)
    assert np.array_equal(probs > 0.5, q50 > 0) and ((probs >= 0) & (probs <= 1)).all()
    for i in range(0, 300, 30):
        numeric = _expect(q10[i], q50[i], q90[i], lambda r: (r > 0).astype(float))
        assert probs[i] == pytest.approx(numeric, abs=1e-4)


def test_prob_up_counts_mass_at_exactly_zero_as_not_up():
    # q10 = q50 = 0: F(0) = F(q50) = 0.5; q10 = 0 < q50: only the 0.1 point mass sits at 0.
    assert prob_up_piecewise(0.0, 0.0, 0.02) == pytest.approx(0.5)
    assert prob_up_piecewise(0.0, 0.01, 0.02) == pytest.approx(0.9)
    # ...and both are the limits from below, so prob_up has no jump there.
    assert prob_up_piecewise(-1e-12, 0.0, 0.02) == pytest.approx(0.5)
    assert prob_up_piecewise(-1e-12, 0.01, 0.02) == pytest.approx(0.9)


# 2. expected_return_piecewise
def test_expected_return_is_the_weighted_sum_and_the_integral_of_the_distribution():
    q10, q50, q90 = _random_triples(1, 200)
    ev = expected_return_piecewise(q10, q50, q90)
    np.testing.assert_allclose(ev, 0.3 * q10 + 0.4 * q50 + 0.3 * q90, rtol=0, atol=1e-15)
    for i in range(0, 200, 25):
        assert ev[i] == pytest.approx(_expect(q10[i], q50[i], q90[i], lambda r: r), abs=1e-9)
        gain_minus_loss = (_expect(q10[i], q50[i], q90[i], lambda r: np.maximum(r, 0))
                           - _expect(q10[i], q50[i], q90[i], lambda r: np.maximum(-r, 0)))
        assert ev[i] == pytest.approx(gain_minus_loss, abs=1e-6)
    assert expected_return_piecewise(-0.10, 0.02, 0.021) < 0  # skew against q50


# 3. compute_signals on a hand-built frame
ROWS = [
    ((-0.01, 0.02, 0.05), 1e-4),     # 0 long, tradeable
    ((-0.05, -0.02, 0.01), 1e-4),    # 1 short signal
    ((-0.01, 0.001, 0.01), 1e-4),    # 2 below threshold
    ((-0.10, 0.02, 0.021), 1e-4),    # 3 negative expected value
    ((-0.01, 0.02, 0.05), np.nan),   # 4 vol_risk missing
    ((np.nan, 0.02, 0.05), np.nan),  # 5 prediction missing beats vol missing
    ((-0.01, 0.02, 0.05), -1e-4),    # 6 negative vol_risk -> missing
    ((0.04, 0.05, 0.06), 1e-4),      # 7 tier A, long
    ((-0.05, 0.001, 0.002), 1e-4),   # 8 below threshold beats negative EV
    ((-0.01, 0.02, 0.05), np.inf),   # 9 infinite vol_risk -> missing
]


def _hand_signals(config=SignalConfig()):
    pred, vol = _frame([r[0] for r in ROWS], [r[1] for r in ROWS])
    return pred, vol, compute_signals(pred, vol.drop(vol.index[4]), config, reserves=None)  # row 4 absent -> reindexed NaN


def test_hand_built_frame_values_and_columns():
    pred, _, s = _hand_signals()
    assert list(s.columns) == list(SIGNAL_COLUMNS)
    assert s.index.equals(pred.index) and str(s.index.tz) == "UTC" and s.index.name == "open_time"
    assert (s["known_at"] == pred["predicted_at"]).all()
    r0 = s.iloc[0]
    assert r0["spread"] == pytest.approx(0.06) and r0["abs_q50"] == pytest.approx(0.02)
    assert r0["enhanced_info_ratio"] == pytest.approx(0.02 / np.sqrt(1e-4 + 0.03 ** 2))
    assert r0["threshold"] == pytest.approx(0.005 + 1e-4 + 0.03 ** 2)
    assert r0["expected_value"] == pytest.approx(0.02) and r0["expected_value_net"] == pytest.approx(0.015)
    assert s["expected_value"].iloc[1] == pytest.approx(0.02)  # short EV = -E[r]
    assert s["abs_q50"].iloc[1] == pytest.approx(0.02) and s["q50"].iloc[1] == -0.02
    assert s["side"].tolist() == ["long"] + ["hold"] * 6 + ["long", "hold", "hold"]
    assert s["reason"].tolist() == ["", "short not allowed", "below threshold", "negative expected value",
                                    "vol_risk missing", "prediction missing", "vol_risk missing", "",
                                    "below threshold", "vol_risk missing"]
    assert s["signal_tier"].tolist() == ["C", "C", "D", "D", "D", "D", "D", "A", "D", "D"]
    assert s.loc[s["reason"] == "vol_risk missing", ["vol_risk", "threshold", "enhanced_info_ratio"]].isna().all().all()
    assert s["tradeable"].tolist() == (s["side"] != "hold").tolist()


def test_allow_short_min_prob_edge_and_tier_cuts():
    _, _, s = _hand_signals(SignalConfig(allow_short=True))
    assert s["side"].iloc[1] == "short" and s["reason"].iloc[1] == "" and bool(s["tradeable"].iloc[1])
    _, _, s = _hand_signals(SignalConfig(allow_short=True, min_prob_edge=0.3))
    assert s["reason"].iloc[0] == "prob edge too small"  # |0.7667 - 0.5| < 0.3
    assert s["reason"].iloc[1] == "prob edge too small" and s["side"].iloc[7] == "long"  # prob_up = 1
    _, _, s = _hand_signals(SignalConfig(tier_cuts=(0.1, 0.6, 0.7)))  # eir: row 0 0.632, row 3 0.326, row 7 3.54
    assert s["signal_tier"].iloc[[0, 3, 4, 7]].tolist() == ["B", "C", "D", "A"]


@pytest.mark.parametrize("config", [SignalConfig(), SignalConfig(swap_fee=0.0, variance_multiplier=3.0)])
def test_threshold_at_least_cost_and_increasing_in_vol_risk(config):
    vols = [0.0, 1e-5, 1e-4, 1e-3, 1e-2]
    pred, vol = _frame([(-0.01, 0.02, 0.05)] * len(vols), vols)
    thr = compute_signals(pred, vol, config, reserves=None)["threshold"].to_numpy()
    assert (thr >= 2 * config.swap_fee).all() and (np.diff(thr) > 0).all()


def test_random_frame_invariants():
    q10, q50, q90 = _random_triples(2, 200)
    vol = np.random.default_rng(3).uniform(0, 4e-4, 200)
    vol[::17] = np.nan
    pred, vol_s = _frame(np.c_[q10, q50, q90], vol)
    s = compute_signals(pred, vol_s, SignalConfig(swap_fee=0.0005, allow_short=True, min_prob_edge=0.1), reserves=None)
    t = s[s["tradeable"]]
    assert len(t) > 10 and (t["abs_q50"] > t["threshold"]).all() and (t["expected_value_net"] > 0).all()
    assert (t["side"] == np.where(t["q50"] > 0, "long", "short")).all() and (t["reason"] == "").all()
    assert s.loc[~s["tradeable"], "reason"].isin(HOLD_REASONS).all() and (s.loc[~s["tradeable"], "side"] == "hold").all()
    np.testing.assert_allclose(s["enhanced_info_ratio"], np.abs(q50) / np.sqrt(vol + ((q90 - q10) / 2) ** 2))


def test_naive_index_is_taken_as_utc():
    pred, vol = _frame([r[0] for r in ROWS[:4]], [r[1] for r in ROWS[:4]])
    naive = pred.tz_localize(None).assign(predicted_at=pred["predicted_at"].dt.tz_localize(None).to_numpy())
    pd.testing.assert_frame_equal(compute_signals(naive, vol.tz_localize(None), SignalConfig(), reserves=None),
                                  compute_signals(pred, vol, SignalConfig(), reserves=None))


# 4. validation
def _bad(kind):
    pred, vol = _frame([(-0.01, 0.02, 0.05)] * 3, [1e-4] * 3)
    if kind == "q10>q50":
        pred.loc[pred.index[1], "q10"] = 0.03
    elif kind == "q50>q90":
        pred.loc[pred.index[2], "q90"] = 0.01
    elif kind == "dup":
        pred.index = pred.index[[0, 1, 1]].rename("open_time")
    elif kind == "no_predicted_at":
        pred = pred.drop(columns="predicted_at")
    elif kind == "nat":
        pred["predicted_at"] = pred["predicted_at"].where(pred.index != pred.index[1])
    elif kind in ("equal", "before"):
        pred.loc[pred.index[1], "predicted_at"] = pred.index[1] - (H if kind == "before" else pd.Timedelta(0))
    return pred, vol


@pytest.mark.parametrize("kind", ["q10>q50", "q50>q90", "dup", "no_predicted_at", "nat", "equal", "before"])
def test_compute_signals_rejects_bad_input(kind):
    with pytest.raises(ValueError):
        compute_signals(*_bad(kind), SignalConfig(), reserves=None)


@pytest.mark.parametrize("kwargs", [dict(swap_fee=-0.001), dict(starting_capital_usd=0.0), dict(max_position_size=0.05), dict(min_prob_edge=0.51),
                                    dict(tier_cuts=(1.0, 0.5, 2.0)), dict(variance_multiplier=np.nan)])
def test_signal_config_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        SignalConfig(**kwargs)


# 5. prefix invariance
def test_prefix_invariance():
    q10, q50, q90 = _random_triples(4, 40)
    vol = np.random.default_rng(5).uniform(0, 4e-4, 40)
    vol[[3, 25]] = np.nan
    pred, vol_s = _frame(np.c_[q10, q50, q90], vol)
    pred.iloc[7, :3] = np.nan
    config, k = SignalConfig(swap_fee=0.0005, allow_short=True), 23
    full = compute_signals(pred, vol_s, config, reserves=None)
    pd.testing.assert_frame_equal(compute_signals(pred.iloc[:k], vol_s.iloc[:k], config, reserves=None), full.iloc[:k])
    changed, vol_changed = pred.copy(), vol_s.copy()
    changed.iloc[k:, :3] = changed.iloc[k:, :3].to_numpy()[:, ::-1] * -3.0  # still sorted
    changed.iloc[k:, 3] = changed.index[k:] + 5 * H
    vol_changed.iloc[k:] = 0.5
    other = compute_signals(changed, vol_changed, config, reserves=None)
    pd.testing.assert_frame_equal(other.iloc[:k], full.iloc[:k])
    assert not other.iloc[k:].equals(full.iloc[k:])


# 6. Q50SignalLoader
def _lookup_signals():
    # open 0h..4h; open 1h predicted late (known 6h); open 2h and 3h both known at 4h (tie)
    known = [T0 + h * H for h in (1, 6, 4, 4, 5)]
    pred, vol = _frame([(-0.01, 0.02, 0.05)] * 5, [1e-4] * 5, predicted_at=known)
    return compute_signals(pred, vol, SignalConfig(), reserves=None)


def _name(lookup, t):
    row = lookup.get_signal_for_timestamp(t)
    return None if row is None else row["open_time"]


def test_lookup_as_of_backward():
    s = _lookup_signals()
    lookup = Q50SignalLoader(s.iloc[::-1])  # unsorted input
    assert len(lookup) == 5
    assert _name(lookup, T0 + H - pd.Timedelta(microseconds=1)) is None
    assert _name(lookup, T0 + H) == T0
    assert _name(lookup, T0 + 4 * H - pd.Timedelta(microseconds=1)) == T0
    assert _name(lookup, T0 + 4 * H) == T0 + 3 * H  # tie on known_at: latest open_time
    assert _name(lookup, T0 + 5 * H) == T0 + 4 * H
    for t in pd.date_range(T0, T0 + 6 * H, freq="7min", inclusive="left"):
        assert _name(lookup, t) != T0 + H  # the late prediction is never seen before its known_at
    assert _name(lookup, T0 + 6 * H) == T0 + H
    row = lookup.get_signal_for_timestamp(T0 + 2 * H)
    assert isinstance(row, dict) and row["open_time"] == T0
    for column in s.columns:
        assert row[column] == s.loc[T0, column] or (pd.isna(row[column]) and pd.isna(s.loc[T0, column]))
    for t in pd.date_range(T0, T0 + 8 * H, freq="11min"):
        got = lookup.get_signal_for_timestamp(t)
        assert got is None or got["known_at"] <= t
    # The strategy's fast path agrees with the dict lookup, on plain floats.
    for t in pd.date_range(T0, T0 + 8 * H, freq="13min"):
        i = lookup.index_at_ns(t.value)
        got = lookup.get_signal_for_timestamp(t)
        assert (i < 0) == (got is None)
        if got is not None:
            assert lookup.open_ns[i] == got["open_time"].value
            assert lookup.expected_value_long[i] == pytest.approx(0.3 * got["q10"] + 0.4 * got["q50"] + 0.3 * got["q90"])
            assert lookup.total_variance[i] == pytest.approx(got["vol_risk"] + (got["spread"] / 2) ** 2)
            assert type(lookup.q50[i]) is float


def test_lookup_timezones_and_nat():
    lookup = Q50SignalLoader(_lookup_signals())
    assert _name(lookup, pd.Timestamp("2025-01-01 04:00")) == T0 + 3 * H  # naive = UTC
    assert _name(lookup, "2025-01-01 03:59:59") == T0
    assert _name(lookup, pd.Timestamp("2025-01-01 05:00", tz="Etc/GMT-1")) == T0 + 3 * H  # 04:00 UTC
    with pytest.raises(ValueError):
        lookup.get_signal_for_timestamp(pd.NaT)
    nat_frame = _lookup_signals().astype({"known_at": "object"})
    nat_frame.iloc[0, nat_frame.columns.get_loc("known_at")] = pd.NaT
    assert _name(Q50SignalLoader(nat_frame), T0 + 3 * H) is None  # NaT rows are never returned
    with pytest.raises(ValueError, match="vol_risk"):
        Q50SignalLoader(_lookup_signals().drop(columns="vol_risk"))


# 7. costs at the intended size
def test_costs_at_the_intended_size_come_from_the_cost_model():
    """With liquidity, the threshold and net EV carry fee AND impact at the size a flat book
    would enter with; thinner pools cost more, and the row says which reserve it assumed."""
    pred, vol = _frame([(-0.01, 0.02, 0.05), (-0.01, 0.006, 0.02), (-0.01, 0.002, 0.01)], [1e-4] * 3)
    obs = pd.DataFrame({"observed_at": [T0 + 2 * H], "reserve_usd": [200_000.0], "source": ["collector_history"]})
    reserves = ReserveSeries(obs, fallback_usd=50_000.0)
    s = compute_signals(pred, vol, SignalConfig(), reserves=reserves)
    # Row 0 known at 01:00: before the first observation -> the fallback, flagged.
    assert s["reserve_usd"].tolist() == [50_000.0, 200_000.0, 200_000.0]
    assert s["reserve_source"].tolist() == ["fallback", "collector_history", "collector_history"]
    r0 = s.iloc[0]
    n = r0["intended_notional_usd"]
    # Edge-optimal size: n (ev - 2f) - 2 n^2 / Y to first order -> n ~ Y (ev - 2f) / 4, far below the
    # risk budget (0.5 x 10 000).
    assert n == pytest.approx(25_000 * (0.02 - 0.005) / 4, rel=0.02) and n < 5_000
    assert r0["expected_cost_usd"] == pytest.approx(round_trip_cost(n, 50_000.0, 0.0025, 0.1))
    assert r0["expected_cost_fraction"] == pytest.approx(r0["expected_cost_usd"] / n)
    assert r0["expected_cost_fraction"] > 0.005  # impact on top of the two fees
    assert r0["expected_value_net"] == pytest.approx(r0["expected_value"] - r0["expected_cost_fraction"])
    assert r0["threshold"] == pytest.approx(r0["expected_cost_fraction"] + 1e-4 + 0.03 ** 2)
    assert bool(r0["tradeable"])
    # Without impact the same row is priced at the two fees only, at the risk budget's size.
    flat = compute_signals(pred, vol, SignalConfig(), reserves=None).iloc[0]
    assert flat["expected_cost_fraction"] == pytest.approx(0.005) and flat["intended_notional_usd"] == 5_000.0
    assert flat["reserve_source"] == "none"
    # A thin pool: the same forecast no longer pays for its costs at any size worth a cent.
    thin = compute_signals(pred, vol, SignalConfig(), reserves=ReserveSeries(None, fallback_usd=20.0))
    assert not thin["tradeable"].any()
    assert (thin["intended_notional_usd"] <= 0.1 * 10.0 + 1e-9).all()  # the reserve cap
