"""NautilusTrader strategy that holds a target fraction of equity in one spot pool.

The decisions are made outside (signals -> regimes -> :mod:`q50_assets.research.sizing`):
the config carries ``targets``, a ``dict[int, float]`` from a bar's CLOSE time (epoch ns,
= the Nautilus ``Bar.ts_event``) to the fraction of equity to hold after that close, decided
from what was known at that close. The strategy only turns a target into an order. Thin, like
NautilusTrader's examples: a frozen ``StrategyConfig`` and ``on_bar``.

``on_bar`` at a bar close t:

* target = ``targets.get(t)``; a missing, NaN or negative target means 0 (be flat), values
  above 1 are capped at 1 (no leverage on a cash account). Missing means flat on purpose: a
  bar without a decision must not keep an old position alive silently.
* equity = USD cash + position quantity * close(t).
* trade toward target * equity at the close. A change smaller than ``min_trade_fraction`` of
  equity is skipped (no churn from mark-to-market drift), except a target of 0, which always
  sells what is held.
* buys are sized fee- and impact-aware so the USD balance never goes negative:
  quantity * execution_price * (1 + fee) + 0.02 USD (cent rounding of notional and commission)
  <= free cash, with the execution price of :func:`execution_price` (the same function the
  backtest's fill model uses).
* one trade moves at most ``max_reserve_fraction`` of the pool's quote reserve; a bigger
  change (entry or exit) continues on the next bars.
* the venue fills MARKET orders synchronously (``use_message_queue=False``), at this bar's
  close moved by the pool's price impact, so the state recorded right after the order is the
  post-trade state of bar t.

``equity_rows``: one dict per bar seen, after its trade: ts (bar close ns), clock_ns (the
strategy clock when it acted), close, target, cash, qty, equity, order_side, order_qty.

Price impact (constant-product AMM, x * y = k) -- see :func:`execution_price`.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal

from nautilus_trader.config import StrategyConfig
from nautilus_trader.model.currencies import USD
from nautilus_trader.model.data import Bar, BarType
from nautilus_trader.model.enums import OrderSide
from nautilus_trader.model.identifiers import InstrumentId
from nautilus_trader.model.objects import Quantity
from nautilus_trader.trading.strategy import Strategy

# USD balances are in cents: notional and commission are each rounded to 0.01, so a buy may
# cost up to 0.01 more than the exact arithmetic. Kept free on every buy.
CASH_MARGIN_USD = 0.02


def impact_fraction_of_reserve(notional_usd: float, quote_reserve_usd: float | None,
                               max_reserve_fraction: float) -> float:
    """u = notional / quote reserve, capped at ``max_reserve_fraction``; 0 without a reserve."""
    if quote_reserve_usd is None or not quote_reserve_usd > 0:
        return 0.0
    return min(max(notional_usd, 0.0) / quote_reserve_usd, max_reserve_fraction)


def execution_price(ref_price: float, qty: float, is_buy: bool, quote_reserve_usd: float | None,
                    max_reserve_fraction: float, price_precision: int) -> Decimal:
    """Average execution price of swapping ``qty`` tokens against a constant-product pool.

    Pool with quote reserve Y (USD side, = half the pool's total liquidity ``reserve_usd``) and
    token reserve X = Y / p at mid price p = ``ref_price``. Trading q tokens, with
    u = q * p / Y (the trade's notional as a fraction of the quote reserve):

    * buy:  cost = Y * q / (X - q)  -> average price p / (1 - u)
    * sell: proceeds = Y * q / (X + q) -> average price p / (1 + u)

    (for a buy that SPENDS N USD this is p * (1 + N / Y), the token shortfall being
    N / (Y + N)). u is capped at ``max_reserve_fraction`` (a guard; the strategy never sends
    a bigger trade). No reserve (None) -> no impact: the price is ``ref_price``.

    Rounded to ``price_precision`` decimals against the trader (buy up, sell down) after
    removing float noise far below one tick, so fills never look better than the model.
    """
    u = impact_fraction_of_reserve(qty * ref_price, quote_reserve_usd, max_reserve_fraction)
    raw = ref_price / (1.0 - u) if is_buy else ref_price / (1.0 + u)
    tick = Decimal(1).scaleb(-price_precision)
    denoised = Decimal(raw).quantize(Decimal(1).scaleb(-(price_precision + 6)), rounding=ROUND_HALF_EVEN)
    return denoised.quantize(tick, rounding=ROUND_CEILING if is_buy else ROUND_FLOOR)


def floor_qty(value: float, size_precision: int) -> Decimal:
    """``value`` rounded down to the size increment 10**-size_precision (>= 0), after
    rounding away float noise below 1e-6 increments."""
    if not value > 0 or not math.isfinite(value):
        return Decimal(0)
    # Remove float noise far below one increment first (4999.999999999999 -> 5000).
    denoised = Decimal(value).quantize(Decimal(1).scaleb(-(size_precision + 6)), rounding=ROUND_HALF_EVEN)
    return denoised.quantize(Decimal(1).scaleb(-size_precision), rounding=ROUND_DOWN)


def sellable_qty(tokens: Decimal, size_precision: int) -> Decimal:
    """Most of ``tokens`` (the account's token balance, or the position) a sell may take.

    Nautilus books fills into balances and positions through floats. Beyond ~15 significant
    digits (1e6 tokens at size precision 12: a pool whose price spans many orders of magnitude)
    a sell of everything can exceed the balance or the position by a few increments; Nautilus
    then stops the whole backtest on the negative balance, or leaves a tiny short. There, keep
    a relative 1e-14 back (dust worth far less than a cent); at 15 digits or fewer the floats
    are exact and everything may go.
    """
    if not tokens > 0:
        return Decimal(0)
    if tokens.adjusted() + 1 + size_precision > 15:
        tokens -= tokens * Decimal("1e-14")
    return tokens.quantize(Decimal(1).scaleb(-size_precision), rounding=ROUND_DOWN)


def affordable_buy_qty(cash_usd: float, ref_price: float, fee_rate: float, quote_reserve_usd: float | None,
                       max_reserve_fraction: float, price_precision: int, size_precision: int) -> Decimal:
    """Largest quantity whose buy keeps the USD balance >= 0 (fees, impact and cent rounding).

    Closed form first: spending budget B = (cash - margin) / (1 + fee) in a pool with quote
    reserve Y buys tokens worth n = B * Y / (Y + B) at mid price (n = B without a reserve),
    capped at ``max_reserve_fraction * Y``; then checked with the rounded execution price
    and shrunk until quantity * price * (1 + fee) + margin <= cash.
    """
    budget = (cash_usd - CASH_MARGIN_USD) / (1.0 + fee_rate)
    if not budget > 0 or not ref_price > 0:
        return Decimal(0)
    notional = budget
    if quote_reserve_usd is not None and quote_reserve_usd > 0:
        notional = min(budget * quote_reserve_usd / (quote_reserve_usd + budget),
                       max_reserve_fraction * quote_reserve_usd)
    qty = floor_qty(notional / ref_price, size_precision)
    step = Decimal(1).scaleb(-size_precision)
    for _ in range(50):
        if qty <= 0:
            return Decimal(0)
        px = execution_price(ref_price, float(qty), True, quote_reserve_usd, max_reserve_fraction, price_precision)
        cost = float(qty * px) * (1.0 + fee_rate) + CASH_MARGIN_USD
        if cost <= cash_usd:
            return qty
        shrunk = floor_qty(float(qty) * (cash_usd - CASH_MARGIN_USD) / (cost - CASH_MARGIN_USD), size_precision)
        qty = min(shrunk, qty - step)
    return Decimal(0)


class Q50StrategyConfig(StrategyConfig, frozen=True):
    """Configuration of :class:`Q50Strategy`.

    targets: bar-close ts (ns) -> target fraction of equity held after that close.
    fee_rate: taker fee the venue charges (used for sizing; the venue's fee model charges it).
    quote_reserve_usd: the pool's USD-side reserve (reserve_usd / 2), None = no impact.
    max_reserve_fraction: largest trade, as a fraction of the quote reserve.
    min_trade_fraction: smallest rebalance, as a fraction of equity.
    """

    instrument_id: InstrumentId
    bar_type: BarType
    targets: dict[int, float]
    fee_rate: float = 0.0025
    quote_reserve_usd: float | None = None
    max_reserve_fraction: float = 0.1
    min_trade_fraction: float = 0.02


class Q50Strategy(Strategy):
    """Hold ``targets[bar close]`` of equity in the instrument (module docstring)."""

    def __init__(self, config: Q50StrategyConfig) -> None:
        super().__init__(config)
        self.instrument = None
        self.equity_rows: list[dict] = []

    def on_start(self) -> None:
        self.instrument = self.cache.instrument(self.config.instrument_id)
        if self.instrument is None:
            self.log.error(f"Could not find instrument {self.config.instrument_id}")
            self.stop()
            return
        self.subscribe_bars(self.config.bar_type)

    def _target(self, ts: int) -> float:
        value = self.config.targets.get(ts, 0.0)
        if value is None or not math.isfinite(value) or value <= 0:
            return 0.0
        return min(float(value), 1.0)

    def on_bar(self, bar: Bar) -> None:
        cfg = self.config
        inst = self.instrument
        account = self.portfolio.account(cfg.instrument_id.venue)
        close = bar.close.as_double()
        cash = account.balance_free(USD).as_double()
        held = self.portfolio.net_position(cfg.instrument_id)  # Decimal, >= 0 on a cash account
        equity = cash + float(held) * close
        target = self._target(bar.ts_event)

        # Largest quantity one trade may move (share of the pool's quote reserve).
        max_qty = math.inf
        if cfg.quote_reserve_usd is not None and cfg.quote_reserve_usd > 0:
            max_qty = cfg.max_reserve_fraction * cfg.quote_reserve_usd / close

        side, qty = None, Decimal(0)
        if target == 0.0:
            if held > 0:
                side = OrderSide.SELL
                qty = held if float(held) <= max_qty else floor_qty(max_qty, inst.size_precision)
        else:
            delta_value = target * equity - float(held) * close
            if abs(delta_value) >= cfg.min_trade_fraction * equity:
                if delta_value > 0:
                    side = OrderSide.BUY
                    qty = min(floor_qty(delta_value / close, inst.size_precision),
                              affordable_buy_qty(cash, close, cfg.fee_rate, cfg.quote_reserve_usd,
                                                 cfg.max_reserve_fraction, inst.price_precision,
                                                 inst.size_precision))
                else:
                    side = OrderSide.SELL
                    qty = min(floor_qty(min(-delta_value / close, max_qty), inst.size_precision), held)
        if side == OrderSide.SELL:
            balance = account.balance_free(inst.base_currency)
            tokens = Decimal(0) if balance is None else balance.as_decimal()
            qty = min(qty, sellable_qty(tokens, inst.size_precision), sellable_qty(held, inst.size_precision))
        # The exact decimal, rounded down to the increment (a float could round up).
        qty = qty.quantize(Decimal(1).scaleb(-inst.size_precision), rounding=ROUND_DOWN)
        if side is not None and qty > 0:
            order = self.order_factory.market(cfg.instrument_id, side, Quantity.from_str(format(qty, "f")))
            self.submit_order(order)
            # Fills are synchronous on this venue: read the post-trade state.
            cash = account.balance_total(USD).as_double()
            held = self.portfolio.net_position(cfg.instrument_id)
        else:
            side, qty = None, Decimal(0)

        self.equity_rows.append({
            "ts": bar.ts_event,
            "clock_ns": self.clock.timestamp_ns(),
            "close": close,
            "target": target,
            "cash": cash,
            "qty": float(held),
            "equity": cash + float(held) * close,
            "order_side": "" if side is None else ("BUY" if side == OrderSide.BUY else "SELL"),
            "order_qty": float(qty),
        })

    def on_stop(self) -> None:
        pass


__all__ = [
    "CASH_MARGIN_USD",
    "Q50Strategy",
    "Q50StrategyConfig",
    "affordable_buy_qty",
    "execution_price",
    "floor_qty",
    "sellable_qty",
    "impact_fraction_of_reserve",
]
