"""Tests of q50_assets.lineage.regimes.rules: past-only percentiles, cuts, rules, invariants, validation."""

import numpy as np
import pandas as pd
import pytest

from q50_assets.lineage.regimes.rules import (MOMENTUM_REGIMES, REGIME_COLUMNS, REGIME_LABELS, VOL_REGIMES,
                                         RegimeConfig, RegimeDetector, detect_regimes)

T0 = pd.Timestamp("2025-01-01", tz="UTC")
H = pd.Timedelta(hours=1)
# A neutral momentum row (ranging): no MACD histogram, RSI at its midline, price at the mean.
NEUTRAL = {"rsi_14": 50.0, "macd": 0.0, "macd_signal": 0.0, "macd_hist": 0.0, "boll_pos": 0.5}


def _features(vol, **columns):
    """Hourly UTC frame; momentum columns default to NEUTRAL, known_at to open_time + 1h."""
    vol = np.asarray(vol, dtype=float)
    idx = pd.DatetimeIndex([T0 + i * H for i in range(len(vol))], name="open_time")
    frame = pd.DataFrame({"vol_risk": vol}, index=idx)
    for name, default in NEUTRAL.items():
        frame[name] = np.broadcast_to(np.asarray(columns.pop(name, default), dtype=float), len(vol)).copy()
    frame["known_at"] = idx + H
    for name, values in columns.items():
        frame[name] = values
    return frame


def _random_features(seed, n):
    rng = np.random.default_rng(seed)
    vol = rng.lognormal(-9.0, 1.0, n)
    vol[rng.random(n) < 0.05] = np.nan
    vol[rng.random(n) < 0.1] = 0.0  # ties, as on dead hours
    hist = rng.normal(0.0, 0.002, n)
    macd_signal = rng.normal(0.0, 0.004, n)
    frame = _features(vol, rsi_14=rng.uniform(0, 100, n), macd=macd_signal + hist, macd_signal=macd_signal,
                      macd_hist=hist, boll_pos=rng.uniform(-0.3, 1.3, n))
    frame.loc[frame.index[rng.random(n) < 0.03], "boll_pos"] = np.nan
    frame["is_warmup"] = np.arange(n) < 10
    frame["is_filled"] = rng.random(n) < 0.1
    return frame


def _brute_percentile(vol, valid, window, min_history):
    """Mid-rank of vol[t] among valid vol[s], s <= t (within the window): the definition, by loops."""
    out = np.full(len(vol), np.nan)
    for t in range(len(vol)):
        start = 0 if window is None else max(0, t - window + 1)
        history = [vol[s] for s in range(start, t + 1) if valid[s]]
        if not valid[t] or len(history) < min_history:
            continue
        less = sum(h < vol[t] for h in history)
        equal = sum(h == vol[t] for h in history)
        out[t] = (less + (equal + 1) / 2) / len(history)
    return out


# 1. percentiles
@pytest.mark.parametrize("window", [None, 1, 5, 37])
def test_percentile_matches_brute_force_reference(window):
    frame = _random_features(0, 300)
    frame.iloc[50:60, 0] = 3e-4  # a run of equal values
    frame.iloc[70, 0] = np.inf
    frame.iloc[71, 0] = -1e-5
    min_history = 1 if window == 1 else 4
    got = detect_regimes(frame, RegimeConfig(min_history_bars=min_history, window_bars=window))
    vol = frame["vol_risk"].to_numpy()
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(vol) & (vol >= 0) & ~frame["is_warmup"].to_numpy()
    expected = _brute_percentile(vol, valid, window, min_history)
    np.testing.assert_allclose(got["vol_percentile"].to_numpy(), expected, rtol=0, atol=1e-12)
    assert np.isnan(got["vol_percentile"].to_numpy()[~valid]).all()


def test_percentile_includes_t_and_ties_take_their_average_rank():
    got = detect_regimes(_features([1.0, 2.0, 2.0, 0.5, 3.0]), RegimeConfig(min_history_bars=1))
    np.testing.assert_allclose(got["vol_percentile"], [1.0, 1.0, 2.5 / 3, 1 / 4, 1.0])
    const = detect_regimes(_features([0.0] * 9), RegimeConfig(min_history_bars=1))
    np.testing.assert_allclose(const["vol_percentile"], 0.5 + 0.5 / np.arange(1, 10))


