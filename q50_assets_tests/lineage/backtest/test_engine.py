"""Tests of q50_assets.lineage.backtest.engine (real NautilusTrader engines, small synthetic pools).

The exact-fills test recomputes every fill with plain Decimal arithmetic from the documented
rules (bar-close fills, constant-product impact, fee on the cent-rounded notional) and
compares it with Nautilus' own fills report.
"""

import math
import re
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, ROUND_HALF_UP, Decimal

import numpy as np
import pandas as pd
import pytest

import q50_assets.lineage.backtest.strategy as strategy_module
from q50_assets.lineage.backtest.engine import (BacktestEndedEarly, BacktestSpec, buy_and_hold_targets, lot_exponent_for,
                                          price_precision_for, run_pool_backtest, safe_symbol, size_precision_for)
from q50_assets.lineage.backtest.metrics import outcome_metrics

T0 = pd.Timestamp("2025-03-01", tz="UTC")
H = pd.Timedelta(hours=1)
REAL_POOL = "solana_4w2cysotX6czaUGmmWg13hDpY4QEMG2CzeKYEQyK9Ama"


def make_bars(closes, volume=50_000.0) -> pd.DataFrame:
    closes = np.asarray(closes, dtype=float)
    idx = pd.DatetimeIndex([T0 + i * H for i in range(len(closes))], name="open_time")
    opens = np.r_[closes[0], closes[:-1]]
    return pd.DataFrame({"open": opens, "high": np.maximum(opens, closes) * 1.01,
                         "low": np.minimum(opens, closes) * 0.99, "close": closes,
                         "volume": volume}, index=idx)


