"""Trades: the collector's swaps of one pool, checked against its bars and aggregated per bar.

Pure pandas; the collector read is ``CollectorReader.read_trades_many``, the per-bar fields go to
the QLib store, where the flow features are QLib expressions (``research.features``).

The collector's quirks, handled here (all real, all in the bundled sample):

* **Time.** A trade id is ``{network}_{block}_{txhash}_{logidx}_{epoch}``; the epoch suffix is the
  trade's time. ``block_timestamp`` is shifted +6 h (naive UTC written through a UTC-6 session).
  Trades are placed by the id's epoch; :func:`find_clock_shift` tests constant shifts of either
  clock against the bars and names the one that fits, so a check sees a clock that drifted.
* **Price.** ``price_usd`` is the price of the token the trader GAVE: a buy (quote -> pool token)
  shows the quote's price (SOL, ~230 USD), a sell the pool token's. The pool token's USD price is
  derived from the trade itself: ``volume_usd / token amount``, where the token amount is
  ``to_token_amount`` for a buy and ``from_token_amount`` for a sell.
* **Coverage.** The collector keeps trades of at least 100 USD only, and only since it started
  watching the pool: summed trade volume is a LOWER bound of the bar's volume, and outside the
  span the collected trades cover, trade fields are unknown (NaN), never zero.

Each check below is a warning, not a block: a pool with unusable trades still runs on its bars,
but its trade fields are not written, so its flow features are missing (NaN, counted).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from q50_assets.lineage.ohlcv.rules import BarRules
from q50_assets.settings import Settings, TradeSettings

# Columns read from the collector's ``trades`` table (its names).
RAW_TRADE_COLUMNS = ("id", "block_number", "tx_hash", "tx_from_address", "from_token_amount", "to_token_amount",
                     "price_usd", "volume_usd", "side", "block_timestamp")

# Per-bar fields written to the pool's QLib store (``$trade_count`` etc. in expressions).
TRADE_FIELDS = ("trade_count", "buy_usd", "sell_usd", "unique_traders", "trade_vwap")

# Constant clock shifts tried, in hours: a wrong time zone is a whole number of hours.
CLOCK_LAGS_HOURS = tuple(range(-12, 13))
# Below this many trades inside the bars' span a best shift is not told apart from chance.
MIN_TRADES_FOR_CLOCK = 10
# A trade's pool-token price must lie within its bar's low-high (up to the tolerance below) for at
# least this share of trades. On the sample it is 1.0 at 15m-4h and 0.94 at 1m (the id's epoch
# trails the block by 3-30 s, so a few trades land in the next minute's bar).
MIN_PRICE_INSIDE_SHARE = 0.9
# volume_usd is rounded to cents (2 decimals) on trades of >= 100 USD: the derived price carries
# up to 5e-5 relative error.
PRICE_RELATIVE_TOLERANCE = 1e-4
# Summed trade volume may exceed its bar's volume (beyond a cent per trade of rounding) in at most
# this share of bars with trades: the same few-seconds lag moves a trade into the next bar.
MAX_VOLUME_EXCESS_SHARE = 0.05
MAX_LISTED = 20

TRADE_CHECKS = ("trade_rows_valid", "prices_within_bar_range", "volume_within_bar_volume", "clock_shift",
                "trade_coverage")


class TradeRules(TradeSettings, BarRules):
    """What :func:`analyse_trades` needs to know: the settings' ``trades`` section, and the bars'
    rules for their length and price scale."""

    @classmethod
    def of(cls, settings: Settings) -> "TradeRules":
        return cls(**settings.trades.model_dump(), **BarRules.of(settings).model_dump())


@dataclass(frozen=True)
class TradeCheck:
    name: str
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class TradeAnalysis:
    """One pool's trades, checked and aggregated; ``grid`` is what goes to the QLib store."""

    pool_id: str
    rows_read: int
    trades: pd.DataFrame          # valid rows: see prepare_trades
    invalid: pd.DataFrame         # id, reason
    per_bar: pd.DataFrame         # per bar open with trades inside the complete bars (see aggregate_per_bar)
    grid: pd.DataFrame | None     # TRADE_FIELDS per bar over the covered span, when usable; else None
    checks: list[TradeCheck]
    counts: dict[str, int]
    clock: dict[str, pd.DataFrame]  # clock name -> lag table

    @property
    def usable(self) -> bool:
        return self.grid is not None

    def check(self, name: str) -> TradeCheck:
        return next(c for c in self.checks if c.name == name)

    @property
    def reason(self) -> str:
        """Why the trade fields are (not) written, in one line."""
        if self.usable:
            return "every trade check passed"
        failed = [c.name for c in self.checks if not c.passed]
        return f"failed: {', '.join(failed)}" if failed else "flow features are switched off (trades.flow_features)"


