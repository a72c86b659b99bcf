"""The permutation null of a strategy's timing: its own positions, shifted in time, replayed with
the same costs and execution.

Is the Q50 strategy's result due to WHEN it holds, or would holding the same positions for the
same lengths at random times do as well? Each null draw circularly shifts the strategy's
schedule of target fractions (:attr:`BacktestOutcome.equity` ``target``: the fraction decided at
each bar close, NaN = no order) over the out-of-sample bars by a random offset: every holding run
keeps its length and size, the exposure is the same, only the timing is lost. Every draw is
replayed under the same execution rules and the same cost model as the Nautilus run: latency,
zero-volume expiry, volume and liquidity caps, the rebalance band, cash-safe buys, fee + impact
at the pool's reserve at the fill's time, tick and cent rounding
(:mod:`q50_assets.lineage.backtest.strategy`, :mod:`q50_assets.lineage.common.costs`).

The replay is vectorised over draws (numpy arrays of one value per draw, one step per bar): a
thousand draws cost about as much as a few Nautilus engines. It mirrors
:class:`q50_assets.lineage.backtest.strategy.TargetStrategy` rule for rule (sharing research/execution.py); ``test_permutation.py``
replays shifted schedules through Nautilus and checks fills and equity agree.

Statistic: the mean per-bar simple return of equity net of all costs over the out-of-sample
span on the full time grid (missing bars count, flat). p-value: (1 + #draws >= statistic) /
(draws + 1). Pooled over pools: the same statistic averaged over pools, per draw index
(:func:`pooled_p_value`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

import numpy as np

from q50_assets.lineage.common.costs import CostModel
from q50_assets.lineage.backtest.execution import CASH_MARGIN_USD, DUST_USD, PoolMarket


@dataclass(frozen=True)
class ReplayParams:
    """Execution of the replay: the same numbers as the strategy's (research/strategy.py)."""

    starting_capital_usd: float
    fee_rate: float
    max_reserve_fraction: float
    min_trade_fraction: float
    fill_latency_bars: int
    max_volume_share: float | None


class ReplayMarket:
    """Per-bar arrays of one pool for the replay: bar close ns, close and fill reference price per
    lot, USD volume, the quote reserve at each bar's time (NaN = no impact), precisions."""

    def __init__(self, market: PoolMarket, cost_model: CostModel):
        self.ts = np.asarray(market.ts, dtype=np.int64)
        self.close = np.asarray(market.close, dtype=np.float64)
        self.ref = np.asarray(market.ref, dtype=np.float64)
        self.volume_usd = np.asarray(market.volume_usd, dtype=np.float64)
        reserve = [cost_model.reserve_at(int(t))[0] for t in self.ts]
        self.quote_reserve = np.array([np.nan if r is None else r / 2.0 for r in reserve], dtype=np.float64)
        self.bar_ns = market.bar_ns
        self.price_precision = market.price_precision
        self.size_precision = market.size_precision

    def __len__(self) -> int:
        return len(self.ts)

    def fill_bar(self, latency: int) -> np.ndarray:
        """Position of the bar a decision at each bar fills on (-1: that bar is missing)."""
        if latency == 0:
            return np.arange(len(self.ts))
        target = self.ts + latency * self.bar_ns
        pos = np.searchsorted(self.ts, target)
        found = (pos < len(self.ts)) & (self.ts[np.minimum(pos, len(self.ts) - 1)] == target)
        return np.where(found, pos, -1)


def _floor_units(value: np.ndarray, scale: float) -> np.ndarray:
    """strategy.floor_qty in increments: remove float noise below 1e-6 increment, round down."""
    units = np.floor(np.round(value * scale, 6))
    return np.where(np.isfinite(units) & (units > 0), units, 0.0)


def _cents(value: np.ndarray) -> np.ndarray:
    """Nautilus Money(USD): half away from zero to 0.01 (values here are >= 0)."""
    return np.floor(value * 100.0 + 0.5) / 100.0


def _commission(notional_cents: np.ndarray, fee_ratio: tuple[int, int]) -> np.ndarray:
    """Nautilus' MakerTakerFeeModel: Money(float(Decimal(notional) * Decimal(fee))). The exact
    decimal product, as a correctly rounded float (an integer division), then cents."""
    num, den = fee_ratio
    cents = np.round(notional_cents * 100.0)
    return _cents(cents * num / (den * 100.0))


def _exec_price(ref: float, qty: np.ndarray, is_buy: bool, quote: float, cap: float, price_scale: float) -> np.ndarray:
    """costs.execution_price, vectorised: AMM average price rounded against the trader to a tick."""
    if math.isnan(quote):
        u = np.zeros_like(qty)
    else:
        u = np.minimum(np.maximum(qty * ref, 0.0) / quote, cap)
    raw = ref / (1.0 - u) if is_buy else ref / (1.0 + u)
    ticks = np.round(raw * price_scale, 6)
    return (np.ceil(ticks) if is_buy else np.floor(ticks)) / price_scale