# 2. vol regime cuts
def test_regime_cuts_at_30_70_90():
    # Nine distinct past values 1..9, then a tenth row whose rank among 10 sets the percentile.
    cases = [(0.5, 0.1, "low"), (2.5, 0.3, "medium"), (2.9, 0.3, "medium"), (1.5, 0.2, "low"),
             (6.5, 0.7, "high"), (5.5, 0.6, "medium"), (8.5, 0.9, "extreme"), (7.5, 0.8, "high"),
             (10.0, 1.0, "extreme")]
    for last, pct, regime in cases:
        got = detect_regimes(_features([9, 8, 7, 6, 5, 4, 3, 2, 1, last]), RegimeConfig(min_history_bars=10))
        assert got["vol_percentile"].iloc[-1] == pytest.approx(pct, abs=1e-15)
        assert got["vol_regime"].iloc[-1] == regime, (last, pct)
        assert (got["vol_regime"].iloc[:-1] == "unknown").all()


def test_custom_cuts():
    got = detect_regimes(_features([9, 8, 7, 6, 5, 4, 3, 2, 1, 3.5]),
                         RegimeConfig(min_history_bars=10, vol_percentiles=(0.1, 0.2, 0.45)))
    assert got["vol_percentile"].iloc[-1] == pytest.approx(0.4) and got["vol_regime"].iloc[-1] == "high"


# 3. history, warm-up, invalid rows
def test_min_history_gives_unknown_until_enough_valid_values():
    vol = np.arange(1.0, 11.0)
    vol[[2, 5]] = np.nan
    got = detect_regimes(_features(vol), RegimeConfig(min_history_bars=4))
    # valid counts at rows 0..9: 1 2 2 3 4 4 5 6 7 8 -> percentile from row 4 on, except NaN row 5
    assert np.isnan(got["vol_percentile"].iloc[[0, 1, 2, 3, 5]]).all()
    assert got["vol_percentile"].iloc[[4, 6, 7, 8, 9]].notna().all()
    assert (got["vol_regime"].iloc[[0, 1, 2, 3, 5]] == "unknown").all()
    assert (got["vol_regime"].iloc[[4, 6, 7, 8, 9]] == "extreme").all()  # increasing: always the max


def test_rolling_window_forgets_old_values():
    vol = [10.0] * 6 + [1.0, 2.0, 3.0]
    expanding = detect_regimes(_features(vol), RegimeConfig(min_history_bars=3))
    rolling = detect_regimes(_features(vol), RegimeConfig(min_history_bars=3, window_bars=3))
    assert expanding["vol_percentile"].iloc[-1] == pytest.approx(3 / 9)
    assert rolling["vol_percentile"].iloc[-1] == pytest.approx(1.0)
    assert rolling["vol_regime"].iloc[-1] == "extreme" and expanding["vol_regime"].iloc[-1] == "medium"


