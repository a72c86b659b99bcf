"""NautilusTrader strategies for one spot pool: the Q50 strategy and a target-schedule strategy,
sharing one execution layer (latency fills, volume and liquidity caps, cash-safe sizing).

Thin, like NautilusTrader's examples: a frozen ``StrategyConfig`` and an ``on_bar`` that reads
plain floats (no pandas per bar). Bars are stamped at their CLOSE (``Bar.ts_event``).

**Deciding** (at a bar's close t, from what is known at t):

* :class:`Q50Strategy` asks its :class:`~q50_assets.lineage.signals.rules.Q50SignalLoader` for the
  signal known at t and its :class:`~q50_assets.lineage.regimes.rules.RegimeDetector` for the regime
  known at t, reads the pool's liquidity known at t from the cost model
  (:class:`~q50_assets.lineage.common.costs.CostModel`), and calls
  :func:`q50_assets.lineage.signals.sizing.decide` (enter / add / keep / trim / exit, sized where the
  edge net of fee and impact is largest). A signal or regime that is not the one of the bar that
  just closed (a late prediction, a gap) counts as none: no new risk, and a held position exits.
* :class:`TargetStrategy` reads a fixed schedule: bar close -> fraction of equity (baselines,
  permutation checks).

Both produce a target fraction of equity after the fill, or NaN = leave the position alone.

**Scheduling** (:meth:`_TargetExecution._schedule`, shared): a target becomes an order for
target x equity / close(t) tokens, to fill ``fill_latency_bars`` (L) bars later. The rebalance
band applies to buys and sells alike: a change of an open position smaller than
``min_trade_fraction`` of equity is skipped (no churn from drift); opening from flat and closing
to flat are not rebalances and always go (the cost-optimal entry is often far smaller than the
band). A position worth under a cent (``DUST_USD``: float booking leftovers) counts as flat
for decisions and the band; an exit sells it too. With L >= 2 several orders may be pending; each moves the position toward its own target.

**Executing** (:meth:`_TargetExecution._execute`, shared), at the close of the fill bar (the bar
opening L bars after the decision bar closed; L = 0: at the decision's own close, the
``q50_close`` variant):

* a fill bar that is missing (no swaps in that hour) or has zero volume fills nothing: the order
  EXPIRES unfilled (counted in ``orders_expired``) and the next decision starts from the
  position actually held;
* one fill moves at most ``max_volume_share`` of the fill bar's USD volume and
  ``max_reserve_fraction`` of the pool's USD reserve; the rest of the order is dropped (the next
  decision may continue it);
* buys are sized so the USD balance never goes negative (fee, impact and cent rounding
  included: :func:`affordable_buy_qty`); sells never exceed the booked balance
  (:func:`sellable_qty`);
* the venue's fill model (:class:`q50_assets.lineage.backtest.engine.AmmImpactFillModel`) fills the
  MARKET order synchronously at the fill bar's reference price (its close, or its typical price
  (h+l+c)/3 -- a setting) moved by constant-product impact, and charges the swap fee: the same
  cost model the decision used.

Records (plain tuples, turned into frames after the run): ``equity_ts`` / ``equity_rows`` one per
bar after its fills; ``orders`` one per order decided (filled or expired) with what the cost model expected it
to cost; ``decisions`` (Q50 only) one per bar where it held a position or acted (enter, add,
keep, trim, exit): a flat bar that stays flat is not recorded (the signal table's ``reason``
says why a flat book would not enter).
"""

from __future__ import annotations

import importlib
import math
from decimal import ROUND_DOWN, Decimal

from nautilus_trader.config import StrategyConfig
from nautilus_trader.model.currencies import USD
from nautilus_trader.model.data import Bar, BarType
from nautilus_trader.model.enums import OrderSide
from nautilus_trader.model.identifiers import InstrumentId
from nautilus_trader.model.objects import Quantity
from nautilus_trader.trading.strategy import Strategy

from q50_assets.lineage.common.costs import CostModel
from q50_assets.lineage.backtest.execution import (CASH_MARGIN_USD, DUST_USD, PoolMarket, affordable_buy_qty, floor_qty,
                                           sellable_qty)
from q50_assets.lineage.signals.sizing import SizingParams, decide

class ExecutionConfig(StrategyConfig, frozen=True):
    """Execution settings shared by both strategies (module docstring).

    fill_latency_bars: L, bars between decision and fill (0 = at the decision's close).
    min_trade_fraction: rebalance band, fraction of equity.
    max_volume_share: largest fill as a share of the fill bar's USD volume (None = no cap).
    pool_id, timeframe: what the strategy trades (for loaders built from a factory).
    """

    instrument_id: InstrumentId
    bar_type: BarType
    fill_latency_bars: int = 1
    min_trade_fraction: float = 0.02
    max_volume_share: float | None = 0.1
    pool_id: str = ""
    timeframe: str = "1h"