class TradeDataError(ValueError):
    """Trades rows lack the collector's columns."""


def trade_epoch(trade_id: str) -> int | None:
    """The epoch-seconds suffix of a collector trade id, or None when the id has none."""
    if not isinstance(trade_id, str) or trade_id.count("_") < 4:
        return None
    suffix = trade_id.rsplit("_", 1)[1]
    if not suffix.isdigit():
        return None
    value = int(suffix)
    # Seconds of 2001-2286; a millisecond epoch (13 digits) is not a second epoch.
    return value if 1_000_000_000 <= value < 10_000_000_000 else None


def _utc(values) -> pd.Series:
    """UTC times from SQLite (naive, stored as UTC) or PostgreSQL (aware) values; NaT where missing."""
    return pd.to_datetime(pd.Series(values), utc=True, errors="coerce").dt.as_unit("ns")


def prepare_trades(raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Collector trade rows -> (valid trades, invalid rows with their reason).

    Valid trades are indexed by trade id with columns ``time`` (the id's epoch, UTC),
    ``block_time`` (``block_timestamp`` as stored, UTC; NaT if missing), ``side`` (buy/sell),
    ``token_amount`` (pool-token units), ``price`` (pool-token USD), ``volume_usd``, ``wallet``
    (``tx_from_address``; None when missing). Every row read is one or the other.
    """
    missing = [c for c in RAW_TRADE_COLUMNS if c not in raw.columns]
    if missing:
        raise TradeDataError(f"trades rows lack columns {missing}")
    frame = raw[list(RAW_TRADE_COLUMNS)].copy()
    epochs = frame["id"].map(trade_epoch)
    side = frame["side"].astype("string").str.lower()
    volume = pd.to_numeric(frame["volume_usd"], errors="coerce").astype("float64")
    from_amount = pd.to_numeric(frame["from_token_amount"], errors="coerce").astype("float64")
    to_amount = pd.to_numeric(frame["to_token_amount"], errors="coerce").astype("float64")
    token_amount = pd.Series(np.where(side == "buy", to_amount, from_amount), index=frame.index, dtype="float64")

    reason = pd.Series(pd.NA, index=frame.index, dtype="string")

    def flag(mask, text):
        nonlocal reason
        mask = pd.Series(mask, index=frame.index).fillna(True).astype(bool)
        reason = reason.mask(mask & reason.isna(), text)

    flag(epochs.isna(), "id has no epoch-seconds suffix ({network}_{block}_{txhash}_{logidx}_{epoch})")
    flag(~side.isin(["buy", "sell"]), "side is neither buy nor sell")
    flag(~(np.isfinite(volume) & (volume > 0)), "volume_usd missing, non-finite or <= 0")
    flag(~(np.isfinite(token_amount) & (token_amount > 0)),
         "pool-token amount (to_token_amount of a buy, from_token_amount of a sell) missing, non-finite or <= 0")
    bad = reason.notna()

    invalid = pd.DataFrame({"id": frame.loc[bad, "id"].astype(str), "reason": reason[bad].astype(str)})
    ok = ~bad
    wallets = frame.loc[ok, "tx_from_address"]
    trades = pd.DataFrame({
        "time": pd.DatetimeIndex(pd.to_datetime(epochs[ok].astype("int64"), unit="s", utc=True)).as_unit("ns"),
        "block_time": pd.DatetimeIndex(_utc(frame.loc[ok, "block_timestamp"].to_numpy())),
        "side": side[ok].astype(str),
        "token_amount": token_amount[ok],
        "price": volume[ok] / token_amount[ok],
        "volume_usd": volume[ok],
        "wallet": wallets.where(wallets.notna() & (wallets.astype(str) != ""), None),
    })
    trades.index = pd.Index(frame.loc[ok, "id"].astype(str), name="trade_id")
    return trades.sort_values(["time"], kind="stable"), invalid.reset_index(drop=True)


def bar_opens(times: pd.Series, bar_seconds: int) -> pd.Series:
    """The open of the bar each time falls in (bars are aligned to the epoch, as the collector's)."""
    return times.dt.floor(f"{bar_seconds}s")


def _price_inside(prices: np.ndarray, low: np.ndarray, high: np.ndarray, decimals: int) -> np.ndarray:
    """Price within [low, high], widened by half a unit of the bars' stored scale and the derived
    price's rounding error. NaN bounds (no bar) are never inside."""
    half_unit = 0.5 * 10.0 ** (-decimals)
    slack = half_unit + PRICE_RELATIVE_TOLERANCE * np.abs(prices)
    return (prices >= low - slack) & (prices <= high + slack)


def find_clock_shift(times: pd.Series, prices: pd.Series, bars: pd.DataFrame, bar_seconds: int,
                     decimals: int = 8, lags_hours=CLOCK_LAGS_HOURS) -> tuple[int | None, pd.DataFrame]:
    """Which constant shift L (hours) of a clock fits the bars: the share of trades whose price lies
    within the low-high of the bar that ``time - L`` falls in, for each L. A trade landing where
    there is no bar counts as a miss. Returns (best L, table); the best is the highest share, ties
    going to the smaller |L|; None when fewer than MIN_TRADES_FOR_CLOCK trades have a time.
    ``bars``: index open_time (UTC), columns low, high."""
    valid = times.notna().to_numpy()
    t = pd.DatetimeIndex(times[valid]).as_unit("ns").asi8
    p = prices[valid].to_numpy(dtype="float64")
    # All lags at once, on integer nanoseconds: the bar each shifted time falls in, looked up by
    # binary search among the bars' opens (bars are sorted and unique).
    opens = pd.DatetimeIndex(bars.index).as_unit("ns").asi8
    low, high = bars["low"].to_numpy(float), bars["high"].to_numpy(float)
    bar_ns = bar_seconds * 1_000_000_000
    lags = np.asarray(lags_hours, dtype="int64")
    shifted = (t[None, :] - lags[:, None] * 3_600_000_000_000) // bar_ns * bar_ns
    if len(opens) == 0 or len(t) == 0:
        found = inside = np.zeros(shifted.shape, dtype=bool)
    else:
        pos = np.clip(np.searchsorted(opens, shifted), 0, len(opens) - 1)
        found = opens[pos] == shifted
        inside = found & _price_inside(p[None, :], np.where(found, low[pos], np.nan),
                                       np.where(found, high[pos], np.nan), decimals)
    rows = [{"lag_hours": int(lag), "trades": int(len(t)), "in_a_bar": int(found[i].sum()),
             "inside_share": float(inside[i].mean()) if len(t) else float("nan")} for i, lag in enumerate(lags)]
    table = pd.DataFrame(rows)
    if len(t) < MIN_TRADES_FOR_CLOCK:
        return None, table
    ranked = table.assign(abs_lag=table["lag_hours"].abs()).sort_values(
        ["inside_share", "abs_lag"], ascending=[False, True], kind="stable")
    return int(ranked["lag_hours"].iloc[0]), table


def aggregate_per_bar(trades: pd.DataFrame, bar_seconds: int) -> pd.DataFrame:
    """Per bar open (UTC) with at least one trade: trade_count, buy_count, sell_count, buy_usd,
    sell_usd, unique_traders (distinct tx_from_address), unknown_wallets, token_volume,
    trade_vwap (USD / pool tokens), min_price, max_price."""
    if trades.empty:
        return pd.DataFrame(columns=["trade_count", "buy_count", "sell_count", "buy_usd", "sell_usd", "unique_traders",
                                     "unknown_wallets", "token_volume", "trade_vwap", "min_price", "max_price"],
                            index=pd.DatetimeIndex([], tz="UTC", name="open_time"), dtype="float64")
    t = trades.assign(open_time=bar_opens(trades["time"], bar_seconds).to_numpy(),
                      buy=trades["side"] == "buy")
    t["buy_usd"] = t["volume_usd"].where(t["buy"], 0.0)
    t["sell_usd"] = t["volume_usd"].where(~t["buy"], 0.0)
    g = t.groupby("open_time", sort=True)
    out = pd.DataFrame({
        "trade_count": g.size().astype("float64"),
        "buy_count": g["buy"].sum().astype("float64"),
        "sell_count": (g.size() - g["buy"].sum()).astype("float64"),
        "buy_usd": g["buy_usd"].sum(),
        "sell_usd": g["sell_usd"].sum(),
        "unique_traders": g["wallet"].nunique().astype("float64"),
        "unknown_wallets": g["wallet"].apply(lambda w: int(w.isna().sum())).astype("float64"),
        "token_volume": g["token_amount"].sum(),
        "min_price": g["price"].min(),
        "max_price": g["price"].max(),
    })
    out["trade_vwap"] = (out["buy_usd"] + out["sell_usd"]) / out["token_volume"]
    out.index = pd.DatetimeIndex(out.index, name="open_time").tz_convert("UTC")
    return out


def _listed(frame: pd.DataFrame, columns: list[str]) -> list[dict]:
    out = []
    for idx, row in frame.head(MAX_LISTED).iterrows():
        item = {"key": idx.isoformat() if isinstance(idx, pd.Timestamp) else str(idx)}
        for c in columns:
            v = row[c]
            item[c] = v.isoformat() if isinstance(v, pd.Timestamp) else (None if pd.isna(v) else
                                                                          (float(v) if isinstance(v, (float, np.floating)) else v))
        out.append(item)
    return out


def _lag_name(lag: int | None) -> str:
    return "undetermined" if lag is None else f"{lag:+d} h"


def analyse_trades(pool_id: str, raw: pd.DataFrame, bars: pd.DataFrame, rules: TradeRules) -> TradeAnalysis:
    """Check one pool's collector trades against its complete bars and build its per-bar trade fields.

    ``bars``: the pool's validated complete bars (index open_time UTC; low, high, volume).
    Every trade read is counted once: invalid, before the first bar, inside the complete bars, or
    at/after the held-back newest bar (whose bar may still change).
    """
    bar = pd.Timedelta(seconds=rules.bar_seconds)
    trades, invalid = prepare_trades(raw)
    counts = {"trades_read": len(raw), "invalid": len(invalid)}
    if len(bars):
        first, end = bars.index[0], bars.index[-1] + bar
        inside_span = (trades["time"] >= first) & (trades["time"] < end)
        counts["before_first_bar"] = int((trades["time"] < first).sum())
        counts["at_or_after_held_back_bar"] = int((trades["time"] >= end).sum())
    else:
        inside_span = pd.Series(False, index=trades.index)
        counts["before_first_bar"] = counts["at_or_after_held_back_bar"] = 0
    used = trades[inside_span.to_numpy()]
    counts["inside_complete_bars"] = len(used)
    counts["unknown_wallets"] = int(used["wallet"].isna().sum())
    checks: list[TradeCheck] = []

    checks.append(TradeCheck(
        "trade_rows_valid", len(invalid) == 0,
        "Every trades row has an epoch-suffixed id, a buy/sell side, a positive USD volume and a positive "
        "pool-token amount.",
        {"rows_read": len(raw), "invalid_rows": len(invalid),
         "first_invalid": invalid.head(MAX_LISTED).to_dict("records")}))

    # Prices at the id's epoch: inside the bar's low-high?
    hit = bars[["low", "high", "volume"]].reindex(pd.DatetimeIndex(bar_opens(used["time"], rules.bar_seconds)))
    inside = _price_inside(used["price"].to_numpy(float), hit["low"].to_numpy(float), hit["high"].to_numpy(float),
                           rules.stored_price_decimals)
    inside_share = float(inside.mean()) if len(used) else float("nan")
    outside = used.loc[~inside].assign(bar_low=hit["low"].to_numpy()[~inside], bar_high=hit["high"].to_numpy()[~inside])
    checks.append(TradeCheck(
        "prices_within_bar_range", len(used) == 0 or inside_share >= MIN_PRICE_INSIDE_SHARE,
        f"At least {MIN_PRICE_INSIDE_SHARE:.0%} of trades (placed by the id's epoch) have a pool-token price "
        "(volume_usd / token amount) within their bar's low-high; a trade in a bar the collector does not have "
        "counts as outside.",
        {"trades_checked": len(used), "inside_share": inside_share, "outside": int((~inside).sum()),
         "first_outside": _listed(outside, ["time", "side", "price", "bar_low", "bar_high"])}))

    # Summed trade volume is a lower bound of the bar's volume (>= 100 USD trades only).
    per_bar = aggregate_per_bar(used, rules.bar_seconds)
    bar_volume = bars["volume"].reindex(per_bar.index)
    trade_volume = per_bar["buy_usd"] + per_bar["sell_usd"]
    excess = trade_volume > bar_volume.fillna(0.0) + 0.01 * per_bar["trade_count"] + 0.005
    excess_share = float(excess.mean()) if len(per_bar) else 0.0
    over = pd.DataFrame({"trade_usd": trade_volume[excess], "bar_usd": bar_volume[excess]})
    checks.append(TradeCheck(
        "volume_within_bar_volume", excess_share <= MAX_VOLUME_EXCESS_SHARE,
        "Summed trade volume is a lower bound of the bar's volume (the collector keeps trades >= 100 USD): it "
        f"exceeds it (beyond rounding) in at most {MAX_VOLUME_EXCESS_SHARE:.0%} of bars with trades.",
        {"bars_with_trades": len(per_bar), "bars_exceeding": int(excess.sum()), "exceeding_share": excess_share,
         "median_trade_share_of_bar_volume": float((trade_volume / bar_volume).median()) if len(per_bar) else float("nan"),
         "first_exceeding": _listed(over, ["trade_usd", "bar_usd"])}))

    # Constant clock shifts of both clocks, on the same trades.
    id_lag, id_table = find_clock_shift(used["time"], used["price"], bars, rules.bar_seconds, rules.stored_price_decimals)
    block_lag, block_table = find_clock_shift(used["block_time"], used["price"], bars, rules.bar_seconds,
                                              rules.stored_price_decimals)
    clock_ok = id_lag in (0, None)
    checks.append(TradeCheck(
        "clock_shift", clock_ok,
        "Constant shifts of -12 h..+12 h of each clock, scored by the share of trades priced within the bar they "
        "then fall in: the id's epoch (the time used) must fit best unshifted; block_timestamp's best shift is "
        "named (the collector's is +6 h).",
        {"trades": len(used), "id_epoch_shift": _lag_name(id_lag), "block_timestamp_shift": _lag_name(block_lag),
         "id_epoch_inside_share_unshifted": _share_at(id_table, 0),
         "block_timestamp_inside_share_at_its_shift": _share_at(block_table, block_lag),
         "block_timestamp_inside_share_unshifted": _share_at(block_table, 0)}))

    # Coverage: the span the collected trades cover, and how much of its bar volume they explain.
    if len(per_bar):
        span = bars.loc[per_bar.index[0]:per_bar.index[-1]]
        covered_bars = len(span)
        volume_share = float(trade_volume.sum() / span["volume"].sum()) if span["volume"].sum() > 0 else float("nan")
    else:
        span, covered_bars, volume_share = bars.iloc[0:0], 0, float("nan")
    coverage_ok = covered_bars >= rules.min_covered_bars and volume_share >= rules.min_volume_coverage
    checks.append(TradeCheck(
        "trade_coverage", bool(coverage_ok),
        f"The collected trades span at least trades.min_covered_bars ({rules.min_covered_bars}) of the pool's bars and "
        f"explain at least trades.min_volume_coverage ({rules.min_volume_coverage:.0%}) of those bars' USD volume.",
        {"covered_bars": covered_bars, "complete_bars": len(bars), "bar_coverage": covered_bars / max(len(bars), 1),
         "volume_share": volume_share,
         "span_first_open": span.index[0].isoformat() if covered_bars else "none",
         "span_last_open": span.index[-1].isoformat() if covered_bars else "none"}))

    grid = None
    if rules.flow_features and all(c.passed for c in checks):
        grid = trade_grid(per_bar, span.index[0], span.index[-1], rules.bar_seconds)
    return TradeAnalysis(pool_id=pool_id, rows_read=len(raw), trades=trades, invalid=invalid, per_bar=per_bar,
                         grid=grid, checks=checks, counts=counts,
                         clock={"id_epoch": id_table, "block_timestamp": block_table})


def _share_at(table: pd.DataFrame, lag: int | None) -> float:
    if lag is None or table.empty:
        return float("nan")
    return float(table.loc[table["lag_hours"] == lag, "inside_share"].iloc[0])


def trade_grid(per_bar: pd.DataFrame, first_open: pd.Timestamp, last_open: pd.Timestamp, bar_seconds: int) -> pd.DataFrame:
    """TRADE_FIELDS on every bar from ``first_open`` to ``last_open``: within the span the collector
    was collecting, a bar without a (>= 100 USD) trade has zero trades and volumes, and no VWAP."""
    index = pd.date_range(first_open, last_open, freq=pd.Timedelta(seconds=bar_seconds), name="open_time")
    grid = per_bar.reindex(index)
    for column in ("trade_count", "buy_usd", "sell_usd", "unique_traders"):
        grid[column] = grid[column].fillna(0.0)
    return grid[list(TRADE_FIELDS)].astype("float64")
