"""The capacity curve's definitions on hand-built round trips: the one cost model per cell, the
limits at zero size and at infinite liquidity, monotone in size and in reserve, intervals, too few
trips, bad rows named."""

import math

import numpy as np
import pandas as pd
import pytest

from q50_assets.lineage.common.costs import round_trip_cost
from q50_assets.lineage.common.uncertainty import BootstrapConfig
from q50_assets.lineage.portfolio.capacity import capacity_curve, capacity_png

FAST = BootstrapConfig(bootstrap_samples=200, bootstrap_seed=3)
CAP = 0.1


def _trips(n: int = 60, seed: int = 0, reserve=20_000.0, source="collector_snapshot") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "entry_filled_at": pd.date_range("2025-09-01", periods=n, freq="5h", tz="UTC"),
        "open": False,
        "gross_return": rng.normal(0.01, 0.03, n),
        "net_return": rng.normal(0.004, 0.03, n),
        "notional_usd": rng.uniform(50, 500, n),
        "reserve_usd": reserve if np.isscalar(reserve) else list(reserve),
        "reserve_source": source,
    })


def test_each_cell_is_the_mean_gross_minus_the_cost_models_round_trip_at_that_size_and_reserve():
    trips = _trips(reserve=np.linspace(3_000, 300_000, 60))
    curve = capacity_curve(trips, fee_rate=0.0025, max_reserve_fraction=CAP, sizes=(10.0, 1_000.0),
                           factors=(0.1, 1.0, 10.0), config=FAST)
    for (s, m), row in curve.table.iterrows():
        expected = np.mean([g - round_trip_cost(s, m * r, 0.0025, CAP) / s
                            for g, r in zip(trips["gross_return"], trips["reserve_usd"])])
        assert row["net_edge"] == pytest.approx(expected, rel=1e-12)
        assert row["net_edge_low"] <= row["net_edge"] <= row["net_edge_high"]
        assert row["trips"] == 60 and row["status"] == "ok"
    gross = curve.yardsticks.loc["mean gross return"]
    assert gross["estimate"] == pytest.approx(trips["gross_return"].mean())
    assert curve.yardsticks.loc["mean realised net return", "estimate"] == pytest.approx(trips["net_return"].mean())


def test_zero_fee_and_a_vanishing_size_give_the_gross_and_size_only_costs_more():
    trips = _trips()
    curve = capacity_curve(trips, fee_rate=0.0, max_reserve_fraction=CAP, sizes=(1e-6, 10.0, 100.0, 1_000.0, 10_000.0),
                           factors=(0.1, 1.0, 10.0), config=FAST)
    tiny = curve.table.xs(1e-6, level="size_usd")["net_edge"]
    assert np.allclose(tiny, trips["gross_return"].mean(), atol=1e-9)
    for m in (0.1, 1.0, 10.0):
        by_size = curve.table.xs(m, level="reserve_factor")["net_edge"].to_numpy()
        assert (np.diff(by_size) <= 1e-15).all()  # a bigger trade never earns more per USD
    for s in (10.0, 1_000.0):
        by_reserve = curve.table.xs(s, level="size_usd")["net_edge"].to_numpy()
        assert (np.diff(by_reserve) >= -1e-15).all()  # a deeper pool never costs more
    # With a fee: the limit at size -> 0 is the gross less the fee on both legs.
    with_fee = capacity_curve(trips, fee_rate=0.003, max_reserve_fraction=CAP, sizes=(1e-6,), factors=(1.0,), config=FAST)
    assert with_fee.table["net_edge"].iloc[0] == pytest.approx(trips["gross_return"].mean() - 2 * 0.003, abs=1e-8)


def test_beyond_the_impact_cap_the_cost_stops_growing_and_says_so():
    trips = _trips(reserve=2_000.0)  # quote reserve 1,000 USD: the cap (10 %) binds from 100 USD
    curve = capacity_curve(trips, fee_rate=0.0025, max_reserve_fraction=CAP, sizes=(10.0, 1_000.0, 10_000.0),
                           factors=(1.0,), config=FAST)
    t = curve.table.xs(1.0, level="reserve_factor")
    assert t.loc[10.0, "capped_share"] == 0 and t.loc[1_000.0, "capped_share"] == 1
    assert t.loc[1_000.0, "net_edge"] == pytest.approx(t.loc[10_000.0, "net_edge"])


def test_no_reserve_pays_the_fee_only_and_assumed_reserves_are_counted():
    trips = _trips(n=40)
    trips["reserve_usd"] = [np.nan] * 20 + [5_000.0] * 20
    trips["reserve_source"] = ["none"] * 20 + ["fallback"] * 20
    trips.loc[0, "open"] = True  # left out: it has not paid its exit
    curve = capacity_curve(trips, fee_rate=0.0025, max_reserve_fraction=CAP, sizes=(100.0,), factors=(0.1, 10.0),
                           min_trips=10, config=FAST)
    assert curve.trips == 39 and curve.open_trips_left_out == 1
    assert curve.assumed_reserve_trips == 20 and curve.assumed_reserves_usd == (5_000.0,)
    closed = trips.iloc[1:]
    for m in (0.1, 10.0):
        expected = np.mean([g - round_trip_cost(100.0, None if math.isnan(r) else m * r, 0.0025, CAP) / 100.0
                            for g, r in zip(closed["gross_return"], closed["reserve_usd"])])
        assert curve.table.loc[(100.0, m), "net_edge"] == pytest.approx(expected)


def test_too_few_trips_give_no_figure_and_bad_rows_are_named():
    curve = capacity_curve(_trips(n=12), fee_rate=0.0025, max_reserve_fraction=CAP, config=FAST)
    assert not curve.enough and curve.table["net_edge"].isna().all()
    assert (curve.table["status"] == "too few (12 < 30 trips)").all()
    assert capacity_png(curve)[:8] == b"\x89PNG\r\n\x1a\n"
    bad = _trips()
    bad.loc[7, "gross_return"] = np.nan
    with pytest.raises(ValueError, match=r"rows \[7\]"):
        capacity_curve(bad, fee_rate=0.0025, max_reserve_fraction=CAP)
    with pytest.raises(KeyError, match="reserve_source"):
        capacity_curve(_trips().drop(columns="reserve_source"), fee_rate=0.0025, max_reserve_fraction=CAP)


def test_trips_of_several_variants_use_the_named_ones_and_deterministic_intervals():
    a, b = _trips(seed=1).assign(variant="q50"), _trips(seed=2).assign(variant="q50_close")
    both = pd.concat([a, b], ignore_index=True)
    one = capacity_curve(both, fee_rate=0.0025, max_reserve_fraction=CAP, variant="q50_close", config=FAST)
    alone = capacity_curve(b.drop(columns="variant"), fee_rate=0.0025, max_reserve_fraction=CAP, variant="q50_close",
                           config=FAST)
    pd.testing.assert_frame_equal(one.table, alone.table)
    assert one.variant == "q50_close" and one.trips == 60
    png = capacity_png(one)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