def test_warmup_rows_are_unknown_and_out_of_the_history():
    vol = [100.0, 100.0, 1.0, 2.0, 3.0, 4.0]
    frame = _features(vol, macd_hist=0.01, rsi_14=60.0, boll_pos=0.8,
                      is_warmup=[True, True, False, False, False, False])
    got = detect_regimes(frame, RegimeConfig(min_history_bars=1))
    assert (got["regime"].iloc[:2] == "unknown_unknown").all()
    assert (got["position_multiplier"].iloc[:2] == 0.0).all()
    # the warm-up 100s are not in the history: 4.0 is the maximum of 1..4
    assert got["vol_percentile"].iloc[-1] == 1.0
    assert (got["momentum_regime"].iloc[2:] == "trending_up").all()
    # 0/1 flags work like booleans
    frame01 = frame.assign(is_warmup=[1, 1, 0, 0, 0, 0], is_filled=[0.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    pd.testing.assert_frame_equal(detect_regimes(frame01, RegimeConfig(min_history_bars=1)), got)


def test_filled_flag_does_not_change_the_result():
    frame = _random_features(1, 120)
    config = RegimeConfig(min_history_bars=5)
    without = frame.drop(columns="is_filled")
    pd.testing.assert_frame_equal(detect_regimes(frame, config), detect_regimes(without, config))


# 4. momentum rules
@pytest.mark.parametrize("rsi, hist, boll, expected", [
    (60.0, 0.001, 0.8, "trending_up"),
    (40.0, -0.001, 0.2, "trending_down"),
    (60.0, 0.0, 0.8, "ranging"),        # hist must be > thr (0), not >=
    (50.0, 0.001, 0.8, "ranging"),      # RSI must be above its midline
    (60.0, 0.001, 0.5, "ranging"),      # price must be above the mean
    (40.0, 0.001, 0.8, "ranging"),      # RSI disagrees
    (60.0, -0.001, 0.8, "ranging"),     # MACD disagrees
    (40.0, -0.001, 0.6, "ranging"),     # Bollinger disagrees
    (75.0, -0.001, 1.05, "trending_up"),   # overbought outside the upper band: trend before MACD turns
    (75.0, -0.001, 0.95, "ranging"),       # overbought but inside the band
    (69.0, -0.001, 1.2, "ranging"),        # outside the band but not overbought
    (70.0, -0.001, 1.0, "trending_up"),    # both bounds inclusive
    (25.0, 0.001, -0.1, "trending_down"),
    (30.0, 0.001, 0.0, "trending_down"),
    (31.0, 0.001, -0.1, "ranging"),
    (np.nan, 0.001, 0.8, "unknown"),
    (60.0, np.nan, 0.8, "unknown"),
    (60.0, 0.001, np.nan, "unknown"),
    (60.0, 0.001, np.inf, "unknown"),
])
def test_momentum_rules_by_hand(rsi, hist, boll, expected):
    got = detect_regimes(_features([1e-4], rsi_14=rsi, macd_hist=hist, boll_pos=boll), RegimeConfig(min_history_bars=1))
    assert got["momentum_regime"].iloc[0] == expected


def test_momentum_unknown_when_macd_or_signal_missing():
    got = detect_regimes(_features([1e-4] * 2, macd=[np.nan, 0.0], macd_signal=[0.0, np.nan], rsi_14=60.0,
                                   macd_hist=0.001, boll_pos=0.8), RegimeConfig(min_history_bars=1))
    assert (got["momentum_regime"] == "unknown").all()


def test_trend_macd_min_and_rsi_period():
    frame = _features([1e-4] * 3, macd_hist=[0.0005, 0.002, -0.002], rsi_14=[60.0, 60.0, 40.0],
                      boll_pos=[0.8, 0.8, 0.2])
    got = detect_regimes(frame, RegimeConfig(min_history_bars=1, trend_macd_min=0.001))
    assert list(got["momentum_regime"]) == ["ranging", "trending_up", "trending_down"]
    frame7 = frame.rename(columns={"rsi_14": "rsi_7"})
    config7 = RegimeConfig(min_history_bars=1, trend_macd_min=0.001, rsi_periods=7)
    pd.testing.assert_frame_equal(detect_regimes(frame7, config7), got)
    with pytest.raises(ValueError, match="rsi_7"):
        detect_regimes(frame, RegimeConfig(rsi_periods=7))


def test_rsi_extreme_bounds_from_config():
    frame = _features([1e-4], rsi_14=65.0, macd_hist=-0.001, boll_pos=1.1)
    assert detect_regimes(frame, RegimeConfig(min_history_bars=1))["momentum_regime"].iloc[0] == "ranging"
    got = detect_regimes(frame, RegimeConfig(min_history_bars=1, rsi_overbought=65.0))
    assert got["momentum_regime"].iloc[0] == "trending_up"


# 5. multipliers, adjustments, labels
def test_default_multipliers_and_adjustments():
    # distinct values 1..9 then a last row per case; momentum row-wise per case
    lasts = {"low": 0.5, "medium": 5.5, "high": 7.5, "extreme": 9.5}
    defaults = RegimeConfig()
    vol_mult = {"low": 1.2, "medium": 1.0, "high": 0.6, "extreme": 0.0}
    adjust = {"low": 0.0, "medium": 0.0, "high": 0.002, "extreme": 0.005}
    mom_mult = {"trending_up": 1.0, "trending_down": 0.5, "ranging": 1.0}
    momentum_rows = {"trending_up": (60.0, 0.001, 0.8), "trending_down": (40.0, -0.001, 0.2),
                     "ranging": (50.0, 0.0, 0.5)}
    for vol_regime, last in lasts.items():
        for mom, (rsi, hist, boll) in momentum_rows.items():
            frame = _features(list(range(1, 10)) + [last], rsi_14=rsi, macd_hist=hist, boll_pos=boll)
            row = detect_regimes(frame, RegimeConfig(min_history_bars=10)).iloc[-1]
            assert (row["vol_regime"], row["momentum_regime"]) == (vol_regime, mom)
            assert row["regime"] == f"{vol_regime}_{mom}"
            assert row["position_multiplier"] == pytest.approx(vol_mult[vol_regime] * mom_mult[mom])
            assert row["threshold_adjustment"] == adjust[vol_regime]
            assert defaults.position_multipliers[vol_regime] == vol_mult[vol_regime]
    unknown = detect_regimes(_features([1.0, 2.0], rsi_14=[60.0, np.nan]), RegimeConfig(min_history_bars=2))
    assert unknown["regime"].tolist() == ["unknown_ranging", "extreme_unknown"]
    assert unknown["position_multiplier"].tolist() == [0.0, 0.0]
    assert unknown["threshold_adjustment"].tolist() == [0.0, 0.005]


def test_custom_multipliers_and_adjustments():
    config = RegimeConfig(
        min_history_bars=10,
        position_multipliers={"low": 2.0, "medium": 1.5, "high": 1.0, "extreme": 0.25, "unknown": 0.1},
        threshold_adjustments={"low": 0.001, "medium": 0.002, "high": 0.003, "extreme": 0.004, "unknown": 0.01},
        momentum_multipliers={"trending_up": 1.5, "trending_down": 0.2, "ranging": 0.8, "unknown": 0.3},
    )
    frame = _features(list(range(1, 10)) + [9.5], rsi_14=40.0, macd_hist=-0.001, boll_pos=0.2)
    got = detect_regimes(frame, config)
    assert got["regime"].iloc[-1] == "extreme_trending_down"
    assert got["position_multiplier"].iloc[-1] == pytest.approx(0.25 * 0.2)
    assert got["threshold_adjustment"].iloc[-1] == 0.004
    assert got["position_multiplier"].iloc[0] == pytest.approx(0.1 * 0.2)  # unknown vol
    assert got["threshold_adjustment"].iloc[0] == 0.01


def test_output_columns_labels_and_known_at():
    frame = _random_features(2, 400)
    for config in (RegimeConfig(min_history_bars=20), RegimeConfig(min_history_bars=20, window_bars=50)):
        got = detect_regimes(frame, config)
        assert list(got.columns) == list(REGIME_COLUMNS)
        assert got.index.equals(frame.index) and str(got.index.tz) == "UTC"
        assert got["regime"].isin(REGIME_LABELS).all()
        assert got["vol_regime"].isin(VOL_REGIMES).all() and got["momentum_regime"].isin(MOMENTUM_REGIMES).all()
        assert (got["regime"] == got["vol_regime"] + "_" + got["momentum_regime"]).all()
        pd.testing.assert_series_equal(got["known_at"], frame["known_at"])
        assert (got["position_multiplier"] >= 0).all() and (got["threshold_adjustment"] >= 0).all()
        pct = got["vol_percentile"].dropna()
        assert ((pct > 0) & (pct <= 1)).all()
        assert set(got["vol_regime"]) == set(VOL_REGIMES) and set(got["momentum_regime"]) == set(MOMENTUM_REGIMES)
    assert len(REGIME_LABELS) == len(set(REGIME_LABELS)) == len(VOL_REGIMES) * len(MOMENTUM_REGIMES)


def test_naive_index_is_utc_and_empty_input():
    frame = _features([1.0, 2.0, 3.0])
    naive = frame.copy()
    naive.index = naive.index.tz_localize(None)
    naive["known_at"] = naive["known_at"].dt.tz_localize(None)
    pd.testing.assert_frame_equal(detect_regimes(naive, RegimeConfig(min_history_bars=1)),
                                  detect_regimes(frame, RegimeConfig(min_history_bars=1)))
    empty = detect_regimes(frame.iloc[:0], RegimeConfig())
    assert empty.empty and list(empty.columns) == list(REGIME_COLUMNS)


# 6. past only
@pytest.mark.parametrize("window", [None, 30])
def test_prefix_invariance_and_future_perturbation(window):
    frame = _random_features(3, 500)
    config = RegimeConfig(min_history_bars=20, window_bars=window)
    full = detect_regimes(frame, config)
    for k in (1, 15, 30, 31, 137, 499):
        pd.testing.assert_frame_equal(detect_regimes(frame.iloc[:k], config), full.iloc[:k])
    k = 200
    changed = frame.copy()
    rng = np.random.default_rng(4)
    for column in ("vol_risk", "rsi_14", "macd", "macd_signal", "macd_hist", "boll_pos"):
        changed.iloc[k:, changed.columns.get_loc(column)] = rng.permutation(changed[column].to_numpy()[k:]) * 3.0
    changed.iloc[k:, changed.columns.get_loc("is_warmup")] = rng.random(len(frame) - k) < 0.3
    changed.iloc[k:, changed.columns.get_loc("known_at")] = changed.index[k:] + 5 * H
    other = detect_regimes(changed, config)
    pd.testing.assert_frame_equal(other.iloc[:k], full.iloc[:k])
    assert not other.iloc[k:].equals(full.iloc[k:])


def test_large_input_is_fast():
    import time

    frame = _random_features(5, 50_000)
    start = time.perf_counter()
    detect_regimes(frame, RegimeConfig())
    detect_regimes(frame, RegimeConfig(window_bars=500))
    assert time.perf_counter() - start < 5.0


# 7. validation
def test_input_validation_names_the_problem():
    frame = _features([1.0, 2.0, 3.0])
    config = RegimeConfig(min_history_bars=1)
    with pytest.raises(ValueError, match="not sorted"):
        detect_regimes(frame.iloc[[0, 2, 1]], config)
    with pytest.raises(ValueError, match="duplicates"):
        detect_regimes(frame.iloc[[0, 1, 1]], config)
    with pytest.raises(ValueError, match="DatetimeIndex"):
        detect_regimes(frame.reset_index(drop=True), config)
    for column in ("vol_risk", "rsi_14", "macd", "macd_signal", "macd_hist", "boll_pos", "known_at"):
        with pytest.raises(ValueError, match=column):
            detect_regimes(frame.drop(columns=column), config)
    with pytest.raises(ValueError, match="without known_at"):
        detect_regimes(frame.assign(known_at=[frame.index[0] + H, pd.NaT, frame.index[2] + H]), config)
    with pytest.raises(ValueError, match="look-ahead"):
        detect_regimes(frame.assign(known_at=frame.index), config)
    with pytest.raises(ValueError, match="decreases"):
        detect_regimes(frame.assign(known_at=frame.index + pd.to_timedelta([5, 1, 2], unit="h")), config)
    with pytest.raises(ValueError, match="is_warmup"):
        detect_regimes(frame.assign(is_warmup=[0, 2, 0]), config)
    with pytest.raises(ValueError, match="is_filled"):
        detect_regimes(frame.assign(is_filled=[True, None, False]), config)
    with pytest.raises(ValueError, match="boll_pos"):
        detect_regimes(frame.assign(boll_pos=["a", "b", "c"]), config)


@pytest.mark.parametrize("kwargs, message", [
    ({"vol_percentiles": (0.7, 0.3, 0.9)}, "vol_percentiles"),
    ({"vol_percentiles": (0.3, 0.3, 0.9)}, "vol_percentiles"),
    ({"vol_percentiles": (0.0, 0.7, 0.9)}, "vol_percentiles"),
    ({"vol_percentiles": (0.3, 0.7, 1.0)}, "vol_percentiles"),
    ({"vol_percentiles": (0.3, 0.7)}, "vol_percentiles"),
    ({"vol_percentiles": (0.3, float("nan"), 0.9)}, "vol_percentiles"),
    ({"min_history_bars": 0}, "min_history_bars"),
    ({"min_history_bars": 2.5}, "min_history_bars"),
    ({"window_bars": 10}, "window_bars"),  # < min_history_bars (48)
    ({"window_bars": 0, "min_history_bars": 1}, "window_bars"),
    ({"rsi_periods": 0}, "rsi_periods"),
    ({"rsi_overbought": 40.0}, "rsi_overbought"),
    ({"rsi_oversold": 55.0}, "rsi_oversold"),
    ({"rsi_overbought": float("inf")}, "rsi_overbought"),
    ({"trend_macd_min": -0.001}, "trend_macd_min"),
    ({"position_multipliers": {"low": 1.0, "medium": 1.0, "high": 1.0, "extreme": 1.0}}, "unknown"),
    ({"position_multipliers": {**RegimeConfig().position_multipliers, "hihg": 1.0}}, "hihg"),
    ({"position_multipliers": {**RegimeConfig().position_multipliers, "low": -0.1}}, "low"),
    ({"threshold_adjustments": {**RegimeConfig().threshold_adjustments, "high": float("nan")}}, "high"),
    ({"momentum_multipliers": {"trending_up": 1.0, "trending_down": 0.5, "ranging": 1.0}}, "unknown"),
    ({"momentum_multipliers": {**RegimeConfig().momentum_multipliers, "ranging": float("inf")}}, "ranging"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RegimeConfig(**kwargs)


def test_config_mappings_are_read_only_copies():
    source = {"low": 1.0, "medium": 1.0, "high": 1.0, "extreme": 1.0, "unknown": 0.0}
    config = RegimeConfig(position_multipliers=source)
    source["low"] = 5.0
    assert config.position_multipliers["low"] == 1.0
    with pytest.raises(TypeError):
        config.position_multipliers["low"] = 3.0  # type: ignore[index]
    assert RegimeConfig() == RegimeConfig()


# RegimeDetector: the plan's class
@pytest.mark.parametrize("window", [None, 5, 37])
def test_detector_online_classification_equals_the_frame_rules(window):
    """Bar by bar, past-only: the online classifier gives exactly detect_regimes' vol regime, warm-up,
    invalid values, ties and a rolling window included."""
    frame = _random_features(11, 400)
    config = RegimeConfig(min_history_bars=min(20, window or 20), window_bars=window)
    expected = detect_regimes(frame, config)["vol_regime"].tolist()
    detector = RegimeDetector(config)
    got = []
    for vol, warm in zip(frame["vol_risk"], frame["is_warmup"]):
        raw = np.sqrt(vol) if np.isfinite(vol) and vol >= 0 else None
        got.append(detector.classify_volatility_regime(vol, raw, warmup=bool(warm)))
    assert got == expected
    assert set(got) >= {"low", "medium", "high", "extreme", "unknown"}
    # Past-only: after reset, a prefix gives the frame rules' answers on that prefix alone.
    detector.reset()
    prefix = frame.iloc[:50].assign(is_warmup=False)
    assert [detector.classify_volatility_regime(v) for v in prefix["vol_risk"]] == \
        detect_regimes(prefix, config)["vol_regime"].tolist()
    with pytest.raises(ValueError, match="mixed up"):
        RegimeDetector(config).classify_volatility_regime(1e-4, 0.5)


def test_detector_as_of_lookup_never_returns_a_later_label():
    frame = _random_features(3, 60)
    detector = RegimeDetector(RegimeConfig(min_history_bars=5))
    labels = detector.detect_regimes(frame)
    pd.testing.assert_frame_equal(labels, detect_regimes(frame, detector.config))
    # One label arrives late: known only 4 bars after its close.
    labels.loc[labels.index[30], "known_at"] = labels.index[30] + 5 * H
    detector.with_labels(labels)
    assert detector.get_regime_for_timestamp(T0 + H - pd.Timedelta(seconds=1)) is None
    for k in range(1, 62):
        t = T0 + k * H
        got = detector.get_regime_for_timestamp(t)
        assert got["known_at"] <= t
        known = labels[labels["known_at"] <= t]
        # Latest known_at; a tie goes to the latest bar.
        expected_open = known.assign(bar=known.index).sort_values(["known_at", "bar"])["bar"].iloc[-1]
        assert got["open_time"] == expected_open
        assert got["open_time"] != labels.index[30] or t >= labels.index[30] + 5 * H
        i = detector.index_at_ns(t.value)
        assert detector.open_ns[i] == got["open_time"].value
        assert detector.position_multiplier[i] == got["position_multiplier"]
        assert detector.vol_regime[i] == got["vol_regime"] and detector.regime[i] == got["regime"]
    with pytest.raises(ValueError):
        RegimeDetector().get_regime_for_timestamp(T0)
    # Labels as the table stores them (no vol/momentum columns): split from the combined label.
    stored = labels[["regime", "position_multiplier", "threshold_adjustment", "known_at"]]
    again = RegimeDetector().with_labels(stored)
    assert again.vol_regime == detector.vol_regime and again.momentum_regime == detector.momentum_regime
