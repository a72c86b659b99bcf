"""Tests of q50_assets.lineage.backtest.permutation: the vectorised replay matches Nautilus' fills on shifted
schedules; shifts keep the holding runs; p-values by hand."""

import numpy as np
import pandas as pd
import pytest

from q50_assets.lineage.backtest.engine import BacktestSpec, prepare_bars, build_pool_instrument, run_pool_backtest
from q50_assets.lineage.backtest.permutation import (ReplayMarket, ReplayParams, circular_shifts, grid_mean_return, p_value,
                                             permutation_null, pooled_p_value, replay_targets)
from q50_assets_tests.lineage.q50_fixtures import make_bars


def _thin_pool(n=260, seed=1):
    rng = np.random.default_rng(seed)
    bars = make_bars(0.02 * np.exp(np.cumsum(rng.normal(0, 0.03, n))),
                     volume=rng.choice([0.0, 300.0, 4_000.0, 60_000.0], n, p=[0.05, 0.25, 0.4, 0.3]))
    return bars.drop(bars.index[rng.random(n) < 0.05])  # hours without swaps


def _schedule(n, seed):
    """A strategy-like schedule: rare entries of varied size, exits, NaN (= keep) elsewhere."""
    rng = np.random.default_rng(seed)
    taus = np.full(n, np.nan)
    u = rng.random(n)
    taus[u < 0.05] = 0.0
    entries = (u > 0.05) & (u < 0.11)
    taus[entries] = rng.choice([0.004, 0.05, 0.3, 1.0], entries.sum())
    return taus


@pytest.mark.parametrize("latency, fill_price", [(0, "close"), (1, "close"), (1, "typical"), (2, "close")])
def test_replay_matches_nautilus_on_shifted_schedules(latency, fill_price):
    """Nautilus (TargetStrategy) and the vectorised replay on a sample of circularly shifted
    schedules: the same fills, the same equity after every bar (cents booked the same way)."""
    bars = _thin_pool()
    spec = BacktestSpec(reserve_usd=80_000.0, fill_latency_bars=latency, fill_price=fill_price,
                        max_volume_share=0.1, min_trade_fraction=0.02)
    built = build_pool_instrument("solana_replay", prepare_bars(bars), spec)
    market = ReplayMarket(built.market(spec, "close" if latency == 0 else fill_price), spec.cost_model())
    params = ReplayParams(10_000.0, 0.0025, 0.1, 0.02, latency, 0.1)
    taus = _schedule(len(bars), seed=3)
    start = 20
    taus[:start] = np.nan
    shifts = circular_shifts(len(bars) - start, 6, seed=5)
    span = np.arange(len(bars) - start)
    shifted = np.full((len(bars), len(shifts)), np.nan)
    for j, k in enumerate(shifts):
        shifted[start:, j] = taus[start:][(span - k) % len(span)]
    replay = replay_targets(market, params, shifted, start)
    for j in range(len(shifts)):
        out = run_pool_backtest("solana_replay", bars, pd.Series(shifted[:, j], index=bars.index), spec)
        assert replay.fills[j] == len(out.fills) > 3
        np.testing.assert_allclose(replay.equity[:, j], out.equity["equity"].to_numpy(), rtol=0, atol=1e-6)


def test_circular_shifts_keep_holding_runs_and_exposure():
    taus = _schedule(200, seed=8)
    shifts = circular_shifts(200, 50, seed=2)
    assert shifts.min() >= 1 and shifts.max() <= 199 and len(set(shifts)) > 20
    for k in shifts[:10]:
        rolled = np.roll(taus, k)
        # The same decisions, the same sizes: the schedule is only moved in time.
        assert sorted(rolled[~np.isnan(rolled)]) == sorted(taus[~np.isnan(taus)])
    assert (circular_shifts(1, 5, seed=0) == 0).all()  # a single bar cannot move


def test_p_values_by_hand():
    null = np.array([0.1, 0.2, 0.3, 0.4])
    assert p_value(0.35, null) == pytest.approx((1 + 1) / 5)  # only 0.4 is at least as good
    assert p_value(1.0, null) == pytest.approx(1 / 5)  # never 0: the strategy counts itself
    assert p_value(0.0, null) == 1.0
    stat, p, pooled = pooled_p_value([0.3, 0.1], [np.array([0.0, 0.4, 0.2]), np.array([0.2, 0.0, 0.0])])
    assert stat == pytest.approx(0.2)
    np.testing.assert_allclose(pooled, [0.1, 0.2, 0.1])
    assert p == pytest.approx((1 + 1) / 4)  # the pooled null's draws >= 0.2: one
    with pytest.raises(ValueError):
        pooled_p_value([0.1, 0.2], [np.zeros(3), np.zeros(4)])


def test_grid_mean_return_counts_missing_bars_as_flat():
    equity = np.array([[100.0], [110.0], [99.0]])
    # Three real bars inside a grid of five (two hours without swaps): returns +10 %, -10 % and 0.
    got = grid_mean_return(equity, np.arange(3), start=1, grid_bars=5, base=100.0)
    assert got[0] == pytest.approx((0.1 - 0.1) / 5)


def test_permutation_null_of_a_schedule():
    bars = _thin_pool(seed=4)
    spec = BacktestSpec(reserve_usd=80_000.0, fill_latency_bars=1, max_volume_share=0.1)
    built = build_pool_instrument("solana_null", prepare_bars(bars), spec)
    market = ReplayMarket(built.market(spec), spec.cost_model())
    params = ReplayParams(10_000.0, 0.0025, 0.1, 0.02, 1, 0.1)
    taus = _schedule(len(bars), seed=6)
    taus[:30] = np.nan
    grid = 260
    out = run_pool_backtest("solana_null", bars, pd.Series(taus, index=bars.index), spec)
    start = 30
    base = out.equity["equity"].iloc[start - 1]
    statistic = float(grid_mean_return(out.equity["equity"].to_numpy()[:, None], None, start, grid, base)[0])
    null = permutation_null(market, params, taus, start, grid, statistic, draws=1000, seed=9)
    assert null.draws == 1000 and null.null.shape == (1000,)
    assert null.replayed_statistic == pytest.approx(statistic, abs=1e-12)  # the replay is the Nautilus run
    assert 0 < null.p_value <= 1 and null.p_value == p_value(statistic, null.null)
    assert np.std(null.null) > 0  # timing matters on a random walk: the draws differ
    again = permutation_null(market, params, taus, start, grid, statistic, draws=1000, seed=9)
    np.testing.assert_array_equal(again.null, null.null)  # seeded