class _TargetExecution(Strategy):
    """Scheduling and execution of target positions (module docstring). Subclasses implement
    :meth:`_target` (bar position, ts) -> fraction of equity or NaN."""

    def __init__(self, config: ExecutionConfig, market: PoolMarket, cost_model: CostModel) -> None:
        super().__init__(config)
        self.market = market
        self.cost_model = cost_model
        self.instrument = None
        self._account = None
        self._i = 0
        self._cash = 0.0
        self._held = Decimal(0)
        self._held_f = 0.0  # float(self._held), refreshed after each fill (read every bar)
        self._latency = int(config.fill_latency_bars)
        self._pending: dict[int, list[tuple]] = {}  # fill bar close ns -> [(target lots, decided ns, tau)]
        self.equity_ts: list[int] = []  # bar close ns, one per bar
        self.equity_rows: list[tuple] = []  # EQUITY_FIELDS[1:], plain floats
        self.orders: list[tuple] = []
        self.orders_expired = 0
        self.bars_seen = 0

    # --- lifecycle --------------------------------------------------------------------------
    def on_start(self) -> None:
        self.instrument = self.cache.instrument(self.config.instrument_id)
        if self.instrument is None:
            self.log.error(f"Could not find instrument {self.config.instrument_id}")
            self.stop()
            return
        self._account = self.portfolio.account(self.config.instrument_id.venue)
        self._cash = self._account.balance_free(USD).as_double()
        self._held = self.portfolio.net_position(self.config.instrument_id)
        self._held_f = float(self._held)
        self.subscribe_bars(self.config.bar_type)

    def on_stop(self) -> None:
        # Orders still pending at the end never reach a fill bar: they expire.
        for items in self._pending.values():
            for target, decided, tau in items:
                self._record_order(decided, None, "", 0.0, tau, target, "expired: backtest ended")
        self._pending.clear()

    def on_bar(self, bar: Bar) -> None:
        ts = bar.ts_event
        i = self._i
        market = self.market
        if i >= len(market.ts) or market.ts[i] != ts:  # the bars are the market's, in order
            i = market.index_of[ts]
        self._i = i + 1
        self.bars_seen += 1
        if self._pending and self._latency > 0:
            self._execute_due(i, ts)
        tau = self._target(i, ts)
        if tau == tau:  # not NaN
            self._schedule(i, ts, tau)
            if self._latency == 0:
                self._execute_due(i, ts)
        close = market.close[i]
        held = self._held_f
        cash = self._cash
        self.equity_ts.append(ts)
        self.equity_rows.append((self.clock.timestamp_ns(), close, cash, held, cash + held * close, tau))

    def _target(self, i: int, ts: int) -> float:
        raise NotImplementedError

    # --- scheduling and execution -----------------------------------------------------------
    def _schedule(self, i: int, ts: int, tau: float) -> None:
        close = self.market.close[i]
        held = self._held_f
        value = held * close
        equity = self._cash + value
        target_value = max(tau, 0.0) * equity
        if target_value <= 0.0:
            if held <= 0.0:
                return
            target = 0.0  # leave, dust included (it closes Nautilus' position)
        elif value >= DUST_USD and abs(target_value - value) < self.config.min_trade_fraction * equity:
            return  # a rebalance inside the band (a dust position is flat: this is an entry)
        else:
            target = target_value / close
        fill_ts = ts + self.config.fill_latency_bars * self.market.bar_ns
        self._pending.setdefault(fill_ts, []).append((target, ts, tau))

    def _execute_due(self, i: int, ts: int) -> None:
        pending = self._pending
        for fill_ts in [t for t in pending if t <= ts]:
            for target, decided, tau in pending.pop(fill_ts):
                if fill_ts < ts:
                    self._expire(decided, fill_ts, tau, target, "expired: no fill bar (no swaps)")
                elif self.market.volume_usd[i] <= 0.0:
                    self._expire(decided, fill_ts, tau, target, "expired: zero-volume fill bar")
                else:
                    self._fill_toward(i, ts, decided, tau, target)

    def _expire(self, decided: int, fill_ts: int, tau: float, target: float, status: str) -> None:
        self.orders_expired += 1
        self._record_order(decided, fill_ts, "", 0.0, tau, target, status)

    def _fill_toward(self, i: int, ts: int, decided: int, tau: float, target: float) -> None:
        inst = self.instrument
        market = self.market
        cfg = self.config
        cost = self.cost_model
        ref = market.ref[i]
        reserve, _ = cost.reserve_at(ts)
        quote = None if reserve is None else reserve / 2.0
        cap = math.inf
        if cfg.max_volume_share is not None:
            cap = cfg.max_volume_share * market.volume_usd[i] / ref
        if quote is not None:
            cap = min(cap, cost.max_reserve_fraction * quote / ref)
        held = self._held
        delta = target - float(held)
        prec = inst.size_precision
        if delta > 0:
            side = OrderSide.BUY
            qty = min(floor_qty(min(delta, cap), prec),
                      affordable_buy_qty(self._cash, ref, cost.fee_rate, quote, cost.max_reserve_fraction,
                                         inst.price_precision, prec))
        elif delta < 0:
            side = OrderSide.SELL
            balance = self._account.balance_free(inst.base_currency)
            tokens = Decimal(0) if balance is None else balance.as_decimal()
            qty = min(floor_qty(min(-delta, cap), prec), sellable_qty(tokens, prec), sellable_qty(held, prec))
        else:
            return
        qty = qty.quantize(Decimal(1).scaleb(-prec), rounding=ROUND_DOWN)
        if qty <= 0:
            self._record_order(decided, ts, "", 0.0, tau, target, "nothing to fill (caps, cash or dust)")
            return
        is_buy = side == OrderSide.BUY
        expected = cost.trade_cost(float(qty) * ref, is_buy, ts)
        order = self.order_factory.market(cfg.instrument_id, side, Quantity.from_str(format(qty, "f")))
        self.submit_order(order)
        # Fills are synchronous on this venue: read the post-trade state.
        self._cash = self._account.balance_free(USD).as_double()
        self._held = self.portfolio.net_position(cfg.instrument_id)
        self._held_f = float(self._held)
        self._record_order(decided, ts, "BUY" if is_buy else "SELL", float(qty), tau, target, "filled",
                           expected.total_usd, str(order.client_order_id))

    def _record_order(self, decided, fill_ts, side, qty, tau, target, status, expected_cost=math.nan,
                      client_order_id="") -> None:
        self.orders.append((decided, fill_ts, side, qty, tau, target, status, expected_cost, client_order_id))