@dataclass
class ReplayResult:
    equity: np.ndarray  # (bars, draws): equity after each bar's fills
    fills: np.ndarray  # (draws,) fills made
    traded_usd: np.ndarray  # (draws,) notional traded


def replay_targets(market: ReplayMarket, params: ReplayParams, taus: np.ndarray, start: int = 0) -> ReplayResult:
    """Replay target schedules through the strategy's execution rules, vectorised over draws.

    ``taus``: (bars, draws) fraction of equity decided at each bar close, NaN = no order.
    Bars before ``start`` must hold no decision (the replay starts flat there).
    """
    n, draws = taus.shape
    if n != len(market):
        raise ValueError(f"taus has {n} bars, the market {len(market)}")
    size_scale = 10.0 ** market.size_precision
    price_scale = 10.0 ** market.price_precision
    fee, cap_frac = params.fee_rate, params.max_reserve_fraction
    fee_ratio = Decimal(repr(fee)).as_integer_ratio()
    cash = np.full(draws, float(params.starting_capital_usd))
    units = np.zeros(draws)  # position in size increments (exact integers in float64)
    fills = np.zeros(draws, dtype=np.int64)
    traded = np.zeros(draws)
    equity = np.empty((n, draws))
    equity[:start] = params.starting_capital_usd
    fill_bar = market.fill_bar(params.fill_latency_bars)
    pending: dict[int, np.ndarray] = {}

    def execute(i: int, target: np.ndarray) -> None:
        nonlocal cash, units
        if not market.volume_usd[i] > 0:
            return  # every order on a zero-volume bar expires
        ref = float(market.ref[i])
        quote = float(market.quote_reserve[i])
        cap = math.inf if params.max_volume_share is None else params.max_volume_share * market.volume_usd[i] / ref
        if not math.isnan(quote):
            cap = min(cap, cap_frac * quote / ref)
        qty = units / size_scale
        delta = target - qty
        has = ~np.isnan(target)
        buy = has & (delta > 0)
        sell = has & (delta < 0)
        if buy.any():
            b = _floor_units(np.minimum(np.where(buy, delta, 0.0), cap), size_scale)
            # strategy.affordable_buy_qty: closed form, then shrink until the cash covers it.
            budget = (cash - CASH_MARGIN_USD) / (1.0 + fee)
            notional = budget
            if not math.isnan(quote):
                notional = np.minimum(budget * quote / (quote + budget), cap_frac * quote)
            afford = np.where(budget > 0, _floor_units(notional / ref, size_scale), 0.0)
            for _ in range(50):
                q = afford / size_scale
                px = _exec_price(ref, q, True, quote, cap_frac, price_scale)
                cost = q * px * (1.0 + fee) + CASH_MARGIN_USD
                bad = buy & (afford > 0) & (cost > cash)
                if not bad.any():
                    break
                with np.errstate(divide="ignore", invalid="ignore"):  # rows outside `bad` may divide by 0
                    shrunk = _floor_units(q * (cash - CASH_MARGIN_USD) / (cost - CASH_MARGIN_USD), size_scale)
                afford = np.where(bad, np.minimum(shrunk, afford - 1.0), afford)
            afford = np.maximum(afford, 0.0)
            b = np.where(buy, np.minimum(b, afford), 0.0)
            go = b > 0
            if go.any():
                q = b / size_scale
                px = _exec_price(ref, q, True, quote, cap_frac, price_scale)
                notional = _cents(q * px)
                commission = _commission(notional, fee_ratio)
                cash = np.where(go, cash - notional - commission, cash)
                units = np.where(go, units + b, units)
                fills[go] += 1
                traded[go] += notional[go]
        if sell.any():
            held = units.copy()
            # strategy.sellable_qty: beyond 15 significant digits keep a relative 1e-14 back.
            digits = np.floor(np.log10(np.maximum(held / size_scale, 1e-300))) + 1 + market.size_precision
            sellable = np.where(digits > 15, np.floor(held * (1 - 1e-14)), held)
            s = np.minimum(_floor_units(np.minimum(np.where(sell, -delta, 0.0), cap), size_scale), sellable)
            s = np.where(sell, s, 0.0)
            go = s > 0
            if go.any():
                q = s / size_scale
                px = _exec_price(ref, q, False, quote, cap_frac, price_scale)
                notional = _cents(q * px)
                commission = _commission(notional, fee_ratio)
                cash = np.where(go, cash + notional - commission, cash)
                units = np.where(go, units - s, units)
                fills[go] += 1
                traded[go] += notional[go]

    def schedule(i: int, tau: np.ndarray) -> np.ndarray | None:
        has = ~np.isnan(tau)
        if not has.any():
            return None
        close = float(market.close[i])
        qty = units / size_scale
        value = qty * close
        eq = cash + value
        target_value = np.maximum(np.where(has, tau, 0.0), 0.0) * eq
        to_flat = has & (target_value <= 0) & (units > 0)
        # A dust position is flat for the band (research/execution.py): its "rebalance" is an entry.
        inside_band = (value >= DUST_USD) & (np.abs(target_value - value) < params.min_trade_fraction * eq)
        to_target = has & (target_value > 0) & ~inside_band
        target = np.full(draws, np.nan)
        target[to_flat] = 0.0
        target[to_target] = target_value[to_target] / close
        return target if (to_flat | to_target).any() else None

    latency = params.fill_latency_bars
    for i in range(start, n):
        if latency > 0:
            due = pending.pop(i, None)
            if due is not None:
                execute(i, due)
        target = schedule(i, taus[i])
        if target is not None:
            if latency == 0:
                execute(i, target)
            elif fill_bar[i] >= 0:
                pending[int(fill_bar[i])] = target
        equity[i] = cash + units / size_scale * market.close[i]
    return ReplayResult(equity=equity, fills=fills, traded_usd=traded)


