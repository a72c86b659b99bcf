"""The basket through real NautilusTrader engines: gross equals net when fee and impact are zero,
the accounting adds up, and the asset materializes with its check and metadata."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import logging

from q50_assets.lineage.basket.step import GROSS, NET, VARIANTS, basket_step, variant_name
from q50_assets.lineage.common.costs import ReserveSeries
from q50_assets.settings import Settings
from q50_assets_tests.lineage.q50_fixtures import H, random_walk

POOLS = [f"pool_{i}" for i in range(5)]


class Reserves:
    """The collector port's reserve look-up, the only thing the basket asks of it."""

    def __init__(self, fallback):
        self.fallback = fallback
        self.asked = []

    def pool_reserves_many(self, pool_ids, fallback_usd):
        self.asked.append(list(pool_ids))
        return {p: (ReserveSeries(None, fallback_usd=self.fallback), 0) for p in pool_ids}


def inputs(seed: int = 1, bars: int = 96):
    ohlcv, signals = {}, {}
    rng = np.random.default_rng(seed)
    for i, pool in enumerate(POOLS):
        b = random_walk(bars, seed + i, vol=0.03, volume=1e6)
        ohlcv[pool] = SimpleNamespace(pool_id=pool, safe=True, bars=b, blocking_failures=[])
        q50 = rng.normal(0.002, 0.01, bars)
        signals[pool] = pd.DataFrame({"q10": q50 - 0.02, "q50": q50, "q90": q50 + 0.02,
                                      "vol_risk": rng.uniform(1e-4, 1e-3, bars), "known_at": b.index + H,
                                      "reserve_usd": 2e5}, index=b.index)
    return ohlcv, signals


def settings(fee: float, fallback):
    return Settings.model_validate({
        "signals": {"swap_fee": fee},
        # No fallback: no reserve assumed, so no impact where none was observed.
        "nautilus_trader": {"backtest": {"fallback_reserve_usd": fallback} if fallback is not None
                            else {"fallback_reserve": "none"}},
        "basket": {"top_k": 2, "min_candidate_pools": 3, "rebalance_bars": 4, "cost_filter": False,
                   "basket_capital_usd": 1000.0, "min_held_bars": 24},
        "evaluation": {"bootstrap_samples": 200}})


def test_gross_equals_net_when_fee_and_impact_are_zero():
    ohlcv, signals = inputs()
    result = basket_step(ohlcv, signals, Reserves(None), settings(0.0, None), "run")
    assert result.status == "ok"
    for basket in ("forecast", "volatility"):
        net, gross = (result.bar_returns[variant_name(basket, c)] for c in (NET, GROSS))
        np.testing.assert_array_equal(net.to_numpy(), gross.to_numpy())
        assert result.metrics.loc[variant_name(basket, NET), "round_trips"] > 3
        assert result.metrics.loc[variant_name(basket, NET), "cost_usd"] == 0.0


def test_costs_make_net_worse_and_the_accounting_adds_up():
    ohlcv, signals = inputs()
    collector = Reserves(2e5)
    result = basket_step(ohlcv, signals, collector, settings(0.0025, 2e5), "run")
    m = result.metrics
    assert list(m.index) == [variant_name(b, c) for b, c in VARIANTS]
    for basket in ("forecast", "volatility"):
        net, gross = m.loc[variant_name(basket, NET)], m.loc[variant_name(basket, GROSS)]
        assert net["cost_usd"] > 0 and net["total_return"] < gross["total_return"]
        assert gross["cost_usd"] == pytest.approx(0.0, abs=1e-6)
    # The basket compounds its per-bar returns (1/k per slot); the interval holds its estimate; no
    # slot holds more than its own account, so the basket never holds more than its capital.
    for name, row in m.iterrows():
        r = result.bar_returns[name].to_numpy()
        assert row["total_return"] == pytest.approx(float((1 + r).prod() - 1), abs=1e-12)
        assert result.exposure[name].max() <= 1.0 + 1e-9
        assert row["mean_bar_return_low"] <= row["mean_bar_return"] <= row["mean_bar_return_high"]
    # At most k members at once, each with capital / k: never more slots than k.
    for basket, membership in result.memberships.items():
        assert membership.members.sum(axis=1).max() <= 2
    assert result.bar_returns.index[0] == result.span_start
    assert collector.asked and set(collector.asked[0]) <= set(POOLS)


def _context():
    # The asset's body with the two things it reads of its context (the full graph runs in the demo).
    return SimpleNamespace(run=SimpleNamespace(run_id="test-run"), log=logging.getLogger("basket-test"))


def test_the_asset_materializes_with_its_check_and_metadata():
    from q50_assets.lineage.basket.asset import basket_backtest

    body = basket_backtest.op.compute_fn.decorated_fn
    ohlcv, signals = inputs(seed=4)
    events = list(body(_context(), ohlcv_bars=ohlcv, q50_signals=signals, collector=Reserves(2e5),
                                  settings=settings(0.0025, 2e5)))
    output, check = events
    assert output.value.status == "ok"
    assert "forecast_net_mean_bar_return_bp" in output.metadata and "table" in output.metadata
    assert check.check_name == "basket_held_enough_bars" and check.passed
    # Too few candidates at every rebalance: no basket, and the check fails (it can).
    few = {p: signals[p] for p in POOLS[:2]}
    events = list(body(_context(), ohlcv_bars=ohlcv, q50_signals=few, collector=Reserves(2e5),
                                  settings=settings(0.0025, 2e5)))
    assert events[0].value.status == "no_basket" and not events[1].passed