class TargetStrategyConfig(ExecutionConfig, frozen=True, kw_only=True):
    """targets: decision bar close (epoch ns) -> fraction of equity to hold after the fill;
    absent or NaN = no order (keep the position)."""

    targets: dict[int, float]


class TargetStrategy(_TargetExecution):
    """Hold a fixed schedule of target fractions (baselines; the permutation null's check)."""

    def __init__(self, config: TargetStrategyConfig, market: PoolMarket, cost_model: CostModel) -> None:
        super().__init__(config, market, cost_model)
        self._targets = dict(config.targets)

    def _target(self, i: int, ts: int) -> float:
        value = self._targets.get(ts)
        if value is None or not value == value:
            return math.nan
        return min(max(float(value), 0.0), 1.0)


class Q50StrategyConfig(ExecutionConfig, frozen=True):
    """The Q50 strategy's configuration (module docstring).

    sizing: fee, impact cap, risk limits, Kelly fraction and threshold premium, as plain numbers
    (:class:`q50_assets.lineage.signals.sizing.SizingParams`).
    signal_source / database_uri / inputs_factory: where the strategy finds its signals and
    regimes when none are handed in (a live node): ``inputs_factory`` names a callable
    ``"module:function"`` returning (Q50SignalLoader, RegimeDetector) for (pool_id, timeframe,
    database_uri). A backtest hands prebuilt ones to the constructor instead.
    """

    fee_rate: float = 0.0025
    max_reserve_fraction: float = 0.1
    base_position_size: float = 0.1
    max_position_size: float = 0.5
    kelly_fraction: float = 0.5
    variance_multiplier: float = 1.0
    base_threshold: float = 0.0
    signal_source: str = "qlib"
    database_uri: str | None = None
    inputs_factory: str | None = None


# Columns of Q50Strategy.decisions (one tuple per bar where it held a position or acted).
DECISION_FIELDS = (
    "ts", "signal_open_ns", "known_at_ns", "action", "reason", "target", "expected_value", "abs_q50",
    "intended_notional_usd", "expected_cost_usd", "expected_cost_fraction", "expected_net_edge",
    "expected_net_edge_usd", "threshold", "exit_cost_fraction", "equity", "held_value", "reserve_usd",
    "reserve_source", "vol_regime", "momentum_regime", "position_multiplier", "signal_tier",
)
ORDER_FIELDS = ("decided_ns", "fill_ns", "side", "qty", "target_fraction", "target_qty", "status",
                "expected_cost_usd", "client_order_id")
EQUITY_FIELDS = ("ts", "clock_ns", "close", "cash", "qty", "equity", "target")