def grid_mean_return(equity: np.ndarray, ts: np.ndarray, start: int, grid_bars: int, base: float) -> np.ndarray:
    """Mean per-bar simple return over the out-of-sample span on the full time grid.

    ``equity``: (bars, draws) after each real bar; rows from ``start`` are the span's real bars.
    ``base``: equity before the span. Missing grid bars are flat (return 0) and count in
    ``grid_bars``, so the mean is sum of the real bars' returns / grid_bars.
    """
    span = equity[start:]
    previous = np.vstack([np.full((1, span.shape[1]), base), span[:-1]])
    returns = span / previous - 1.0
    return returns.sum(axis=0) / grid_bars


@dataclass
class PermutationNull:
    """One pool's permutation null (module docstring)."""

    statistic: float  # the strategy's own (from the Nautilus run)
    null: np.ndarray  # (draws,) the statistic of each shifted schedule
    p_value: float
    shifts: np.ndarray  # (draws,) bars each draw was shifted by
    replayed_statistic: float  # the unshifted schedule through the replay (should equal statistic)

    @property
    def draws(self) -> int:
        return int(len(self.null))


def circular_shifts(span: int, draws: int, seed: int) -> np.ndarray:
    """Offsets in [1, span - 1] (uniform, seeded); all 0 when the span has a single bar."""
    if span < 2:
        return np.zeros(draws, dtype=np.int64)
    return np.random.default_rng(seed).integers(1, span, size=draws)


def p_value(statistic: float, null: np.ndarray) -> float:
    """(1 + #draws >= statistic) / (draws + 1): the share of the null at least as good, counting
    the strategy itself (never 0)."""
    null = np.asarray(null, dtype=np.float64)
    return float((1 + np.sum(null >= statistic - 1e-15)) / (len(null) + 1))


def permutation_null(market: ReplayMarket, params: ReplayParams, taus: np.ndarray, start: int, grid_bars: int,
                     statistic: float, draws: int, seed: int) -> PermutationNull:
    """Circular shifts of ``taus`` (the strategy's schedule, one value per bar; NaN = no order)
    over bars ``start`` .. end, replayed; the null of :func:`grid_mean_return`."""
    taus = np.asarray(taus, dtype=np.float64)
    n = len(taus)
    span = n - start
    shifts = circular_shifts(span, draws, seed)
    tail = taus[start:]
    positions = (np.arange(span)[:, None] - shifts[None, :]) % max(span, 1)  # (span, draws)
    shifted = np.full((n, draws), np.nan)
    shifted[start:] = tail[positions]
    base = float(params.starting_capital_usd)
    null = grid_mean_return(replay_targets(market, params, shifted, start).equity, market.ts, start, grid_bars, base)
    own = replay_targets(market, params, taus[:, None], start).equity
    replayed = float(grid_mean_return(own, market.ts, start, grid_bars, base)[0])
    return PermutationNull(statistic=float(statistic), null=null, p_value=p_value(statistic, null), shifts=shifts,
                           replayed_statistic=replayed)


def pooled_p_value(statistics: list[float], nulls: list[np.ndarray]) -> tuple[float, float, np.ndarray]:
    """Pooled over pools: the mean statistic, its null (mean over pools per draw index; every
    pool must have the same number of draws), and the p-value."""
    if not statistics:
        return float("nan"), float("nan"), np.array([])
    lengths = {len(x) for x in nulls}
    if len(lengths) != 1:
        raise ValueError(f"pools have different numbers of null draws: {sorted(lengths)}")
    pooled_null = np.mean(np.vstack(nulls), axis=0)
    pooled = float(np.mean(statistics))
    return pooled, p_value(pooled, pooled_null), pooled_null


__all__ = [
    "PermutationNull",
    "ReplayMarket",
    "ReplayParams",
    "ReplayResult",
    "circular_shifts",
    "grid_mean_return",
    "p_value",
    "permutation_null",
    "pooled_p_value",
    "replay_targets",
]