def random_walk(n, seed, start=1.0, drift=0.0, vol=0.02, volume=50_000.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return make_bars(start * np.exp(np.cumsum(rng.normal(drift, vol, n))), volume=volume)


def cents(x: float) -> Decimal:
    """Nautilus Money(USD): the f64 value rounded half away from zero to 0.01."""
    return Decimal(x).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


# --------------------------------------------------------------------------------------
# symbols and precision


def test_safe_symbol_real_pool_id():
    sym = safe_symbol(REAL_POOL)
    assert re.fullmatch(r"P[0-9A-F]{12}", sym)
    assert "_" not in sym
    assert sym == safe_symbol(REAL_POOL)  # deterministic
    assert sym != safe_symbol(REAL_POOL + "x")
    assert sym == "P" + __import__("hashlib").sha1(REAL_POOL.encode()).hexdigest().upper()[:12]
    with pytest.raises(ValueError):
        safe_symbol("")


def test_precision_helpers():
    assert price_precision_for(4.2e-12) == 16  # capped at Nautilus' maximum
    assert price_precision_for(4.2e-4) == 9  # 0.000420000: 6 significant digits
    assert price_precision_for(1.0) == 5
    assert price_precision_for(150.0) == 3
    assert price_precision_for(1e6) == 0
    assert price_precision_for(0.001, significant_digits=2) == 4
    assert lot_exponent_for(4.2e-12) == 8  # lots of 1e8 tokens cost 4.2e-4 USD
    assert lot_exponent_for(5e-5) == 1
    assert lot_exponent_for(1e-4) == 0
    assert lot_exponent_for(2.5) == 0
    assert size_precision_for(2.6) == 6
    assert size_precision_for(65_000.0) == 10
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            price_precision_for(bad)


def test_tiny_price_keeps_precision_end_to_end():
    closes = 4.2e-12 * np.array([1.0, 1.123456, 1.2, 0.987654, 1.05, 1.1])
    bars = make_bars(closes)
    targets = pd.Series([0.5, 0.0, 0.0, 0.5, 0.0, 0.0], index=bars.index)
    out = run_pool_backtest("solana_tinyPriceToken", bars, targets, BacktestSpec())
    assert out.lot_tokens == 10 ** 8
    assert out.price_precision == 9 + 3  # 6 significant digits of the first lot price, 3 decimals of margin
    # The engine saw every close with >= 6 significant digits (none rounded to 0).
    assert out.bars.count == 6
    assert out.equity["close"].to_numpy() / out.lot_tokens == pytest.approx(closes, rel=1e-6)
    assert out.bars.close_sum_per_token == pytest.approx(closes.sum(), rel=1e-6)
    # Fills at the decision bars' closes, quantities in lots and tokens consistent.
    assert list(out.trades["side"]) == ["BUY", "SELL", "BUY", "SELL"]
    assert out.trades["price_per_token"].to_numpy() == pytest.approx(closes[[0, 1, 3, 4]], rel=1e-6)
    first = out.trades.iloc[0]
    assert first["qty_tokens"] == pytest.approx(first["qty"] * 1e8)
    assert first["notional_usd"] == pytest.approx(5_000.0, rel=1e-6)  # 0.5 of 10 000 USD
    assert (out.equity["cash"] >= 0).all()


def test_price_scale_does_not_change_results():
    """Lots, precisions and the USD results are consistent whatever the token's price level."""
    base = random_walk(40, seed=21, vol=0.03)
    targets = pd.Series(np.arange(40) % 3 * 0.4, index=base.index)
    finals = []
    for scale in (1.0, 1e-9, 2_000.0):
        bars = base.copy()
        bars[["open", "high", "low", "close"]] *= scale
        out = run_pool_backtest("solana_scaledPool", bars, targets, BacktestSpec(reserve_usd=1e6))
        finals.append((out.final_equity, out.fees_paid, len(out.trades)))
        ratio = out.trades["price_per_token"] / (out.trades["ref_price"] / out.lot_tokens)
        assert ratio.between(1 / 1.1 - 1e-6, 1 / 0.9 + 1e-6).all()  # impact within the 10 % reserve cap
    for other in finals[1:]:
        assert other[2] == finals[0][2]
        assert other[0] == pytest.approx(finals[0][0], rel=1e-4)  # price ticks: ~1e-5 per trade
        assert other[1] == pytest.approx(finals[0][1], abs=0.05 * finals[0][2])


# --------------------------------------------------------------------------------------
# exact fills


CLOSES = [2.0, 2.2, 2.5, 2.4, 2.0, 2.1, 2.3, 2.6, 2.4, 2.5]
TARGETS = [0.0, 0.5, 0.5, 0.3, 0.0, 0.0, 0.4, 0.4, 0.45, 0.0]


def reference_fills(closes, targets, capital, fee, reserve, band, price_prec=5, size_prec=6):
    """The documented rules, recomputed in Decimal: one market order per decision at the bar
    close; qty floored to the size increment; constant-product price p/(1-u) (buy, rounded up)
    or p/(1+u) (sell, rounded down), u = qty*p/(reserve/2); notional and fee in cents."""
    y = Decimal(reserve) / 2
    tick = Decimal(1).scaleb(-price_prec)
    step = Decimal(1).scaleb(-size_prec)
    fee = Decimal(str(fee))
    cash, held = Decimal(capital), Decimal(0)
    fills = []
    for i, (close, target) in enumerate(zip(closes, targets)):
        p = Decimal(str(close))
        equity = cash + held * p
        side = qty = None
        if target == 0:
            if held > 0:
                side, qty = "SELL", held
        else:
            delta = Decimal(str(target)) * equity - held * p
            if abs(delta) >= Decimal(str(band)) * equity:
                side = "BUY" if delta > 0 else "SELL"
                qty = (abs(delta) / p).quantize(step, rounding=ROUND_DOWN)
        if side is None:
            continue
        u = qty * p / y
        if side == "BUY":
            px = (p / (1 - u)).quantize(tick, rounding=ROUND_CEILING)
        else:
            px = (p / (1 + u)).quantize(tick, rounding=ROUND_FLOOR)
        notional = cents(float(qty) * float(px))
        commission = cents(float(notional * fee))
        if side == "BUY":
            cash -= notional + commission
            held += qty
        else:
            cash += notional - commission
            held -= qty
        fills.append({"bar": i, "side": side, "qty": qty, "px": px, "commission": commission, "cash": cash,
                      "held": held})
    return fills


def test_exact_fills_match_hand_computation():
    bars = make_bars(CLOSES)
    targets = pd.Series(TARGETS, index=bars.index)
    spec = BacktestSpec(starting_capital_usd=10_000.0, taker_fee=0.0025, reserve_usd=1_000_000.0,
                        min_trade_fraction=0.05)
    out = run_pool_backtest("solana_exactFillsPool", bars, targets, spec)
    # The grid from the first bar (low 1.98, high 2.02): 5 + 3 price decimals, 6 size decimals.
    assert (out.price_precision, out.size_precision, out.lot_tokens) == (8, 6, 1)

    expected = reference_fills(CLOSES, TARGETS, 10_000, 0.0025, 1_000_000.0, 0.05, price_prec=8, size_prec=6)
    # Anchor the first fill by hand: bar 1 (close 2.2), target 0.5 of 10 000 USD.
    #   qty = floor(5000 / 2.2, 6 dp) = 2272.727272
    #   u   = 2272.727272 * 2.2 / 500 000 = 0.0099999999968
    #   px  = ceil(2.2 / (1 - u), 8 dp) = ceil(2.22222222219...) = 2.22222223
    #   fee = cents(cents(2272.727272 * 2.22222223) * 0.0025) = cents(5050.51 * 0.0025) = 12.63
    assert expected[0]["qty"] == Decimal("2272.727272")
    assert expected[0]["px"] == Decimal("2.22222223")
    assert cents(2272.727272 * 2.22222223) == Decimal("5050.51")
    assert expected[0]["commission"] == Decimal("12.63")
    assert [f["bar"] for f in expected] == [1, 3, 4, 6, 9]  # bars 2, 7, 8 stay inside the 5 % band

    fills = out.fills.sort_values("ts_event")
    assert len(fills) == len(expected)
    for (_, got), exp in zip(fills.iterrows(), expected):
        assert got["ts_event"] == T0 + exp["bar"] * H + H  # at the decision bar's close
        assert got["order_side"] == exp["side"]
        assert Decimal(got["last_qty"]) == exp["qty"]
        assert Decimal(got["last_px"]) == exp["px"]
        assert Decimal(got["commission"].split()[0]) == exp["commission"]
        assert got["commission"].endswith("USD")
    # Cash and holdings after each fill, as the strategy read them back from Nautilus.
    for exp in expected:
        row = out.equity.iloc[exp["bar"]]
        assert Decimal(str(row["cash"])) == exp["cash"]
        assert Decimal(str(row["qty"])).quantize(Decimal("0.000001")) == exp["held"]
    # Fees and impact reported separately, in USD.
    assert out.fees_paid == pytest.approx(float(sum(f["commission"] for f in expected)))
    impact = sum((f["px"] - Decimal(str(CLOSES[f["bar"]]))) * f["qty"] * (1 if f["side"] == "BUY" else -1)
                 for f in expected)
    assert out.impact_paid == pytest.approx(float(impact))
    assert out.impact_paid > 0 and out.impact_applied
    # Account report agrees with the final state.
    usd = out.account[out.account["currency"] == "USD"]
    assert Decimal(usd["total"].iloc[-1]) == expected[-1]["cash"]
    assert out.final_equity == pytest.approx(float(expected[-1]["cash"]))
    # Positions: two round trips; Nautilus realized PnL is net of commissions.
    closed = out.positions[out.positions["ts_closed"].notna()]
    assert len(closed) == 2


def test_no_reserve_means_no_impact_and_fill_at_close():
    bars = make_bars(CLOSES)
    targets = pd.Series(TARGETS, index=bars.index)
    out = run_pool_backtest("solana_noReservePool", bars, targets, BacktestSpec(reserve_usd=None))
    assert not out.impact_applied
    assert out.impact_paid == 0.0
    assert (out.trades["price"] == out.trades["ref_price"]).all()
    assert out.fees_paid == pytest.approx(out.trades["commission_usd"].sum())
    assert out.fees_paid == pytest.approx(0.0025 * out.trades["notional_usd"].sum(), abs=0.05)


# --------------------------------------------------------------------------------------
# cash, time, baselines


@pytest.mark.parametrize("drift", [0.01, -0.01])
@pytest.mark.parametrize("reserve", [None, 150_000.0])
def test_cash_never_negative_all_in(drift, reserve):
    bars = random_walk(60, seed=3, drift=drift, vol=0.03)
    targets = pd.Series(1.0, index=bars.index)
    targets.iloc[20:25] = 0.0  # exit and re-enter at another price
    out = run_pool_backtest("solana_allInPool", bars, targets, BacktestSpec(reserve_usd=reserve))
    assert out.bars.count == 60
    assert (out.equity["cash"] >= 0).all()
    usd = out.account[out.account["currency"] == "USD"]
    assert (usd["total"].astype(float) >= 0).all()
    assert out.equity["qty"].iloc[0] > 0
    if reserve is None:
        # Fully invested: the leftover is the cash margin plus < 1 size increment.
        assert out.equity["cash"].iloc[0] < 1.0
    else:
        # The pool cap (10 % of the 75 000 USD side) limits one trade; entry spreads over bars.
        assert out.trades["notional_usd"].max() <= 0.1 * reserve / 2 / (1 - 0.1) * (1 + 1e-5)  # + price tick


def test_bars_stamped_at_close_and_targets_used_at_that_close():
    bars = make_bars([1.0, 1.1, 1.2, 1.3, 1.4, 1.5])
    # Decision made at the close of bar 2 only (open 02:00, close 03:00).
    targets = pd.Series([0.0, 0.0, 0.5, 0.0, 0.0, 0.0], index=bars.index)
    out = run_pool_backtest("solana_timePool", bars, targets, BacktestSpec())
    # Nautilus bars are stamped at open_time + 1h, and the strategy acted at that time.
    assert list(out.equity.index) == list(bars.index + H)
    assert (out.equity["clock_ns"].to_numpy() == out.equity.index.asi8).all()
    # The target of bar k is only seen at bar k's close.
    assert list(out.equity["target"]) == [0.0, 0.0, 0.5, 0.0, 0.0, 0.0]
    assert out.equity["close"].tolist() == bars["close"].tolist()
    buy = out.trades.iloc[0]
    assert buy.name == T0 + 3 * H and buy["side"] == "BUY"
    assert buy["price"] == 1.2  # close of bar 2, not its open (1.1) nor the next close (1.3)
    sell = out.trades.iloc[1]
    assert sell.name == T0 + 4 * H and sell["price"] == 1.3
    assert out.bars.first_ts == T0 + H and out.bars.last_ts == T0 + 6 * H
    assert out.bars.close_sum == pytest.approx(sum([1.0, 1.1, 1.2, 1.3, 1.4, 1.5]))
    assert out.iterations == 6


def test_missing_and_nan_targets_mean_no_order():
    bars = make_bars([1.0, 1.1, 1.2, 1.3, 1.4])
    targets = pd.Series([0.5, np.nan], index=bars.index[:2])  # bars 2..4 missing: keep the position
    out = run_pool_backtest("solana_missingTargets", bars, targets, BacktestSpec())
    assert list(out.trades["side"]) == ["BUY"]
    assert out.equity["qty"].iloc[-1] > 0
    exits = pd.Series([0.5, np.nan, 0.0], index=bars.index[:3])  # an explicit 0 leaves
    out = run_pool_backtest("solana_missingTargets", bars, exits, BacktestSpec())
    assert list(out.trades["side"]) == ["BUY", "SELL"] and out.trades.index[1] == T0 + 3 * H
    assert out.equity["qty"].iloc[-1] == 0.0


def test_buy_and_hold_helper_and_run():
    bars = random_walk(80, seed=11, drift=0.005)
    targets = buy_and_hold_targets(bars.index)
    assert (targets == 1.0).all() and targets.index.equals(bars.index)
    assert (buy_and_hold_targets(bars.index, 0.25) == 0.25).all()
    with pytest.raises(ValueError):
        buy_and_hold_targets(bars.index, 1.5)
    out = run_pool_backtest("solana_bhPool", bars, targets, BacktestSpec())
    assert len(out.trades) == 1  # one buy at the first close, then hold
    assert out.trades.index[0] == T0 + H and out.trades["side"].iloc[0] == "BUY"
    assert (out.equity["cash"] >= 0).all()
    held = out.equity["qty"].iloc[-1]
    assert out.final_equity == pytest.approx(out.equity["cash"].iloc[-1] + held * bars["close"].iloc[-1])


# --------------------------------------------------------------------------------------
# early stop, isolation, determinism, validation


def test_ended_early_is_detected(monkeypatch):
    """Sizing that ignores fees makes Nautilus stop with AccountBalanceNegative, without
    raising; run_pool_backtest must notice."""

    def fee_blind(cash_usd, ref_price, fee_rate, *args, **kwargs):
        return strategy_module.floor_qty(cash_usd / ref_price, 6)

    monkeypatch.setattr(strategy_module, "affordable_buy_qty", fee_blind)
    bars = make_bars([1.0, 1.1, 1.2, 1.3, 1.4])
    with pytest.raises(BacktestEndedEarly) as info:
        run_pool_backtest("solana_brokenSizing", bars, buy_and_hold_targets(bars.index), BacktestSpec())
    err = info.value
    assert err.bars_given == 5
    assert err.bars_seen < 5 or err.iterations < 5
    assert err.last_ts_expected == T0 + 5 * H
    assert err.outcome is not None and err.pool_id == "solana_brokenSizing"
    monkeypatch.undo()
    # The next engine in the same process is unaffected.
    out = run_pool_backtest("solana_brokenSizing", bars, buy_and_hold_targets(bars.index), BacktestSpec())
    assert out.bars.count == 5 and (out.equity["cash"] >= 0).all()


def _comparable(out):
    return (out.trades.copy(), out.equity.copy(), out.fees_paid, out.impact_paid, out.final_equity,
            out.positions["realized_pnl"].tolist())


def test_determinism_and_no_state_leak_between_engines():
    bars_a = random_walk(120, seed=5, vol=0.03)
    rng = np.random.default_rng(9)
    targets_a = pd.Series(rng.choice([0.0, 0.2, 0.5, 1.0], size=120), index=bars_a.index)
    bars_b = random_walk(90, seed=6, start=3e-9)
    targets_b = pd.Series(np.random.default_rng(3).permutation(targets_a.iloc[:90].to_numpy()), index=bars_b.index)
    spec = BacktestSpec(reserve_usd=250_000.0)
    first = _comparable(run_pool_backtest(REAL_POOL, bars_a, targets_a, spec))
    other = run_pool_backtest("solana_otherPool", bars_b, targets_b, BacktestSpec())
    again = _comparable(run_pool_backtest(REAL_POOL, bars_a, targets_a, spec))
    assert len(first[0]) > 10 and len(other.trades) > 5
    pd.testing.assert_frame_equal(first[0], again[0])
    pd.testing.assert_frame_equal(first[1], again[1])
    assert first[2:] == again[2:]


def test_outcome_metrics_consistent_with_reports():
    bars = random_walk(100, seed=8, vol=0.03)
    targets = pd.Series(np.where(np.arange(100) % 20 < 10, 0.5, 0.0), index=bars.index)
    out = run_pool_backtest("solana_metricsPool", bars, targets, BacktestSpec(reserve_usd=400_000.0))
    m = outcome_metrics(out)
    assert m["trades"] == len(out.fills)
    assert m["fees_paid"] == pytest.approx(sum(float(c.split()[0]) for c in out.fills["commission"]))
    assert m["impact_paid"] == pytest.approx(out.impact_paid) and m["impact_paid"] > 0
    assert m["round_trips"] == 5
    assert m["total_return"] == pytest.approx(out.final_equity / 10_000.0 - 1.0)
    assert m["exposure"] == pytest.approx(0.5, abs=0.02)
    assert 0 <= m["max_drawdown"] < 1


def test_input_validation():
    bars = make_bars([1.0, 1.1, 1.2])
    targets = buy_and_hold_targets(bars.index)
    with pytest.raises(ValueError):
        run_pool_backtest("p", bars.drop(columns="volume"), targets)
    with pytest.raises(ValueError):
        run_pool_backtest("p", pd.concat([bars, bars.iloc[:1]]), targets)
    bad = bars.copy()
    bad.iloc[1, bad.columns.get_loc("close")] = 0.0
    with pytest.raises(ValueError):
        run_pool_backtest("p", bad, targets)
    for kwargs in ({"reserve_usd": 0.0}, {"taker_fee": 1.0}, {"max_reserve_fraction": 1.0},
                   {"starting_capital_usd": -1.0}):
        with pytest.raises(ValueError):
            BacktestSpec(**kwargs)
    assert math.isclose(BacktestSpec(reserve_usd=2.0).quote_reserve_usd, 1.0)


def test_exact_fills_on_a_real_sample_pool():
    """The bundled sample's first 10 hourly bars of a real pool, the same decisions: every fill
    Nautilus makes equals the independent Decimal recomputation."""
    from q50_assets.db.sample_loader import QLIB_CSV

    csv = pd.read_csv(QLIB_CSV)
    rows = csv[csv["symbol"] == REAL_POOL].sort_values("datetime").head(10)
    index = pd.DatetimeIndex(pd.to_datetime(rows["datetime"]), name="open_time").tz_localize("UTC")
    bars = pd.DataFrame({c: rows[c].to_numpy(dtype=float) for c in ("open", "high", "low", "close", "volume")},
                        index=index)
    closes = bars["close"].tolist()
    targets = pd.Series(TARGETS, index=index)
    spec = BacktestSpec(starting_capital_usd=10_000.0, taker_fee=0.0025, reserve_usd=250_000.0,
                        min_trade_fraction=0.05)
    out = run_pool_backtest(REAL_POOL, bars, targets, spec)
    assert out.lot_tokens == 1
    # The engine holds prices at the instrument's precision (6+ significant digits of the
    # pool's smallest price): the reference starts from the same rounded closes.
    tick = Decimal(1).scaleb(-out.price_precision)
    closes = [float(Decimal(repr(c)).quantize(tick, rounding=ROUND_HALF_UP)) for c in closes]  # Price rounds half up
    assert out.price_precision >= 8  # the grid holds the collector's 8-decimal prices
    expected = reference_fills(closes, TARGETS, 10_000, 0.0025, 250_000.0, 0.05,
                               price_prec=out.price_precision, size_prec=out.size_precision)
    assert len(expected) >= 4
    fills = out.fills.sort_values("ts_event")
    assert len(fills) == len(expected)
    for (_, got), exp in zip(fills.iterrows(), expected):
        assert got["ts_event"] == index[exp["bar"]] + H
        assert got["order_side"] == exp["side"]
        assert Decimal(got["last_qty"]) == exp["qty"]
        assert Decimal(got["last_px"]) == exp["px"]
        assert Decimal(got["commission"].split()[0]) == exp["commission"]
    usd = out.account[out.account["currency"] == "USD"]
    assert Decimal(usd["total"].iloc[-1]) == expected[-1]["cash"]


def test_positions_beyond_fifteen_digits_run_to_the_end():
    # Found by the P4 scale benchmark: when a position holds more than ~15 significant digits
    # (many tokens on a fine size grid), Nautilus books fills through floats, and selling the whole
    # position overdrew the token balance by a few increments: AccountBalanceNegative stopped the
    # engine. Here the grid is set at ~5 000 USD (size precision 9), the price falls a million-fold
    # and is then traded: positions reach 16 digits.
    rng = np.random.default_rng(11)
    steps = np.r_[rng.normal(-0.035, 0.03, 400), rng.normal(0.0, 0.03, 400)]
    bars = make_bars(5_000.0 * np.exp(np.cumsum(steps)))
    assert bars["close"].iloc[400:].max() < 0.05
    targets = pd.Series(np.r_[np.zeros(400), rng.choice([0.0, 0.3, 1.0], size=400)], index=bars.index)
    out = run_pool_backtest("solana_fallingPool", bars, targets)  # BacktestEndedEarly before the fix
    digits = np.floor(np.log10(out.equity["qty"][out.equity["qty"] > 1].max())) + 1
    assert digits + out.size_precision > 15  # the regime the fix is for
    assert out.bars.count == len(bars)
    assert len(out.fills) > 250
    assert (out.equity["qty"] >= 0).all(), "a sell never turns into a short"
    assert (out.equity["cash"] >= 0).all()
    tokens = out.account[out.account["currency"] != "USD"]
    assert (tokens["total"].astype(float) >= 0).all()


def test_a_price_the_first_bar_grid_cannot_hold_is_refused():
    """The instrument's grid comes from the first bar (no later price may shape earlier fills); a
    fall of more than a million-fold would lose the price's digits, so the run refuses it, naming
    the bar."""
    bars = make_bars([1.0, 0.5, 1e-9, 0.9])
    with pytest.raises(ValueError, match="too small for the instrument's price grid"):
        run_pool_backtest("solana_rugPool", bars, buy_and_hold_targets(bars.index))


# --------------------------------------------------------------------------------------
# the Q50 strategy: one cost model, latency, caps, hold by expected value

from q50_assets.lineage.backtest.engine import run_q50_backtest  # noqa: E402
from q50_assets.lineage.common.costs import trade_cost  # noqa: E402
from q50_assets_tests.lineage.q50_fixtures import (inputs_for, neutral_regimes, oracle_inputs,  # noqa: E402
                                                    signals_from_q50)


@pytest.mark.parametrize("latency", [0, 1])
def test_decision_and_fill_read_one_cost_model(latency):
    """What the decision expected a trade to cost is what Nautilus charged for its fill (fee +
    impact), to the cent and tick: both read research/costs.py at the same liquidity."""
    bars = random_walk(300, seed=4, vol=0.03)
    reserve = 120_000.0
    spec = BacktestSpec(reserve_usd=reserve, fill_latency_bars=latency)
    out = run_q50_backtest("solana_oneCostModel", bars, oracle_inputs(bars, seed=1, skill=0.8), spec)
    trades = out.trades
    assert len(trades) >= 6
    charged = trades["commission_usd"] + trades["impact_usd"]
    orders = out.orders.set_index("client_order_id").loc[trades["client_order_id"]]
    tick = 10.0 ** -out.price_precision
    # Every fill: the cost model's figure for that trade vs Nautilus' charge.
    assert (np.abs(orders["expected_cost_usd"].to_numpy() - charged.to_numpy())
            <= 0.011 + trades["qty"].to_numpy() * tick).all()
    assert out.impact_paid > 0 and out.fees_paid > 0
    if latency == 0:
        # Entries decided and filled at the same close: the decision's own expectation (the entry
        # half of its round trip, at the intended size) is the fill's charge.
        entries = out.decisions[out.decisions["action"] == "enter"]
        assert len(entries) >= 3
        for ts, d in entries.iterrows():
            fill = trades.loc[ts]
            expected = trade_cost(d["intended_notional_usd"], True, reserve, 0.0025, 0.1).total_usd
            assert abs(expected - (fill["commission_usd"] + fill["impact_usd"])) <= 0.011 + fill["qty"] * tick * 2 \
                + 10.0 ** -out.size_precision * fill["price"]
            assert d["expected_cost_usd"] == pytest.approx(
                expected + trade_cost(d["intended_notional_usd"], False, reserve, 0.0025, 0.1).total_usd)


@pytest.mark.parametrize("latency, fill_price", [(1, "close"), (2, "close"), (1, "typical")])
def test_latency_fills_at_the_later_bar(latency, fill_price):
    bars = make_bars([1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7])
    targets = pd.Series([0.5, np.nan, np.nan, 0.0], index=bars.index[:4])
    out = run_pool_backtest("solana_latePool", bars, targets,
                            BacktestSpec(fill_latency_bars=latency, fill_price=fill_price))
    buy, sell = out.trades.iloc[0], out.trades.iloc[1]
    # Decided at bar 0's close (01:00), filled at the close of bar L (L bars later), never at the
    # close the decision saw.
    assert buy.name == T0 + (1 + latency) * H and sell.name == T0 + (4 + latency) * H
    ref = bars.iloc[latency]
    expected = ref["close"] if fill_price == "close" else (ref["high"] + ref["low"] + ref["close"]) / 3
    assert buy["price"] == pytest.approx(expected, abs=2e-5) and buy["ref_price"] == pytest.approx(expected)
    assert buy["qty"] == pytest.approx(0.5 * 10_000 / 1.0, rel=1e-6)  # tokens decided at the decision's close
    o = out.orders
    assert (o["fill_at"] - o["decided_at"] == latency * H).all()


def test_orders_expire_on_zero_volume_and_missing_fill_bars():
    bars = make_bars([1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6])
    bars.loc[bars.index[1], "volume"] = 0.0  # the fill bar of the first decision has no swaps
    bars = bars.drop(bars.index[4])  # nor does the hour the third decision would fill in
    targets = pd.Series([0.5, 0.5, np.nan, 0.0, np.nan, np.nan], index=bars.index)
    out = run_pool_backtest("solana_quietPool", bars, targets, BacktestSpec(fill_latency_bars=1))
    assert out.orders_expired == 2
    statuses = out.orders["status"].tolist()
    assert statuses[0] == "expired: zero-volume fill bar" and statuses[1] == "filled"
    assert statuses[2] == "expired: no fill bar (no swaps)"
    # The position the second decision bought is still held: its exit expired with the missing bar.
    assert list(out.trades["side"]) == ["BUY"] and out.equity["qty"].iloc[-1] > 0


def test_a_fill_takes_at_most_a_share_of_the_bar_volume():
    bars = random_walk(30, seed=9, volume=2_000.0)
    out = run_pool_backtest("solana_thinVolume", bars, buy_and_hold_targets(bars.index),
                            BacktestSpec(fill_latency_bars=1, max_volume_share=0.1))
    notional = out.trades["qty"] * out.trades["ref_price"]
    assert (notional <= 0.1 * 2_000.0 + 1e-6).all()
    # The entry is spread over every bar after the first (decisions at each close, fills a bar later),
    # each capped: 29 x 200 USD leaves most of the cash uninvested.
    assert len(out.trades) == 29 and (out.trades["side"] == "BUY").all()
    assert out.equity["cash"].iloc[-1] == pytest.approx(10_000 - 29 * 200.0, rel=0.03)


def test_max_position_size_binds_in_a_deep_pool():
    """Deep liquidity and a strong forecast: the cost-optimal size is unbounded, Kelly's budget
    saturates, and max_position_size decides the position."""
    bars = random_walk(120, seed=6, vol=0.02)
    signals = signals_from_q50(bars.index, np.full(len(bars), 0.05))
    for cap in (0.5, 0.2):
        spec = BacktestSpec(reserve_usd=1e12, fill_latency_bars=0)
        inputs = inputs_for(signals, neutral_regimes(bars.index), max_position_size=cap, base_position_size=0.1)
        out = run_q50_backtest("solana_deepPool", bars, inputs, spec)
        first = out.decisions.iloc[0]
        assert first["action"] == "enter" and first["intended_notional_usd"] == pytest.approx(cap * 10_000.0)
        assert out.trades["notional_usd"].iloc[0] == pytest.approx(cap * 10_000.0, rel=1e-4)


def test_q50_holds_by_expected_value_and_exits_when_the_edge_reverses():
    bars = make_bars(np.full(12, 1.0) * np.exp(np.linspace(0, 0.01, 12)))
    # Bar 0: a strong forecast (enter); bars 1-5: slightly negative, above minus the exit cost
    # (keep: entering would not pay, leaving would cost more than staying); bar 6: clearly
    # negative (exit); then nothing (flat stays flat).
    q50 = [0.04, -0.001, -0.001, 0.0005, -0.001, -0.001, -0.03, -0.001, -0.001, -0.001, -0.001, -0.001]
    signals = signals_from_q50(bars.index, q50, spread=0.004)
    out = run_q50_backtest("solana_holdPool", bars, inputs_for(signals, neutral_regimes(bars.index)),
                           BacktestSpec(reserve_usd=400_000.0, fill_latency_bars=1))
    actions = out.decisions["action"].tolist()
    assert actions[0] == "enter" and actions[1:6] == ["keep"] * 5 and actions[6] == "exit"
    assert len(out.decisions) == 7  # flat and staying flat is not a decision row
    keep = out.decisions.iloc[1]
    assert -keep["exit_cost_fraction"] < keep["expected_value"] < 0
    assert list(out.trades["side"]) == ["BUY", "SELL"]
    assert out.trades.index[0] == T0 + 2 * H and out.trades.index[1] == T0 + 8 * H  # one bar after each decision
    # A regime that forbids holding exits too.
    regimes = neutral_regimes(bars.index)
    regimes.loc[regimes.index[3], "position_multiplier"] = 0.0
    out = run_q50_backtest("solana_holdPool", bars, inputs_for(signals, regimes),
                           BacktestSpec(reserve_usd=400_000.0, fill_latency_bars=1))
    assert out.decisions["action"].iloc[3] == "exit" and out.decisions["reason"].iloc[3] == "regime forbids holding"
