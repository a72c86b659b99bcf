"""Execution arithmetic shared by the Nautilus strategies (research/strategy.py) and the vectorised
replay (research/permutation.py): quantities on the size grid, cash-safe buys, sellable balances,
and the plain-list view of a pool's bars. No Nautilus import: the replay and the portfolio stage
must load where NautilusTrader cannot."""

from __future__ import annotations

import math
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal

from q50_assets.lineage.common.costs import execution_price

# USD balances are in cents: notional and commission are each rounded to 0.01, so a buy may
# cost up to 0.01 more than the exact arithmetic. Kept free on every buy.
CASH_MARGIN_USD = 0.02

# A position worth less than this is dust, not a position: Nautilus books balances through floats,
# and a sell capped by the booked balance (sellable_qty) can leave a few size increments behind.
# Decisions, orders and exposure treat dust as flat.
DUST_USD = 0.01


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


class PoolMarket:
    """What the strategies know of the pool's bars, as plain lists indexed by bar position:
    ``ts`` (bar close, epoch ns), ``close`` and ``ref`` (fill reference price: the close, or
    the typical price) per instrument unit (lot), ``volume_usd``; ``bar_ns``, ``lot_tokens``,
    price and size precision. Built by :mod:`q50_assets.lineage.backtest.engine` from the same frame
    as the Nautilus bars."""

    def __init__(self, ts, close, ref, volume_usd, *, bar_ns: int, lot_tokens: int, price_precision: int,
                 size_precision: int):
        self.ts = [int(t) for t in ts]
        self.close = [float(v) for v in close]
        self.ref = [float(v) for v in ref]
        self.volume_usd = [float(v) for v in volume_usd]
        if not len(self.ts) == len(self.close) == len(self.ref) == len(self.volume_usd):
            raise ValueError("PoolMarket lists differ in length")
        self.bar_ns = int(bar_ns)
        self.lot_tokens = int(lot_tokens)
        self.price_precision = int(price_precision)
        self.size_precision = int(size_precision)
        self.index_of = {t: i for i, t in enumerate(self.ts)}


__all__ = ["CASH_MARGIN_USD", "DUST_USD", "PoolMarket", "affordable_buy_qty", "floor_qty", "sellable_qty"]
