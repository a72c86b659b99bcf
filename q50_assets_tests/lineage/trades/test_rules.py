"""research/trades.py on the bundled sample's real trades and bars, and on small hand-made cases."""

import numpy as np
import pandas as pd
import pytest

from q50_assets.db.sample_loader import EXPORT_DIR
from q50_assets.settings import TIMEFRAME_SECONDS
from q50_assets.lineage.trades.rules import (
    RAW_TRADE_COLUMNS,
    TRADE_FIELDS,
    TradeDataError,
    TradeRules,
    aggregate_per_bar,
    analyse_trades,
    find_clock_shift,
    prepare_trades,
    trade_epoch,
)

POOL = "solana_F5vAiFCP82RQetoxK7ax4dNQCwqk2yez6aisAbFPenJ2"
T0 = pd.Timestamp("2025-10-01 00:00", tz="UTC")


@pytest.fixture(scope="module")
def sample_trades() -> pd.DataFrame:
    trades = pd.read_csv(EXPORT_DIR / "trades.csv.gz")
    return trades[trades["pool_id"] == POOL][list(RAW_TRADE_COLUMNS)].reset_index(drop=True)


def sample_bars(timeframe: str) -> pd.DataFrame:
    """The pool's complete bars of a timeframe as the OHLCV stage hands them on (newest held back)."""
    o = pd.read_csv(EXPORT_DIR / "ohlcv_data.csv.gz")
    o = o[(o["pool_id"] == POOL) & (o["timeframe"] == timeframe)].sort_values("timestamp")
    bars = pd.DataFrame({"open": o["open_price"].to_numpy(), "high": o["high_price"].to_numpy(),
                         "low": o["low_price"].to_numpy(), "close": o["close_price"].to_numpy(),
                         "volume": o["volume_usd"].to_numpy()},
                        index=pd.DatetimeIndex(pd.to_datetime(o["timestamp"], unit="s", utc=True), name="open_time"))
    return bars.iloc[:-1]


def test_trade_epoch_is_the_ids_seconds_suffix():
    assert trade_epoch("solana_370896831_48yZmnV6Dw_12_1759486946") == 1759486946
    assert trade_epoch("solana_370896831_48yZmnV6Dw_12") is None          # no epoch part
    assert trade_epoch("solana_370896831_48yZmnV6Dw_12_1759486946000") is None  # milliseconds
    assert trade_epoch("solana_370896831_48yZmnV6Dw_12_17594x6946") is None
    assert trade_epoch(None) is None


def test_pool_token_price_comes_from_amounts_not_price_usd(sample_trades):
    trades, invalid = prepare_trades(sample_trades)
    assert invalid.empty and len(trades) == len(sample_trades) == 201
    raw = sample_trades.set_index("id")
    buys = trades[trades["side"] == "buy"]
    sells = trades[trades["side"] == "sell"]
    # A buy's price_usd is the quote token's (SOL, ~230 USD); the pool token trades near 4e-5 USD.
    assert (raw.loc[buys.index, "price_usd"] > 100).all()
    assert buys["price"].between(1e-5, 1e-4).all() and sells["price"].between(1e-5, 1e-4).all()
    assert np.allclose(buys["price"], raw.loc[buys.index, "volume_usd"] / raw.loc[buys.index, "to_token_amount"])
    # For sells the collector's price_usd IS the pool token's: the derivation agrees with it.
    assert np.allclose(sells["price"], raw.loc[sells.index, "price_usd"], rtol=0.02)
    # Time is the id's epoch; block_timestamp sits ~6 h later.
    shift = (trades["block_time"] - trades["time"]).median()
    assert pd.Timedelta(hours=5, minutes=59) < shift < pd.Timedelta(hours=6)


