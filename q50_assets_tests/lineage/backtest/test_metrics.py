"""Tests of q50_assets.lineage.backtest.metrics, by hand."""

import math

import numpy as np
import pandas as pd
import pytest

from q50_assets.lineage.backtest.metrics import METRIC_NAMES, compute_metrics, max_drawdown, sharpe_ratio, sortino_ratio

T0 = pd.Timestamp("2025-01-01 01:00", tz="UTC")
H = pd.Timedelta(hours=1)
YEAR = math.sqrt(24 * 365)


def curve(values):
    return pd.Series(values, index=pd.DatetimeIndex([T0 + i * H for i in range(len(values))]), dtype=float)


def test_whole_curve_by_hand():
    eq = curve([100.0, 110.0, 99.0, 108.9])  # returns +10 %, -10 %, +10 %
    m = compute_metrics(eq)
    assert set(m) == set(METRIC_NAMES)
    assert m["total_return"] == pytest.approx(0.089)
    # mean 1/30; deviations 1/15, -2/15, 1/15 -> sample variance (6/225)/2 = 1/75.
    assert m["sharpe"] == pytest.approx((1 / 30) / math.sqrt(1 / 75) * YEAR)
    # downside deviation sqrt((0 + 0.01 + 0) / 3).
    assert m["sortino"] == pytest.approx((1 / 30) / math.sqrt(0.01 / 3) * YEAR)
    assert m["max_drawdown"] == pytest.approx(1 - 99 / 110)
    assert m["bars"] == 4
    assert m["trades"] == 0 and m["round_trips"] == 0
    assert math.isnan(m["win_rate"]) and math.isnan(m["exposure"])


def test_bars_per_year_parameter():
    eq = curve([100.0, 110.0, 99.0, 108.9])
    daily = compute_metrics(eq, bars_per_year=365)
    assert daily["sharpe"] == pytest.approx((1 / 30) / math.sqrt(1 / 75) * math.sqrt(365))


def test_start_uses_previous_mark_as_base():
    eq = curve([100.0, 110.0, 99.0, 108.9])
    m = compute_metrics(eq, start=T0 + 2 * H)  # span = [99, 108.9], base = 110
    assert m["bars"] == 2
    assert m["total_return"] == pytest.approx(108.9 / 110 - 1)
    # returns -10 %, +10 %: mean 0 -> Sharpe 0.
    assert m["sharpe"] == pytest.approx(0.0, abs=1e-12)
    assert m["max_drawdown"] == pytest.approx(0.1)  # 110 -> 99 counts: the base is in the path


def test_initial_equity_when_nothing_precedes_start():
    eq = curve([99.0, 108.9])
    assert compute_metrics(eq, initial_equity=100.0)["total_return"] == pytest.approx(0.089)
    m = compute_metrics(eq)  # no base: the first value
    assert m["total_return"] == pytest.approx(0.1)
    assert math.isnan(m["sharpe"])  # one return only


def test_sharpe_sortino_edge_cases():
    assert math.isnan(sharpe_ratio([0.01, 0.01, 0.01]))  # zero std
    assert math.isnan(sortino_ratio([0.01, 0.02, 0.03]))  # no downside
    assert math.isnan(sharpe_ratio([0.01]))
    assert max_drawdown([1.0, 2.0, 3.0]) == 0.0
    assert max_drawdown([2.0, 1.0, 4.0, 1.0]) == pytest.approx(0.75)


def test_trades_fees_impact_in_span():
    eq = curve([100.0, 101.0, 102.0, 103.0])
    trades = pd.DataFrame({"side": ["BUY", "SELL", "BUY"], "commission_usd": [0.25, 0.30, 0.40],
                           "impact_usd": [1.0, 2.0, 4.0]},
                          index=pd.DatetimeIndex([T0, T0 + 2 * H, T0 + 3 * H], name="ts"))
    m = compute_metrics(eq, trades)
    assert (m["trades"], m["fees_paid"], m["impact_paid"]) == (3, pytest.approx(0.95), pytest.approx(7.0))
    m = compute_metrics(eq, trades, start=T0 + 2 * H)
    assert (m["trades"], m["fees_paid"], m["impact_paid"]) == (2, pytest.approx(0.70), pytest.approx(6.0))