class Q50Strategy(_TargetExecution):
    """Decide at each bar close from the signal, the regime and the liquidity known then
    (module docstring); execute through the shared layer."""

    def __init__(self, config: Q50StrategyConfig, market: PoolMarket, cost_model: CostModel,
                 signal_loader=None, regime_detector=None) -> None:
        super().__init__(config, market, cost_model)
        self.signals = signal_loader
        self.regimes = regime_detector
        self.params = SizingParams(
            fee_rate=config.fee_rate, max_reserve_fraction=config.max_reserve_fraction,
            base_position_size=config.base_position_size, max_position_size=config.max_position_size,
            kelly_fraction=config.kelly_fraction, variance_multiplier=config.variance_multiplier,
            base_threshold=config.base_threshold)
        self.decisions: list[tuple] = []
        self._may_enter: list[bool] = []

    def on_start(self) -> None:
        if self.signals is None or self.regimes is None:
            cfg = self.config
            if not cfg.inputs_factory:
                self.log.error("Q50Strategy needs a signal loader and a regime detector, or an inputs_factory")
                self.stop()
                return
            module, _, name = cfg.inputs_factory.partition(":")
            factory = getattr(importlib.import_module(module), name)
            self.signals, self.regimes = factory(cfg.pool_id, cfg.timeframe, cfg.database_uri)
        # From flat, an entry needs q50 > 0, |q50| and the expected value above the round trip's
        # cost, which is at least two fees at any size (sizing.size_entry): signals that cannot
        # pass are known before the first bar, and decide() would say "none" for them.
        two_fees = 2.0 * self.config.fee_rate
        sig = self.signals
        self._may_enter = [q > 0 and a > two_fees and ev > two_fees
                           for q, a, ev in zip(sig.q50, sig.abs_q50, sig.expected_value_long)]
        super().on_start()

    def _target(self, i: int, ts: int) -> float:
        market = self.market
        bar_ns = market.bar_ns
        sig = self.signals.index_at_ns(ts)
        has_signal = sig >= 0 and self.signals.open_ns[sig] + bar_ns == ts
        close = market.close[i]
        held_value = self._held_f * close
        if held_value < DUST_USD:
            held_value = 0.0  # dust left by Nautilus' float booking (strategy.sellable_qty) is flat
        if held_value <= 0.0 and not (has_signal and self._may_enter[sig]):
            return math.nan  # flat, and no signal that could pay for an entry: the common bar, kept cheap
        signals, regimes = self.signals, self.regimes
        reg = regimes.index_at_ns(ts)
        has_regime = reg >= 0 and regimes.open_ns[reg] + bar_ns == ts
        multiplier = regimes.position_multiplier[reg] if has_regime else 0.0
        adjustment = regimes.threshold_adjustment[reg] if has_regime else 0.0
        equity = self._cash + held_value
        reserve, source = self.cost_model.reserve_at(ts)
        if has_signal:
            q50 = signals.q50[sig]
            ev = signals.expected_value_long[sig]
            abs_q50, variance, kelly = signals.abs_q50[sig], signals.total_variance[sig], signals.kelly_long[sig]
        else:
            q50 = ev = abs_q50 = variance = kelly = math.nan
        d = decide(has_signal=has_signal, long_side=q50 > 0, expected_value=ev, abs_q50=abs_q50,
                   total_variance=variance, kelly_raw=kelly, regime_multiplier=multiplier,
                   threshold_adjustment=adjustment, equity=equity, held_value=held_value, reserve_usd=reserve,
                   params=self.params)
        if d.action == "none":
            return math.nan  # flat and staying flat: the signal table already says why (its reason column)
        e = d.entry
        known = max(signals.known_ns[sig] if has_signal else 0, regimes.known_ns[reg] if has_regime else 0)
        self.decisions.append((
            ts, signals.open_ns[sig] if has_signal else None, known or None, d.action, d.reason, d.target, ev,
            abs_q50, e.notional_usd if e else math.nan, e.cost_usd if e else math.nan,
            e.cost_fraction if e else math.nan, e.net_edge if e else math.nan, e.net_edge_usd if e else math.nan,
            e.threshold if e else math.nan, d.exit_cost_fraction, equity, held_value,
            math.nan if reserve is None else reserve, source,
            regimes.vol_regime[reg] if has_regime else "unknown",
            regimes.momentum_regime[reg] if has_regime else "unknown", multiplier,
            signals.tier[sig] if has_signal else "",
        ))
        return d.target


__all__ = [
    "CASH_MARGIN_USD",
    "DECISION_FIELDS",
    "EQUITY_FIELDS",
    "ExecutionConfig",
    "ORDER_FIELDS",
    "PoolMarket",
    "Q50Strategy",
    "Q50StrategyConfig",
    "TargetStrategy",
    "TargetStrategyConfig",
    "affordable_buy_qty",
    "floor_qty",
    "sellable_qty",
]