def test_bad_rows_are_listed_with_their_reason_never_dropped(sample_trades):
    raw = sample_trades.head(6).copy()
    raw.loc[0, "id"] = "solana_1_abc_0"                 # no epoch
    raw.loc[1, "side"] = "swap"
    raw.loc[2, "volume_usd"] = 0.0
    raw.loc[3, "to_token_amount"] = np.nan if raw.loc[3, "side"] == "buy" else raw.loc[3, "to_token_amount"]
    raw.loc[3, "from_token_amount"] = np.nan if raw.loc[3, "side"] == "sell" else raw.loc[3, "from_token_amount"]
    trades, invalid = prepare_trades(raw)
    assert len(trades) + len(invalid) == len(raw)
    reasons = dict(zip(invalid["id"], invalid["reason"]))
    assert "epoch" in reasons["solana_1_abc_0"]
    assert "side" in reasons[raw.loc[1, "id"]]
    assert "volume_usd" in reasons[raw.loc[2, "id"]]
    assert "amount" in reasons[raw.loc[3, "id"]]
    with pytest.raises(TradeDataError, match="lack columns"):
        prepare_trades(raw.drop(columns=["side"]))


@pytest.mark.parametrize("timeframe", ["15m", "1h", "4h"])
def test_clock_shift_names_the_collectors_plus_six_hours(sample_trades, timeframe):
    trades, _ = prepare_trades(sample_trades)
    bars = sample_bars(timeframe)
    seconds = TIMEFRAME_SECONDS[timeframe]
    block_lag, block_table = find_clock_shift(trades["block_time"], trades["price"], bars, seconds)
    id_lag, id_table = find_clock_shift(trades["time"], trades["price"], bars, seconds)
    assert block_lag == 6 and id_lag == 0
    assert list(block_table["lag_hours"]) == list(range(-12, 13))
    share = block_table.set_index("lag_hours")["inside_share"]
    assert share[6] >= 0.99 and share.drop(6).max() < 0.95   # the best is clear, not a tie
    assert id_table.set_index("lag_hours")["inside_share"][0] >= 0.99


def test_a_drifted_id_clock_fails_the_check_and_no_trade_fields_are_written(sample_trades):
    drifted = sample_trades.copy()
    drifted["id"] = [i.rsplit("_", 1)[0] + f"_{trade_epoch(i) + 3 * 3600}" for i in drifted["id"]]
    analysis = analyse_trades(POOL, drifted, sample_bars("15m"), TradeRules(bar_seconds=900))
    clock = analysis.check("clock_shift")
    assert not clock.passed and clock.metadata["id_epoch_shift"] == "+3 h"
    assert clock.metadata["block_timestamp_shift"] == "+6 h"
    assert not analysis.check("prices_within_bar_range").passed
    assert analysis.grid is None and not analysis.usable and "clock_shift" in analysis.reason


def test_sample_trades_reconcile_with_15m_bars(sample_trades):
    bars = sample_bars("15m")
    analysis = analyse_trades(POOL, sample_trades, bars, TradeRules(bar_seconds=900))
    assert all(c.passed for c in analysis.checks), [(c.name, c.metadata) for c in analysis.checks if not c.passed]
    counts = analysis.counts
    assert counts["trades_read"] == 201 == counts["invalid"] + counts["before_first_bar"] \
        + counts["inside_complete_bars"] + counts["at_or_after_held_back_bar"]
    volume = analysis.check("volume_within_bar_volume").metadata
    assert volume["bars_exceeding"] == 0 and 0.5 < volume["median_trade_share_of_bar_volume"] < 1.0
    coverage = analysis.check("trade_coverage").metadata
    assert coverage["covered_bars"] >= 24 and 0.5 <= coverage["volume_share"] < 1.0
    grid = analysis.grid
    assert list(grid.columns) == list(TRADE_FIELDS)
    assert grid.index[0] == pd.Timestamp(coverage["span_first_open"]) and grid.index.freq == pd.Timedelta(minutes=15)
    # Inside the span a bar without a (>= 100 USD) trade has zero trades and no VWAP; counts add up.
    assert grid["trade_count"].sum() == counts["inside_complete_bars"]
    quiet = grid["trade_count"] == 0
    assert quiet.any() and grid.loc[quiet, "trade_vwap"].isna().all() and (grid.loc[quiet, "buy_usd"] == 0).all()
    busy = grid.loc[~quiet]
    assert ((busy["trade_vwap"] >= bars["low"].reindex(busy.index) * 0.999)
            & (busy["trade_vwap"] <= bars["high"].reindex(busy.index) * 1.001)).all()


