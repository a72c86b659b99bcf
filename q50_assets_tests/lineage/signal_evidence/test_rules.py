"""The signal evidence's definitions: forward returns from the fill bar, quantiles, spreads and IC
against hand computation and alphalens itself, the null's power, and no look-ahead in timing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from q50_assets.lineage.common.uncertainty import BootstrapConfig
from q50_assets.lineage.signal_evidence.rules import (
    CARRIED,
    SignalEvidenceConfig,
    circular_null,
    evidence_panel,
    null_p_value,
    pool_forward_returns,
    quantile_bins,
    quantile_table,
    rank_autocorrelation,
    signal_evidence,
    spread_by_bar,
    top_turnover,
)

HOUR = pd.Timedelta(hours=1)
T0 = pd.Timestamp("2025-08-01", tz="UTC")


def config(**kw) -> SignalEvidenceConfig:
    base = dict(min_pools=3, quantiles=3, horizons=(1, 2), vol_buckets=2, null_draws=200, null_seed=3,
                fill_latency_bars=1, fill_price="close", bar_seconds=3600,
                bootstrap=BootstrapConfig(bootstrap_samples=200, bootstrap_block_days=1.0))
    base.update(kw)
    return SignalEvidenceConfig(**base)


def bars_of(closes, missing=(), volume=1000.0, high=None, low=None) -> pd.DataFrame:
    idx = T0 + HOUR * np.arange(len(closes))
    b = pd.DataFrame({"open": closes, "high": high if high is not None else closes,
                      "low": low if low is not None else closes, "close": closes, "volume": volume}, index=idx)
    return b.drop(index=[idx[i] for i in missing])


def signals_of(q50, n=None) -> pd.DataFrame:
    q50 = np.asarray(q50, dtype=float)
    idx = T0 + HOUR * np.arange(len(q50))
    return pd.DataFrame({"q10": q50 - 0.01, "q50": q50, "q90": q50 + 0.01, "vol_risk": 0.001,
                         "known_at": idx + HOUR}, index=idx)


def test_forward_returns_start_at_the_fill_bar_and_missing_bars_are_counted():
    closes = [100.0, 110.0, 121.0, 133.1, 140.0, 150.0]
    bars = bars_of(closes, missing=(4,))
    rows, counts = pool_forward_returns("p", bars, signals_of([0.01] * 6), config())
    # Decision at bar 0's close, fill at bar 1's close (110), one bar later: 121.
    assert rows["r1"].iloc[0] == pytest.approx(121.0 / 110.0 - 1)
    assert rows["r2"].iloc[0] == pytest.approx(133.1 / 110.0 - 1)
    # Bar 3's fill bar (4) is missing: excluded, counted.
    assert np.isnan(rows["r1"].iloc[3]) and counts["fill bar missing (no swap to fill at)"][1] == 1
    # Bar 2 fills at bar 3 (133.1); its end bar 4 is missing: marked at the last close, counted as carried.
    assert rows["r1"].iloc[2] == pytest.approx(0.0) and counts[CARRIED][1] == 1
    # Bars 4 (no bar... signal exists) and 5: horizons run past the last bar.
    assert counts["horizon past the pool's last bar"][1] == 2 and np.isnan(rows["r1"].iloc[5])


def test_typical_fill_price_and_latency():
    closes = np.array([100.0, 110.0, 121.0, 130.0, 140.0])
    high, low = closes + 3, closes - 6
    rows, _ = pool_forward_returns("p", bars_of(closes, high=high, low=low), signals_of([0.0] * 5),
                                   config(fill_price="typical", fill_latency_bars=2))
    typical = (high[2] + low[2] + closes[2]) / 3
    assert rows["r1"].iloc[0] == pytest.approx(closes[3] / typical - 1)


def test_a_signal_known_before_its_bar_closed_is_refused():
    sig = signals_of([0.0, 0.0])
    sig.loc[sig.index[1], "known_at"] = sig.index[1]
    with pytest.raises(ValueError, match="look-ahead"):
        pool_forward_returns("p", bars_of([1.0, 1.0, 1.0]), sig, config())


def _random_panel(seed: int, bars: int = 60, pools: int = 12, signal: float = 0.0, gaps: bool = True):
    rng = np.random.default_rng(seed)
    r = rng.normal(0, 0.02, size=(bars, pools))
    f = signal * r + rng.normal(0, 0.02, size=(bars, pools))
    valid = np.ones_like(r, dtype=bool)
    if gaps:
        valid &= rng.random(size=r.shape) > 0.1
    return f, r, valid


def _alphalens_frame(f, r, valid, q):
    import alphalens.utils as au

    dates = pd.date_range(T0, periods=f.shape[0], freq="h")
    idx = pd.MultiIndex.from_product([dates, [f"p{j:02d}" for j in range(f.shape[1])]], names=["date", "asset"])
    fd = pd.DataFrame({"1h": r.ravel(), "factor": f.ravel()}, index=idx)[valid.ravel()]
    fd["factor_quantile"] = au.quantize_factor(fd, quantiles=q)
    return fd


def test_vectorised_definitions_equal_alphalens():
    import alphalens.performance as ap

    f, r, valid = _random_panel(1)
    q = 5
    fd = _alphalens_frame(f, r, valid, q)
    table = quantile_table(f, r, valid, q)
    ours_q = table["bins"][valid] + 1
    assert (ours_q == fd["factor_quantile"].to_numpy()).all()
    mean_by_date, _ = ap.mean_return_by_quantile(fd, by_date=True, demeaned=False)
    theirs = mean_by_date["1h"].unstack("factor_quantile").to_numpy()
    np.testing.assert_allclose(table["by_quantile"], theirs, rtol=1e-12, atol=1e-15)
    ic = ap.factor_information_coefficient(fd)["1h"].to_numpy()
    np.testing.assert_allclose(table["ic"], ic, rtol=1e-10)
    turnover = ap.quantile_turnover(fd["factor_quantile"], q, period=2)
    np.testing.assert_allclose(np.nanmean(top_turnover(table["bins"], q - 1, 2)), turnover.mean(), rtol=1e-12)
    autocorr = ap.factor_rank_autocorrelation(fd, period=1)
    np.testing.assert_allclose(np.nanmean(rank_autocorrelation(f, valid)), autocorr.mean(), rtol=1e-10)


def test_hand_computed_quantiles_top_minus_all_and_ic():
    f = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    r = np.array([[0.0, 0.0, 0.01, 0.0, 0.02, 0.04]])
    valid = np.ones_like(f, dtype=bool)
    assert quantile_bins(f, valid, 3).tolist() == [[0, 0, 1, 1, 2, 2]]
    st = spread_by_bar(f, r, valid, 3)
    assert st["top_minus_all"][0] == pytest.approx(0.03 - 0.07 / 6)
    assert st["top_minus_bottom"][0] == pytest.approx(0.03)
    from scipy.stats import spearmanr

    assert st["ic"][0] == pytest.approx(spearmanr(f[0], r[0])[0])


def test_null_has_power_on_a_planted_signal_and_none_on_a_shuffled_one():
    f, r, valid = _random_panel(7, bars=150, pools=15, signal=1.0, gaps=False)
    observed = np.nanmean(spread_by_bar(f, r, valid, 5)["top_minus_all"])
    draws = circular_null(f, r, valid, 5, 300, seed=1)
    assert null_p_value(observed, draws["top_minus_all"]) < 0.01
    assert null_p_value(np.nanmean(spread_by_bar(f, r, valid, 5)["ic"]), draws["ic"]) < 0.01
    # The same forecasts shuffled across pools at every bar: no longer paired with their returns.
    rng = np.random.default_rng(5)
    p_values = []
    for _ in range(20):
        shuffled = np.take_along_axis(f, rng.permuted(np.tile(np.arange(f.shape[1]), (f.shape[0], 1)), axis=1), axis=1)
        obs = np.nanmean(spread_by_bar(shuffled, r, valid, 5)["top_minus_all"])
        p_values.append(null_p_value(obs, circular_null(shuffled, r, valid, 5, 100, seed=2)["top_minus_all"]))
    p_values = np.array(p_values)
    assert (p_values < 0.05).sum() <= 3  # about 5 % of 20 by chance
    assert 0.25 < p_values.mean() < 0.75  # roughly uniform


def test_timing_component_has_no_look_ahead():
    rng = np.random.default_rng(3)
    n = 40
    q50 = rng.normal(0, 0.01, n)
    closes = 100 * np.cumprod(1 + rng.normal(0, 0.01, n + 5))
    full, _ = pool_forward_returns("p", bars_of(closes), signals_of(q50), config())
    cut = 25
    prefix, _ = pool_forward_returns("p", bars_of(closes[:cut + 2]), signals_of(q50[:cut]), config())
    for col in ("timing_er", "timing_q50"):
        pd.testing.assert_series_equal(full[col].iloc[:cut], prefix[col], check_names=False)
    assert full["timing_q50"].iloc[3] == pytest.approx(q50[3] - q50[:3].mean())


def test_the_whole_evidence_on_a_small_panel():
    rng = np.random.default_rng(11)
    bars, signals = {}, {}
    n = 24 * 5
    for j in range(8):
        closes = 100 * np.cumprod(1 + rng.normal(0, 0.02, n + 30))
        rets = closes[2:] / closes[1:-1] - 1  # the return from the fill bar: what a good forecast knows
        bars[f"p{j}"] = bars_of(closes, missing=(50 + j,))
        signals[f"p{j}"] = signals_of(rets[:n] + rng.normal(0, 0.02, n))
    cfg = config(min_pools=5, quantiles=4, horizons=(1, 4), null_draws=100)
    panel = evidence_panel(bars, signals, cfg)
    ev = signal_evidence(panel, cfg, cost_per_side=0.003)
    assert ev.summary["er_top_minus_all"] > 0 and ev.summary["er_ic"] > 0.3
    assert ev.summary["null_p_er_top_minus_all"] < 0.05
    s = ev.spreads.loc[("E[r]", 1)]
    assert s["top_minus_all_low"] <= s["top_minus_all"] <= s["top_minus_all_high"]
    assert s["breakeven_per_side"] == pytest.approx(s["top_minus_all"] / (2 * s["turnover"]))
    assert ev.exclusions.loc["fill bar missing (no swap to fill at)", "1 bar"] == 8
    assert {"market drift (mean of all pools)", "E[r] within width terciles"} <= set(ev.decomposition.index)


def test_no_bar_with_enough_pools_says_so_instead_of_failing():
    """A database too short or too small for a cross-section (the sample's 4h series, one pool):
    the stage still yields a result, with no ranking, no picture and the reason for each pool."""
    from q50_assets.lineage.common.gate import Blocked
    from q50_assets.lineage.signal_evidence.rules import evidence_sections
    from q50_assets.lineage.signal_evidence.step import evidence_step
    from q50_assets.settings import Settings

    result = evidence_step({"a": Blocked("a", "ohlcv_bars", "never materialized: no stored value")}, {"a": None},
                           Settings())
    assert result.pools_used == 0 and "never materialized" in result.pools_left_out["a"]
    assert result.evidence.summary["bars_with_min_pools"] == 0 and result.pngs == {}
    assert result.evidence.decomposition.empty and result.evidence.null.empty
    texts = [content for kind, content in evidence_sections(result.evidence, result.config) if kind == "p"]
    assert any("nothing to rank" in t for t in texts)
