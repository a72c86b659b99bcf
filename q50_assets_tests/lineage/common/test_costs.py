"""Tests of q50_assets.lineage.common.costs: the one cost model, by hand; as-of liquidity. The proof that
Nautilus charges what the decision expected is in test_backtest.py
(test_decision_and_fill_read_one_cost_model)."""

import math
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest

from q50_assets.lineage.common.costs import (MEASURED_SOURCES, RESERVE_SOURCES, SOURCE_FALLBACK, CostModel,
                                             FallbackReserve, NoReserveObservations, ReserveSeries, execution_price,
                                             fallback_reserve_of, impact_fraction_of_reserve, round_trip_cost,
                                             trade_cost)

T0 = pd.Timestamp("2025-03-01", tz="UTC")
H = pd.Timedelta(hours=1)


def test_trade_cost_by_hand():
    # 1 000 USD into a 100 000 USD pool (Y = 50 000): u = 0.02.
    buy = trade_cost(1_000.0, True, 100_000.0, 0.0025, 0.1)
    assert buy.u == pytest.approx(0.02)
    assert buy.impact_usd == pytest.approx(1_000 * 0.02 / 0.98)  # 20.41
    assert buy.fee_usd == pytest.approx(0.0025 * 1_000 / 0.98)
    assert buy.total_usd == pytest.approx(1_000 * (0.02 + 0.0025) / 0.98)
    assert buy.fraction == pytest.approx(buy.total_usd / 1_000)
    sell = trade_cost(1_000.0, False, 100_000.0, 0.0025, 0.1)
    assert sell.total_usd == pytest.approx(1_000 * (0.02 + 0.0025) / 1.02)
    assert round_trip_cost(1_000.0, 100_000.0, 0.0025, 0.1) == pytest.approx(buy.total_usd + sell.total_usd)
    # No reserve: the fee alone; zero size: the marginal rate.
    assert trade_cost(1_000.0, True, None, 0.0025, 0.1).total_usd == pytest.approx(2.5)
    assert trade_cost(0.0, True, 100_000.0, 0.0025, 0.1).fraction == 0.0025
    # The cap: u never exceeds max_reserve_fraction.
    assert trade_cost(1e9, True, 100_000.0, 0.0025, 0.1).u == 0.1
    assert impact_fraction_of_reserve(1_000.0, None, 0.1) == 0.0