def test_raw_nautilus_fills_report_accepted():
    eq = curve([100.0, 101.0, 102.0])
    fills = pd.DataFrame({"ts_event": [T0, T0 + 2 * H], "commission": ["0.25 USD", "1.50 USD"]},
                         index=["O-1", "O-2"])
    m = compute_metrics(eq, fills, start=T0 + H)
    assert m["trades"] == 1 and m["fees_paid"] == pytest.approx(1.5) and m["impact_paid"] == 0.0


def test_win_rate_from_positions_report():
    eq = curve([100.0, 101.0, 102.0, 103.0, 104.0])
    positions = pd.DataFrame({
        "ts_closed": [T0 + H, T0 + 3 * H, T0 + 4 * H, pd.NaT],
        "realized_pnl": ["12.32 USD", "-3.00 USD", "0.00 USD", "5.00 USD"],  # last one still open
    })
    m = compute_metrics(eq, positions=positions)
    assert m["round_trips"] == 3 and m["win_rate"] == pytest.approx(1 / 3)
    m = compute_metrics(eq, positions=positions, start=T0 + 2 * H)
    assert m["round_trips"] == 2 and m["win_rate"] == 0.0


def test_exposure_counts_quantity_held_into_each_bar():
    eq = curve([100.0, 100.0, 101.0, 102.0])
    qty = curve([0.0, 5.0, 5.0, 0.0])  # bought at bar 1's close, sold at bar 3's close
    # Held into bars: [0 (before the first bar), 0, 5, 5].
    assert compute_metrics(eq, position_qty=qty, initial_equity=100.0)["exposure"] == pytest.approx(0.5)
    # Without a base the first bar has no return period: [0, 5, 5].
    assert compute_metrics(eq, position_qty=qty)["exposure"] == pytest.approx(2 / 3)
    # Span from bar 2: periods held into bars 2 and 3 -> both held.
    assert compute_metrics(eq, position_qty=qty, start=T0 + 2 * H)["exposure"] == 1.0


def test_naive_index_is_utc():
    eq = pd.Series([100.0, 110.0], index=pd.DatetimeIndex([T0.tz_localize(None), (T0 + H).tz_localize(None)]))
    assert compute_metrics(eq, start=T0 + H)["total_return"] == pytest.approx(0.1)
    assert np.isfinite(compute_metrics(eq)["total_return"])


def test_bars_per_year_from_the_timeframe():
    from q50_assets.settings import TIMEFRAME_SECONDS
    from q50_assets.lineage.backtest.metrics import bars_per_year

    assert bars_per_year(TIMEFRAME_SECONDS["1h"]) == 24 * 365
    assert bars_per_year(TIMEFRAME_SECONDS["4h"]) == 6 * 365
    assert bars_per_year(TIMEFRAME_SECONDS["15m"]) == 96 * 365
    with pytest.raises(ValueError):
        bars_per_year(0)


def test_grid_returns_count_missing_bars_as_flat():
    from q50_assets.lineage.backtest.metrics import grid_returns, returns_metrics

    grid = pd.date_range(T0, periods=5, freq="h")
    equity = pd.Series([110.0, 99.0, 108.9], index=grid[[0, 2, 4]])  # bars at 1 and 3 are missing
    r = grid_returns(equity, grid, base=100.0)
    np.testing.assert_allclose(r.to_numpy(), [0.1, 0.0, -0.1, 0.0, 0.1])
    positions = pd.Series([0.5, 0.5, 0.0, 0.0, 0.5], index=grid)
    m = returns_metrics(r, positions, 24 * 365)
    assert m["total_return"] == pytest.approx(0.089)
    assert m["sharpe"] == pytest.approx(r.mean() / r.std(ddof=1) * YEAR)
    assert m["max_drawdown"] == pytest.approx(1 - 99 / 110)
    # Held into bars 1 and 2 (after bars 0 and 1); 4 is entered flat.
    assert m["exposure"] == pytest.approx(2 / 5) and m["mean_position"] == pytest.approx(0.2)
    assert m["hit_rate"] == pytest.approx(0.0)  # held into a flat bar and a falling one
    assert m["bars"] == 5 and m["bars_per_year"] == 24 * 365
    never = returns_metrics(pd.Series(0.0, index=grid), pd.Series(0.0, index=grid), 24 * 365)
    assert math.isnan(never["sharpe"]) and never["exposure"] == 0 and math.isnan(never["hit_rate"])
