"""Calendar-time block bootstrap, PSR / DSR, headline table, top-pool exclusion and round-trip
breakdowns: known answers on synthetic series, then the real sample's returns."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from q50_assets.lineage.common.costs import MEASURED_SOURCES, SOURCE_FALLBACK, SOURCE_NONE
from q50_assets.lineage.common.uncertainty import (
    BootstrapConfig,
    bin_sums,
    block_bootstrap,
    block_counts,
    breakdown,
    deflated_sharpe_ratio,
    edge_breakdowns,
    effective_sample_size,
    equal_weight_portfolio,
    expected_max_sharpe,
    headline_table,
    headline_with_and_without_top,
    liquidity_bucket,
    probabilistic_sharpe_ratio,
    time_bins,
    top_pools_by_return,
)
from q50_assets_tests.lineage.real_sample import real_backtest_frames

T0 = pd.Timestamp("2025-06-01", tz="UTC")
H = pd.Timedelta(hours=1)
FAST = BootstrapConfig(bootstrap_samples=300, bootstrap_seed=1)


def _ar1(rng, n, phi, sd):
    e = rng.normal(0, sd, n)
    x = np.empty(n)
    x[0] = e[0] / math.sqrt(1 - phi ** 2)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return x


def _mean_stat(s):
    return s["x"] / s["n"]


# ------------------------------------------------------------------ the engine

def test_block_counts_draw_whole_blocks_and_keep_the_sample_size():
    counts = block_counts(100, 24, 50, np.random.default_rng(0))
    assert counts.shape == (50, 100)
    assert (counts.sum(axis=1) == 100).all()
    # Every replicate draws 5 circular blocks of 24 consecutive bins, cut to 100: a block that wraps
    # past the end is one run at each end, so at most 5 + 1 runs of drawn bins.
    for row in counts:
        runs = np.flatnonzero(np.diff(np.r_[0, (row > 0).astype(int), 0]) == 1)
        assert 1 <= len(runs) <= 6
    with pytest.raises(ValueError, match="circular"):
        block_counts(100, 24, 5, np.random.default_rng(0), "moving")


@pytest.mark.parametrize("method", ["circular", "stationary"])
def test_every_bin_first_last_and_middle_is_drawn_equally_often(method):
    """Over 4,000 replicates of 100 bins in day-long blocks, every bin is drawn once per replicate
    on average. The per-bin mean has a standard error of about 0.03 here, so a tolerance of 0.1
    is > 3 s.e.; a moving-block bootstrap that does not wrap draws bin 0 about 0.06 times."""
    counts = block_counts(100, 24, 4000, np.random.default_rng(11), method)
    per_bin = counts.mean(axis=0)
    assert np.abs(per_bin - 1.0).max() < 0.1, per_bin
    for b in (0, 50, 99):
        assert per_bin[b] == pytest.approx(1.0, abs=0.1)
    # Seeded: the same seed draws the same replicates.
    np.testing.assert_array_equal(block_counts(100, 24, 20, np.random.default_rng(3), method),
                                  block_counts(100, 24, 20, np.random.default_rng(3), method))


def test_time_bins_follow_calendar_time_and_refuse_bad_times():
    times = pd.DatetimeIndex([T0, T0 + 3 * H, T0 + 3 * H, T0 + 50 * H])
    bins = time_bins(times, 3600)
    assert bins.bin_of_row.tolist() == [0, 3, 3, 50]
    assert bins.n_bins == 51 and bins.block_bins == 24
    assert time_bins(times, 3600, pd.Timedelta(days=2)).block_bins == 48
    with pytest.raises(ValueError, match="tz-aware"):
        time_bins(times.tz_localize(None), 3600)
    with pytest.raises(ValueError, match="NaT"):
        time_bins(pd.DatetimeIndex([T0, pd.NaT]), 3600)
    with pytest.raises(ValueError, match="one day"):
        BootstrapConfig(bootstrap_block_days=0.25)


def test_bin_sums_by_group():
    bins = time_bins(pd.DatetimeIndex([T0, T0, T0 + H, T0 + 2 * H]), 3600)
    s = bin_sums(bins, np.array([1.0, 2.0, 4.0, np.nan]), np.array([0, 1, 1, 0]), 2)
    np.testing.assert_array_equal(s, [[1, 2], [0, 4], [0, 0]])  # NaN adds nothing


def test_interval_covers_a_known_mean_at_about_the_nominal_rate():
    """Hourly AR(1) returns (phi 0.8) of 3 correlated pools with mean 0.001: the 95 % block interval
    covers the mean in about 95 % of 200 samples; resampling single bars (ignoring the serial
    correlation) covers it far less often, which is why blocks are a day or more."""
    rng = np.random.default_rng(7)
    n, mu = 24 * 40, 0.001
    times = pd.DatetimeIndex([T0 + i * H for i in range(n)] * 3)
    bins = time_bins(times, 3600)
    covered_block = covered_single = 0
    trials = 200
    for _ in range(trials):
        common = _ar1(rng, n, 0.8, 0.01)
        x = np.concatenate([mu + common + _ar1(rng, n, 0.8, 0.005) for _ in range(3)])
        sums = {"x": bin_sums(bins, x)[:, 0], "n": bin_sums(bins, np.ones_like(x))[:, 0]}
        iv = block_bootstrap(sums, _mean_stat, bins.block_bins, FAST)
        covered_block += iv.low <= mu <= iv.high
        single = block_bootstrap(sums, _mean_stat, 1, FAST)
        covered_single += single.low <= mu <= single.high
        assert iv.estimate == pytest.approx(x.mean())
    assert 0.88 <= covered_block / trials <= 0.99
    assert covered_single / trials < 0.8


def test_too_short_a_sample_has_no_interval():
    bins = time_bins(pd.DatetimeIndex([T0 + i * H for i in range(30)]), 3600)
    x = np.arange(30.0)
    iv = block_bootstrap({"x": bin_sums(bins, x)[:, 0], "n": np.ones(30)}, _mean_stat, bins.block_bins, FAST)
    assert iv.estimate == pytest.approx(14.5)
    assert np.isnan(iv.low) and np.isnan(iv.high)


# ------------------------------------------------------------------ Sharpe

def test_psr_matches_the_closed_form_for_normal_returns():
    rng = np.random.default_rng(0)
    r = rng.normal(0.02, 1.0, 5000)
    sr = r.mean() / r.std(ddof=1)
    z = (r - r.mean()) / r.std()
    skew, kurt = np.mean(z ** 3), np.mean(z ** 4)
    expected = NormalDist().cdf(sr * math.sqrt(len(r) - 1) / math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr ** 2))
    assert probabilistic_sharpe_ratio(r) == pytest.approx(expected)
    assert probabilistic_sharpe_ratio(-r) == pytest.approx(1 - expected, abs=1e-3)
    assert math.isnan(probabilistic_sharpe_ratio([0.0, 0.0, 0.0]))
    assert math.isnan(probabilistic_sharpe_ratio([1.0, 2.0]))


def _standardised(x, mean):
    return (x - x.mean()) / x.std(ddof=1) + mean


def test_fat_tails_lower_the_psr_of_the_same_sharpe():
    rng = np.random.default_rng(1)
    normal = rng.normal(0, 1, 200)
    fat = rng.standard_t(3, 200)
    # Symmetric by construction (skew 0), same mean and sd: the same Sharpe, only the tails differ.
    normal, fat = (_standardised(np.r_[x, -x], 0.3) for x in (normal, fat))
    assert normal.mean() / normal.std(ddof=1) == pytest.approx(fat.mean() / fat.std(ddof=1))
    assert probabilistic_sharpe_ratio(fat, 0.25) < probabilistic_sharpe_ratio(normal, 0.25) - 0.005


def test_deflated_sharpe_falls_as_trials_grow():
    r = _standardised(np.random.default_rng(2).normal(0, 1, 3000), 0.05)  # per-bar Sharpe exactly 0.05
    dsr = [deflated_sharpe_ratio(r, n) for n in (1, 2, 10, 100, 1000)]
    assert dsr[0] == pytest.approx(probabilistic_sharpe_ratio(r))  # one trial: nothing to deflate
    assert all(a > b for a, b in zip(dsr, dsr[1:]))
    assert dsr[0] > 0.99 and dsr[-1] < 0.5  # one honest try looks fine, the best of 1,000 does not
    assert expected_max_sharpe(1, 0.01) == 0
    assert expected_max_sharpe(100, 0.01) > expected_max_sharpe(10, 0.01) > 0
    # By hand: sqrt(0.5) * (0.4228 * z(0.99) + 0.5772 * z(1 - 1/(100 e))) = 0.7071 * (0.4228 * 2.3263
    # + 0.5772 * 2.6815) = 1.789.
    assert expected_max_sharpe(100, 0.5) == pytest.approx(1.789, abs=2e-3)
    with pytest.raises(ValueError):
        expected_max_sharpe(0, 0.1)


# ------------------------------------------------------------------ headline

def _frames(values: dict[str, list[float]], start=T0) -> pd.DataFrame:
    n = len(next(iter(values.values())))
    return pd.DataFrame(values, index=pd.DatetimeIndex([start + (i + 1) * H for i in range(n)], name="close_time"))


def test_headline_figures_are_the_defined_ones():
    a = _frames({"q50": [0.01, 0.0, -0.02, 0.03], "buy_and_hold": [0.1, -0.1, 0.2, 0.0]})
    b = _frames({"q50": [0.0, 0.02, 0.0], "buy_and_hold": [0.05, 0.05, -0.05]}, start=T0 + 2 * H)
    table = headline_table({"a": a, "b": b}, trials=3, config=FAST)
    q = table.loc["q50"]
    assert q["pools"] == 2 and q["bars"] == 7 and q["portfolio_bars"] == 5
    # Equal-weight portfolio: bars 1..2 only a; bars 3..4 both; bar 5 only b. Every figure is of it.
    port = np.array([0.01, 0.0, (-0.02 + 0.0) / 2, (0.03 + 0.02) / 2, 0.0])
    assert q["mean_bar_return"] == pytest.approx(port.mean())
    assert q["hit_rate"] == pytest.approx(2 / 3)  # 0.01, 0.025 up; -0.01 down; flat bars ignored
    assert q["sharpe"] == pytest.approx(port.mean() / port.std(ddof=1) * math.sqrt(24 * 365))
    assert q["psr_basis"] == "non-zero bars" and q["psr_n"] == 3
    assert q["trials"] == 3
    assert np.isnan(q["sharpe_low"])  # 5 hours cannot be resampled in day-long blocks
    pd.testing.assert_series_equal(equal_weight_portfolio({"a": a, "b": b})["q50"].reset_index(drop=True),
                                   pd.Series(port, name="q50"))


def test_headline_refuses_bad_frames_naming_the_pool():
    good = _frames({"q50": [0.0, 0.1]})
    with pytest.raises(ValueError, match="'bad'.*non-finite.*q50"):
        headline_table({"good": good, "bad": _frames({"q50": [0.0, np.nan]})}, trials=1)
    with pytest.raises(ValueError, match="'naive'.*tz-aware"):
        headline_table({"naive": good.tz_localize(None)}, trials=1)
    with pytest.raises(KeyError, match="cash"):
        headline_table({"good": good}, trials=1, variants=["cash"])


def test_one_pump_cannot_carry_the_table():
    rng = np.random.default_rng(4)
    n = 24 * 20
    frames = {f"p{i}": _frames({"buy_and_hold": rng.normal(-0.0005, 0.01, n)}) for i in range(19)}
    pump = rng.normal(-0.0005, 0.01, n)
    pump[100] = 20.0  # a x21 pump in one hour
    frames["pump"] = _frames({"buy_and_hold": pump})
    assert top_pools_by_return(frames, "buy_and_hold") == {"pump"}  # ceil(5 % of 20) = 1
    table = headline_with_and_without_top(frames, trials=1, config=FAST)
    full, trimmed = table.loc[("all pools", "buy_and_hold")], table.loc[("without top 5 %", "buy_and_hold")]
    assert full["mean_bar_return"] > 0 > trimmed["mean_bar_return"]
    assert trimmed["pools"] == 19 and trimmed["excluded"] == "pump" and full["excluded"] == ""
    assert trimmed["mean_bar_return_high"] < 0  # without it, the loss is clear


def test_exact_zeros_no_longer_inflate_the_psr():
    """A strategy flat on 9 bars of 10: the PSR is of its 100 non-zero bars (n = 100), not of all
    1,000 (which would claim ten times the evidence and a higher PSR)."""
    rng = np.random.default_rng(8)
    r = np.zeros(1000)
    r[::10] = rng.normal(0.002, 0.01, 100)
    table = headline_table({"a": _frames({"q50": r})}, trials=1, config=FAST)
    q = table.loc["q50"]
    nonzero = r[r != 0]
    assert q["psr_n"] == 100 and q["psr_n_effective"] <= 100
    assert q["psr"] == pytest.approx(probabilistic_sharpe_ratio(nonzero, n_effective=effective_sample_size(nonzero)))
    assert q["psr"] < probabilistic_sharpe_ratio(r)  # the old definition, inflated by the zeros
    assert q["dsr"] == pytest.approx(q["psr"])  # one trial: SR0 = 0


def test_psr_on_round_trips_and_too_few_round_trips_get_no_interval():
    rng = np.random.default_rng(9)
    n = 24 * 20
    frames = {"a": _frames({"q50": rng.normal(0.0002, 0.005, n)}), "b": _frames({"q50": rng.normal(0, 0.005, n)})}
    trips = pd.DataFrame({"pool_id": ["a"] * 8 + ["b"] * 7,
                          "entry_filled_at": [T0 + i * 30 * H for i in range(15)],
                          "net_return": rng.normal(0.01, 0.02, 15)})
    counts = pd.DataFrame({"q50": [8, 7]}, index=["a", "b"])
    table = headline_table(frames, trials=2, config=FAST, round_trips={"q50": trips}, round_trip_counts=counts)
    q = table.loc["q50"]
    assert q["psr_basis"] == "round trips" and q["psr_n"] == 15 and q["round_trips"] == 15 and not q["too_few"]
    ordered = trips.sort_values("entry_filled_at")["net_return"].to_numpy()
    assert q["psr"] == pytest.approx(probabilistic_sharpe_ratio(ordered, n_effective=effective_sample_size(ordered)))
    assert q["sharpe_low"] <= q["sharpe"] <= q["sharpe_high"]
    # Without pool a only 7 round trips remain: below the minimum of 10, no interval and no PSR/DSR.
    trimmed = headline_table(frames, trials=2, config=FAST, round_trips={"q50": trips}, round_trip_counts=counts,
                             exclude_pools={"q50": {"a"}}).loc["q50"]
    assert trimmed["too_few"] and trimmed["round_trips"] == 7 and trimmed["psr_n"] == 7
    assert np.isnan(trimmed["sharpe_low"]) and np.isnan(trimmed["mean_bar_return_high"]) and np.isnan(trimmed["psr"])
    assert np.isfinite(trimmed["mean_bar_return"])  # the estimate stays, only its interval goes


def test_effective_sample_size_shrinks_with_serial_correlation():
    rng = np.random.default_rng(10)
    iid = rng.normal(0, 1, 2000)
    assert 0.85 * 2000 <= effective_sample_size(iid) <= 2000
    assert effective_sample_size(_ar1(rng, 2000, 0.8, 1.0)) < 0.4 * 2000
    assert effective_sample_size(np.array([1.0, -1.0] * 500)) == 1000  # negative correlation: never more than n
    assert effective_sample_size([1.0, 2.0]) == 2


# ------------------------------------------------------------------ breakdowns

def _trips(groups, nets, days):
    return pd.DataFrame({"entry_filled_at": [T0 + pd.Timedelta(days=d) for d in days],
                         "net_return": nets, "signal_tier": groups})


def test_breakdown_known_means_hit_rates_and_an_all_row():
    rng = np.random.default_rng(5)
    days = np.repeat(np.arange(60), 10)
    tier = np.where(np.arange(600) % 3 == 0, "A", "D")
    net = np.where(tier == "A", 0.01, -0.005) + rng.normal(0, 0.01, 600)
    table = breakdown(_trips(tier, net, days), "signal_tier", config=FAST, order=["A", "B", "C", "D"])
    assert list(table.index) == ["A", "D", "all"]
    assert table.loc["A", "trades"] == 200 and table.loc["all", "trades"] == 600
    assert table.loc["A", "mean_net_return"] == pytest.approx(net[tier == "A"].mean())
    assert table.loc["D", "hit_rate"] == pytest.approx((net[tier == "D"] > 0).mean())
    assert table.loc["A", "mean_net_return_low"] <= 0.01 <= table.loc["A", "mean_net_return_high"]
    assert table.loc["A", "mean_net_return_low"] > table.loc["D", "mean_net_return_high"]  # clearly apart

    assert not table["too_few"].any() and (table["empty_replicates"] == 0).all()  # every day has A and D trips

    empty = breakdown(_trips([], [], []), "signal_tier", config=FAST)
    assert list(empty.index) == ["all"] and empty.loc["all", "trades"] == 0
    with pytest.raises(ValueError, match="non-finite net_return"):
        breakdown(_trips(["A", "B"], [0.1, np.inf], [0, 1]), "signal_tier")
    with pytest.raises(KeyError, match="vol_regime"):
        breakdown(_trips(["A"], [0.1], [0]), "vol_regime")


def test_breakdown_says_too_few_and_reports_empty_replicates():
    """Group C: 3 round trips (below the minimum of 10): no interval, the table says "too few (3)".
    Group B: 12 round trips in one hour of 60 days: a replicate of 60 day-long blocks misses that
    hour with probability (59/60)^60 = 0.36; those replicates are counted, not dropped silently."""
    from q50_assets.lineage.portfolio.report import breakdown_display

    rng = np.random.default_rng(12)
    days = list(np.repeat(np.arange(60), 5)) + [30] * 12 + [10, 20, 40]
    tier = ["A"] * 300 + ["B"] * 12 + ["C"] * 3
    table = breakdown(_trips(tier, rng.normal(0.0, 0.01, len(tier)), days), "signal_tier", config=FAST)
    assert table.loc["C", "too_few"] and table.loc["C", "trades"] == 3
    assert np.isnan(table.loc["C", "mean_net_return_low"]) and np.isnan(table.loc["C", "hit_rate_high"])
    assert not table.loc["B", "too_few"] and 0.28 <= table.loc["B", "empty_replicates"] <= 0.44
    assert table.loc["A", "empty_replicates"] == 0
    shown = breakdown_display(table)
    assert shown.loc["C", "mean net return"] == "too few (3)" and shown.loc["C", "hit rate"] == "too few (3)"
    assert "% of replicates empty" in shown.loc["B", "mean net return"]
    assert "[" in shown.loc["A", "mean net return"] and "too few" not in shown.loc["A", "mean net return"]


def test_liquidity_buckets_and_unmeasured_reserves():
    reserve = pd.Series([5_000.0, 50_000.0, 300_000.0, 2e6, np.nan, 50_000.0])
    source = pd.Series(["collector_snapshot"] * 5 + ["fallback"])
    assert liquidity_bucket(reserve, source).tolist() == ["< 10k", "50k-250k", "250k-1000k", ">= 1000k", "unknown",
                                                          "not measured"]


@pytest.mark.parametrize("source", MEASURED_SOURCES)
def test_every_measured_source_is_bucketed_by_its_value(source):
    # Each source the cost model emits for an observed reserve (costs.py ReserveSeries).
    reserve = pd.Series([5_000.0, 20_000.0, 60_000.0, 400_000.0, 3e6])
    labels = liquidity_bucket(reserve, pd.Series([source] * 5))
    assert labels.tolist() == ["< 10k", "10k-50k", "50k-250k", "250k-1000k", ">= 1000k"]


def test_assumed_missing_or_unrecognised_reserves_are_not_bucketed_by_value():
    reserve = pd.Series([20_000.0, np.nan, 20_000.0, 20_000.0, 20_000.0])
    source = pd.Series([SOURCE_FALLBACK, SOURCE_NONE, "collector", None, "collector_history"])
    assert liquidity_bucket(reserve, source).tolist() == ["not measured", "unknown", "unknown", "unknown", "10k-50k"]


def test_liquidity_breakdown_of_backtest_round_trips_counts_measured_reserves():
    # Round trips as the backtest writes them: every source the cost model emits.
    sources = [*MEASURED_SOURCES, SOURCE_FALLBACK, SOURCE_NONE]
    trips = pd.DataFrame({
        "entry_filled_at": pd.date_range("2025-09-01", periods=10, freq="7h", tz="UTC"),
        "net_return": np.linspace(-0.02, 0.03, 10), "vol_regime": "low", "momentum_regime": "ranging",
        "signal_tier": "A", "reserve_usd": [5_000.0, 20_000.0, 60_000.0, 5_000.0, np.nan] * 2,
        "reserve_source": sources * 2})
    table = edge_breakdowns(trips, config=FAST)["liquidity"]
    assert table.loc["< 10k", "trades"] == 2 and table.loc["10k-50k", "trades"] == 2
    assert table.loc["50k-250k", "trades"] == 2
    assert table.loc["not measured", "trades"] == 2 and table.loc["unknown", "trades"] == 2


# ------------------------------------------------------------------ the real sample

def test_real_sample_headline_and_breakdowns():
    bar_returns, trips, _ = real_backtest_frames()
    table = headline_with_and_without_top(bar_returns, trials=4, config=FAST)
    for (sample, variant), row in table.iterrows():
        if variant == "cash":
            assert row["mean_bar_return"] == 0 and np.isnan(row["hit_rate"])
            continue
        assert row["mean_bar_return_low"] <= row["mean_bar_return"] <= row["mean_bar_return_high"]
        assert row["sharpe_low"] <= row["sharpe"] <= row["sharpe_high"]
        assert 0 <= row["psr"] <= 1 and row["dsr"] <= row["psr"]
    # Real memecoin pools pump: buy & hold's mean falls without its best pool.
    bh_all = table.loc[("all pools", "buy_and_hold"), "mean_bar_return"]
    assert table.loc[("without top 5 %", "buy_and_hold"), "mean_bar_return"] < bh_all

    tables = edge_breakdowns(trips, config=FAST)
    assert set(tables) == {"vol_regime", "momentum_regime", "signal_tier", "liquidity"}
    for by, t in tables.items():
        assert t.loc["all", "trades"] == len(trips)
        assert t.drop(index="all")["trades"].sum() == len(trips)  # every round trip in exactly one group
        assert t.loc["all", "mean_net_return"] == pytest.approx(trips["net_return"].mean())
    assert "not measured" in tables["liquidity"].index
    assert list(tables["vol_regime"].index[:-1]) == [v for v in ("low", "medium", "high", "extreme", "unknown")
                                                      if v in set(trips["vol_regime"])]
