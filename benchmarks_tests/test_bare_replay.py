"""Tests of benchmarks.bare_replay (bare Nautilus engines replaying a backtest's orders)."""

import math
import random
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest

from q50_assets.lineage.backtest.engine import BacktestSpec, prepare_bars, build_pool_instrument, run_pool_backtest
from benchmarks.bare_replay import (BARE_CAPITAL_MULTIPLIER, orders_from_outcome, replay_bare, same_orders,
                                             time_stage_vs_bare)
from q50_assets_tests.lineage.q50_fixtures import oracle_inputs

T0 = pd.Timestamp("2025-03-01", tz="UTC")
H = pd.Timedelta(hours=1)


def make_bars(closes, volume=50_000.0) -> pd.DataFrame:
    closes = np.asarray(closes, dtype=float)
    idx = pd.DatetimeIndex([T0 + i * H for i in range(len(closes))], name="open_time")
    opens = np.r_[closes[0], closes[:-1]]
    return pd.DataFrame({"open": opens, "high": np.maximum(opens, closes) * 1.01,
                         "low": np.minimum(opens, closes) * 0.99, "close": closes,
                         "volume": volume}, index=idx)


def random_walk(n, seed, start=1.0, vol=0.03, volume=50_000.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return make_bars(start * np.exp(np.cumsum(rng.normal(0.0, vol, n))), volume=volume)


def churny_targets(index, seed) -> pd.Series:
    rng = np.random.default_rng(seed)
    return pd.Series(rng.choice([0.0, 0.2, 0.5, 0.8], size=len(index)), index=index)


def test_replay_submits_the_same_orders_and_fills():
    bars = random_walk(120, seed=5)
    spec = BacktestSpec(reserve_usd=250_000.0)
    out = run_pool_backtest("solana_replayPool", bars, churny_targets(bars.index, 1), spec)
    orders = orders_from_outcome(out)
    assert len(orders) == len(out.fills) > 20
    assert list(orders.columns) == ["ts_ns", "side", "qty"]

    res = replay_bare("solana_replayPool", bars, orders, spec)
    assert res["bars"] == len(bars) == out.bars.count
    assert res["orders"] == len(orders)
    # Orders below a quarter of the bar volume: one fill each, as in the backtest.
    assert res["fills"] == len(out.fills)
    got = res["orders_filled"]
    assert same_orders(got, orders)
    original = out.fills.sort_values("ts_event", kind="stable")
    assert got["side"].tolist() == original["order_side"].astype(str).tolist()
    assert [Decimal(q) for q in got["qty"]] == [Decimal(q) for q in original["last_qty"]]
    assert (got["ts_ns"].to_numpy() == pd.DatetimeIndex(original["ts_event"]).as_unit("ns").asi8).all()
    assert res["seconds"] >= res["engine_seconds"] > 0


def test_instrument_matches_backtest_for_lot_scaled_pool():
    closes = 4.2e-12 * np.array([1.0, 1.1, 1.2, 0.98, 1.05, 1.1, 1.15, 1.0])
    bars = make_bars(closes)
    targets = pd.Series([0.5, 0.0, 0.8, 0.8, 0.3, 0.0, 0.6, 0.0], index=bars.index)
    spec = BacktestSpec()
    out = run_pool_backtest("solana_tinyLots", bars, targets, spec)
    built = build_pool_instrument("solana_tinyLots", prepare_bars(bars), spec)
    assert (built.symbol, built.lot_tokens, built.price_precision, built.size_precision) == (
        out.symbol, out.lot_tokens, out.price_precision, out.size_precision)
    assert str(built.instrument_id) == out.instrument_id
    assert [b.ts_event for b in built.bars] == list(out.equity.index.as_unit("ns").asi8)
    res = replay_bare("solana_tinyLots", bars, orders_from_outcome(out), spec)
    assert res["bars"] == 8
    assert res["fills"] == len(out.fills) >= 4
    assert same_orders(res["orders_filled"], orders_from_outcome(out))


def test_low_volume_bars_split_fills_but_not_orders():
    # Default fill model: an order above the bar's close size fills in two parts (the rest one
    # tick through); the orders and their total quantities are still the backtest's.
    bars = random_walk(40, seed=2, volume=100.0)
    targets = pd.Series(np.where(np.arange(40) % 8 < 4, 0.5, 0.0), index=bars.index)
    out = run_pool_backtest("solana_thinPool", bars, targets, BacktestSpec())
    orders = orders_from_outcome(out)
    res = replay_bare("solana_thinPool", bars, orders, BacktestSpec())
    assert res["bars"] == 40
    assert res["orders"] == len(orders) == len(out.fills)
    assert res["fills"] == 2 * len(orders)  # every order here exceeds a quarter of ~100 USD volume
    assert same_orders(res["orders_filled"], orders)


def test_no_orders_and_bad_orders():
    bars = random_walk(30, seed=4)
    out = run_pool_backtest("solana_flatPool", bars, pd.Series(0.0, index=bars.index), BacktestSpec())
    orders = orders_from_outcome(out)
    assert orders.empty and list(orders.columns) == ["ts_ns", "side", "qty"]
    res = replay_bare("solana_flatPool", bars, orders, BacktestSpec())
    assert (res["bars"], res["fills"], res["orders"]) == (30, 0, 0)

    off_bar = pd.DataFrame({"ts_ns": [int((T0 + 30 * H + pd.Timedelta(minutes=1)).value)], "side": ["BUY"],
                            "qty": ["1.0"]})
    with pytest.raises(ValueError):
        replay_bare("solana_flatPool", bars, off_bar, BacktestSpec())
    bad_side = pd.DataFrame({"ts_ns": [int((T0 + H).value)], "side": ["HOLD"], "qty": ["1.0"]})
    with pytest.raises(ValueError):
        replay_bare("solana_flatPool", bars, bad_side, BacktestSpec())


def test_replay_keeps_global_random_state():
    bars = random_walk(10, seed=7)
    random.seed(123)
    expected = random.random()
    random.seed(123)
    replay_bare("solana_rngPool", bars, orders_from_outcome(
        run_pool_backtest("solana_rngPool", bars, pd.Series(0.5, index=bars.index), BacktestSpec())), BacktestSpec())
    assert random.random() == expected
    assert BARE_CAPITAL_MULTIPLIER >= 1.0


def test_time_stage_vs_bare_totals():
    """The benchmark's P2: the Q50 strategy's engine (decisions from its loaders, latency fills) vs a
    bare engine replaying its orders; the same orders reach both."""
    pools = []
    for i, n in enumerate((120, 150)):
        bars = random_walk(n, seed=10 + i)
        spec = BacktestSpec(reserve_usd=2_000_000.0, fill_latency_bars=1, max_volume_share=0.1)
        pools.append((f"solana_timed{i}", bars, oracle_inputs(bars, seed=20 + i), spec))
    res = time_stage_vs_bare(pools, warmup=False, repeats=2)
    assert res["pools"] == 2 and res["repeats"] == 2
    assert res["bars"] == 270
    assert res["fills_backtest"] == res["fills_bare"] == res["orders"] > 0
    assert res["orders_mismatch_pools"] == 0
    assert res["backtest_seconds"] > 0 and res["bare_seconds"] > 0
    assert math.isfinite(res["ratio"]) and res["ratio"] > 0
    assert math.isfinite(res["ratio_engine_only"]) and res["ratio_engine_only"] > 0
    # The benchmark merges this dict into a stage record whose "seconds" is the stage's own.
    assert "seconds" not in res