def test_trade_cost_is_the_fill_price_times_quantity():
    """The decision's cost and the fill's price are the same constant-product formula: the
    impact of buying q tokens at p is q * (execution_price - p)."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        p, q, reserve = rng.uniform(1e-3, 10), rng.uniform(1, 1e4), rng.uniform(1e4, 1e7)
        for is_buy in (True, False):
            px = float(execution_price(p, q, is_buy, reserve / 2, 0.1, 12))
            cost = trade_cost(q * p, is_buy, reserve, 0.0025, 0.1)
            assert abs(px - p) * q == pytest.approx(cost.impact_usd, rel=1e-9, abs=q * 1e-12)
            assert 0.0025 * px * q == pytest.approx(cost.fee_usd, rel=1e-9, abs=1e-9)
    # Rounded against the trader.
    assert execution_price(2.2, 2272.727272, True, 500_000.0, 0.1, 5) == Decimal("2.22223")
    assert execution_price(2.2, 1000.0, False, 500_000.0, 0.1, 5) <= Decimal(2.2 / (1 + 2200 / 500_000))


def test_reserve_series_as_of_never_a_later_observation():
    obs = pd.DataFrame({
        "observed_at": [T0 + 5 * H, T0 + 2 * H, T0 + 9 * H],
        "reserve_usd": [80_000.0, 60_000.0, 120_000.0],
        "source": ["collector_history", "collector_history_enhanced", "collector_snapshot"],
    })
    series = ReserveSeries(obs, fallback_usd=50_000.0)
    assert series.at_ns((T0 + 2 * H).value - 1) == (50_000.0, "fallback")  # before the first: assumed
    assert series.at_ns((T0 + 2 * H).value) == (60_000.0, "collector_history_enhanced")
    assert series.at_ns((T0 + 5 * H).value - 1) == (60_000.0, "collector_history_enhanced")
    assert series.at_ns((T0 + 7 * H).value) == (80_000.0, "collector_history")
    assert series.at_ns((T0 + 100 * H).value) == (120_000.0, "collector_snapshot")
    times = pd.DatetimeIndex([T0, T0 + 3 * H, T0 + 9 * H])
    values, sources = series.sample(times)
    assert values.tolist() == [50_000.0, 60_000.0, 120_000.0]
    assert sources.tolist() == ["fallback", "collector_history_enhanced", "collector_snapshot"]
    assert series.sample(times.as_unit("ns").asi8)[0].tolist() == values.tolist()
    # Sensitivity: only the ASSUMED reserve scales.
    half = series.scaled_fallback(0.5)
    assert half.at_ns(T0.value) == (25_000.0, "fallback")
    assert half.at_ns((T0 + 3 * H).value) == (60_000.0, "collector_history_enhanced")
    assert half.scaled_fallback(4.0).at_ns(T0.value)[0] == 100_000.0
    # No observation and no fallback: no impact, said so.
    assert ReserveSeries(None, None).at_ns(T0.value) == (None, "none")
    assert np.isnan(ReserveSeries(None, None).sample(times)[0]).all()


@pytest.mark.parametrize("bad, match", [
    ({"reserve_usd": [0.0]}, "row 0"), ({"reserve_usd": [np.nan]}, "row 0"), ({"observed_at": [pd.NaT]}, "row 0"),
    ({"source": ["guess"]}, "unknown source"),
])
def test_reserve_series_refuses_bad_rows(bad, match):
    obs = pd.DataFrame({"observed_at": [T0], "reserve_usd": [1_000.0], "source": ["collector_snapshot"]})
    for column, values in bad.items():
        obs[column] = values
    with pytest.raises(ValueError, match=match):
        ReserveSeries(obs, fallback_usd=50_000.0)
    with pytest.raises(ValueError):
        ReserveSeries(None, fallback_usd=-1.0)


def test_cost_model_reads_the_reserve_at_the_time():
    obs = pd.DataFrame({"observed_at": [T0 + 3 * H], "reserve_usd": [400_000.0], "source": ["collector_history"]})
    model = CostModel(0.0025, 0.1, ReserveSeries(obs, fallback_usd=40_000.0))
    early, late = model.trade_cost(2_000.0, True, T0.value), model.trade_cost(2_000.0, True, (T0 + 4 * H).value)
    assert early.total_usd == pytest.approx(trade_cost(2_000.0, True, 40_000.0, 0.0025, 0.1).total_usd)
    assert late.total_usd == pytest.approx(trade_cost(2_000.0, True, 400_000.0, 0.0025, 0.1).total_usd)
    assert model.fill_price(1.0, 2_000.0, True, T0.value, 8) == execution_price(1.0, 2_000.0, True, 20_000.0, 0.1, 8)
    assert CostModel().trade_cost(100.0, True, T0.value).impact_usd == 0.0
    with pytest.raises(ValueError):
        CostModel(fee_rate=1.0)
    assert math.isclose(model.with_reserves(None).trade_cost(100.0, False, 0).total_usd, 0.25)


# ------------------------------------------------------------------ the assumed reserve

def test_assumed_reserve_statistics_override_and_bad_rows():
    levels = pd.DataFrame({"pool_id": ["a", "a", "a", "b", "c", "d"],
                           "reserve_usd": [1.0, 2.0, 100.0, 10.0, 40.0, 1_000.0]})
    # Pool medians 2, 10, 40, 1,000: a pool observed often weighs no more than one observed once.
    median = fallback_reserve_of(levels)
    assert (median.usd, median.statistic, median.pools, median.observations) == (25.0, "median", 4, 6)
    assert fallback_reserve_of(levels, 0.5) == FallbackReserve(25.0, "quantile 0.5", 4, 6)
    assert fallback_reserve_of(levels, 0.25).usd == pytest.approx(8.0)
    assert fallback_reserve_of(levels, "median", override_usd=7.0) == FallbackReserve(7.0, "setting fallback_reserve_usd")
    assert fallback_reserve_of(levels.iloc[0:0], "none").usd is None
    with pytest.raises(NoReserveObservations, match="no observation of any pool's reserve"):
        fallback_reserve_of(levels.iloc[0:0])
    with pytest.raises(ValueError, match=r"row 1 \(pool 'a'\)"):
        fallback_reserve_of(levels.assign(reserve_usd=[1.0, 0.0, 1.0, 1.0, 1.0, 1.0]))
    for bad in (0.0, 1.0, "mean"):
        with pytest.raises(ValueError, match="fallback_reserve"):
            fallback_reserve_of(levels, bad)
    assert "median over 4 observed pools" in median.describe()


def test_every_source_a_series_emits_is_a_known_one():
    obs = pd.DataFrame({"observed_at": pd.to_datetime(["2025-09-01 01:00", "2025-09-01 02:00", "2025-09-01 03:00"],
                                                      utc=True),
                        "reserve_usd": [1.0, 2.0, 3.0], "source": list(MEASURED_SOURCES)})
    series = ReserveSeries(obs, fallback_usd=5.0)
    _, sources = series.sample(pd.date_range("2025-09-01 00:00", periods=4, freq="h", tz="UTC"))
    assert list(sources) == [SOURCE_FALLBACK, *MEASURED_SOURCES] and set(RESERVE_SOURCES) >= set(sources)
    with pytest.raises(ValueError, match="unknown source 'collector'"):
        ReserveSeries(obs.assign(source="collector"))