def test_coverage_below_the_thresholds_keeps_flow_fields_out(sample_trades):
    bars = sample_bars("15m")
    strict = analyse_trades(POOL, sample_trades, bars, TradeRules(bar_seconds=900, min_covered_bars=500))
    assert not strict.check("trade_coverage").passed and strict.grid is None
    strict = analyse_trades(POOL, sample_trades, bars, TradeRules(bar_seconds=900, min_volume_coverage=0.9))
    assert not strict.check("trade_coverage").passed and strict.grid is None
    off = analyse_trades(POOL, sample_trades, bars, TradeRules(bar_seconds=900, flow_features=False))
    assert all(c.passed for c in off.checks) and off.grid is None and "switched off" in off.reason
    nothing = analyse_trades(POOL, sample_trades.iloc[0:0], bars, TradeRules(bar_seconds=900))
    assert nothing.grid is None and not nothing.check("trade_coverage").passed
    assert nothing.check("clock_shift").metadata["id_epoch_shift"] == "undetermined"


def _trade(minute, side, usd, tokens, wallet, bar_hour=0):
    epoch = int((T0 + pd.Timedelta(hours=bar_hour, minutes=minute)).timestamp())
    return {"id": f"solana_1_tx{minute}{side}{bar_hour}_0_{epoch}", "block_number": 1, "tx_hash": "tx",
            "tx_from_address": wallet, "from_token_amount": tokens if side == "sell" else usd / 200,
            "to_token_amount": tokens if side == "buy" else usd / 200, "price_usd": 200.0 if side == "buy" else usd / tokens,
            "volume_usd": usd, "side": side, "block_timestamp": T0 + pd.Timedelta(hours=bar_hour + 6, minutes=minute)}


def test_per_bar_aggregates():
    raw = pd.DataFrame([_trade(1, "buy", 200.0, 100.0, "w1"), _trade(5, "buy", 300.0, 100.0, "w2"),
                        _trade(9, "sell", 100.0, 50.0, "w1"), _trade(20, "sell", 150.0, 100.0, None),
                        _trade(3, "buy", 120.0, 60.0, "w3", bar_hour=2)])
    trades, invalid = prepare_trades(raw)
    per_bar = aggregate_per_bar(trades, 3600)
    assert invalid.empty and list(per_bar.index) == [T0, T0 + pd.Timedelta(hours=2)]
    first = per_bar.loc[T0]
    assert (first["trade_count"], first["buy_count"], first["sell_count"]) == (4, 2, 2)
    assert (first["buy_usd"], first["sell_usd"]) == (500.0, 250.0)
    assert first["unique_traders"] == 2 and first["unknown_wallets"] == 1   # a missing wallet is not a trader
    assert first["trade_vwap"] == pytest.approx(750.0 / 350.0)
    assert (first["min_price"], first["max_price"]) == (1.5, 3.0)


def test_volume_above_the_bar_and_trades_in_missing_bars_fail_their_checks():
    bars = pd.DataFrame({"open": [2.0] * 30, "high": [3.0] * 30, "low": [1.0] * 30, "close": [2.0] * 30,
                         "volume": [1000.0] * 30},
                        index=pd.date_range(T0, periods=30, freq="h", name="open_time"))
    raw = pd.DataFrame([_trade(10, "buy", 400.0, 200.0, f"w{h}", bar_hour=h) for h in range(0, 28)])
    ok = analyse_trades("p", raw, bars, TradeRules(bar_seconds=3600, min_volume_coverage=0.3))
    assert all(c.passed for c in ok.checks) and ok.usable
    inflated = raw.copy()
    inflated.loc[:4, "volume_usd"] = 5000.0   # more than the bar's whole volume, in 5 of 28 bars
    inflated.loc[:4, "to_token_amount"] = 2500.0
    bad = analyse_trades("p", inflated, bars, TradeRules(bar_seconds=3600, min_volume_coverage=0.3))
    check = bad.check("volume_within_bar_volume")
    assert not check.passed and check.metadata["bars_exceeding"] == 5 and not bad.usable
    holes = analyse_trades("p", raw, bars.drop(bars.index[3:10]), TradeRules(bar_seconds=3600, min_volume_coverage=0.3))
    prices = holes.check("prices_within_bar_range")
    assert not prices.passed and prices.metadata["outside"] == 7   # a trade where the collector has no bar
