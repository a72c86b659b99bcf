"""Bare NautilusTrader baseline for the backtest stage's wall time.

The benchmark reports the ratio of the Q50 strategy's backtest (:func:`run_q50_backtest`:
decisions bar by bar from the signal loader and regime detector, latency execution, the AMM
fill model, outcome assembly) to a bare Nautilus engine replaying the SAME bars and the SAME
market orders. This module is that bare engine:

* the same instrument, venue, account, fee model and bars, from the same builder
  (:func:`q50_assets.lineage.backtest.engine.build_pool_instrument` and ``build_engine``: one set-up
  for both);
* :class:`ReplayStrategy`: a dict lookup per bar and ``submit_order`` -- no decisions, no
  sizing, no account reads, no records;
* Nautilus' default :class:`FillModel` (fills at the bar close, L1 book from the bar).

Orders come from a :class:`BacktestOutcome` (:func:`orders_from_outcome`): one row per
order, at the bar close it was filled at (= submitted at, fills are synchronous), its side and
its total filled quantity in instrument units (lots) as Nautilus saw them.

Differences that are inherent to "default fill model" (they do not change the replayed
orders): fill prices are the bar close instead of the AMM price, so PnL differs; and a market
order larger than the L1 book's close size (a quarter of the bar's volume) is filled in two
fills (the rest one tick through), so ``fills`` may exceed the original count on low-volume
bars. ``orders`` and the per-order quantities always match.
"""

from __future__ import annotations

import random
import time
import warnings
from decimal import Decimal

import pandas as pd
from nautilus_trader.backtest.models import FillModel
from nautilus_trader.config import StrategyConfig
from nautilus_trader.model.data import Bar, BarType
from nautilus_trader.model.enums import OrderSide
from nautilus_trader.model.identifiers import InstrumentId
from nautilus_trader.model.objects import Quantity
from nautilus_trader.trading.strategy import Strategy

from q50_assets.lineage.backtest.engine import (VENUE, BacktestEndedEarly, BacktestOutcome, BacktestSpec, prepare_bars,
                                          utc_index, build_engine, build_pool_instrument, run_q50_backtest)

# The bare account gets this multiple of the strategy's starting capital. Its default fill
# model fills at the bar close (plus one tick on the slipped remainder), not at the AMM
# price the orders were sized for, so a replayed buy could in principle cost more cash than
# the original one had. Extra capital keeps the engine from stopping on
# AccountBalanceNegative; the point is timing the engine, not PnL.
BARE_CAPITAL_MULTIPLIER = 2.0

ORDER_COLUMNS = ("ts_ns", "side", "qty")


class ReplayStrategyConfig(StrategyConfig, frozen=True):
    """orders: bar-close ts (ns) -> [(side "BUY"/"SELL", quantity string at size precision)]."""

    instrument_id: InstrumentId
    bar_type: BarType
    orders: dict[int, list[tuple[str, str]]]


class ReplayStrategy(Strategy):
    """Submit the given market orders at the given bar closes; count bars and fills."""

    def __init__(self, config: ReplayStrategyConfig) -> None:
        super().__init__(config)
        self._orders: dict[int, list[tuple[OrderSide, Quantity]]] = {}
        self.bars_seen = 0
        self.orders_submitted = 0
        self.fills_seen = 0

    def on_start(self) -> None:
        sides = {"BUY": OrderSide.BUY, "SELL": OrderSide.SELL}
        self._orders = {int(ts): [(sides[side], Quantity.from_str(qty)) for side, qty in items]
                        for ts, items in self.config.orders.items()}
        self.subscribe_bars(self.config.bar_type)

    def on_bar(self, bar: Bar) -> None:
        self.bars_seen += 1
        items = self._orders.get(bar.ts_event)
        if items:
            for side, qty in items:
                self.submit_order(self.order_factory.market(self.config.instrument_id, side, qty))
                self.orders_submitted += 1

    def on_order_filled(self, event) -> None:
        self.fills_seen += 1


def _empty_orders() -> pd.DataFrame:
    return pd.DataFrame({"ts_ns": pd.Series([], dtype="int64"), "side": pd.Series([], dtype=object),
                         "qty": pd.Series([], dtype=object)})


def orders_from_fills_report(fills: pd.DataFrame | None) -> pd.DataFrame:
    """A Nautilus fills report -> one row per order (client_order_id), in submission order:
    ts_ns (int, first fill's ts_event = the bar close), side ("BUY"/"SELL"), qty (exact
    decimal string, sum of the order's ``last_qty``, instrument units)."""
    if fills is None or fills.empty:
        return _empty_orders()
    ts = utc_index(pd.DatetimeIndex(fills["ts_event"])).asi8
    order_ids = fills["client_order_id"] if "client_order_id" in fills.columns else fills.index
    acc: dict[str, list] = {}  # order id -> [ts, side, qty, first row]; dicts keep insertion order
    for pos, (oid, t, side, qty) in enumerate(zip(order_ids, ts, fills["order_side"], fills["last_qty"])):
        side = str(side)
        entry = acc.get(oid)
        if entry is None:
            acc[oid] = [int(t), side, Decimal(str(qty)), pos]
        else:
            if entry[1] != side:
                raise ValueError(f"order {oid} has fills on both sides")
            entry[0] = min(entry[0], int(t))
            entry[2] += Decimal(str(qty))
    rows = sorted(acc.values(), key=lambda e: (e[0], e[3]))
    out = pd.DataFrame([(t, side, str(q)) for t, side, q, _ in rows], columns=list(ORDER_COLUMNS))
    out["ts_ns"] = out["ts_ns"].astype("int64")
    return out


def orders_from_outcome(outcome: BacktestOutcome) -> pd.DataFrame:
    """The market orders a backtest made, as its fills report shows them (see
    :func:`orders_from_fills_report`)."""
    return orders_from_fills_report(outcome.fills)


def _orders_config(orders: pd.DataFrame, size_precision: int) -> dict[int, list[tuple[str, str]]]:
    step = Decimal(1).scaleb(-size_precision)
    out: dict[int, list[tuple[str, str]]] = {}
    for ts, side, qty in zip(orders["ts_ns"], orders["side"], orders["qty"]):
        side = str(side).upper()
        if side not in ("BUY", "SELL"):
            raise ValueError(f"order side must be BUY or SELL, got {side!r}")
        q = Decimal(str(qty))
        if q <= 0 or q != q.quantize(step):
            raise ValueError(f"order quantity {qty!r} is not a positive multiple of {step}")
        out.setdefault(int(ts), []).append((side, str(q.quantize(step))))
    return out


def replay_bare(pool_id: str, bars: pd.DataFrame, orders: pd.DataFrame, spec: BacktestSpec | None = None) -> dict:
    """Replay ``bars`` and ``orders`` (columns ts_ns, side, qty: see :func:`orders_from_outcome`)
    in a bare Nautilus engine set up like :func:`run_pool_backtest` (module docstring).

    Returns ``seconds`` (wall time of the whole replay: bar preparation and Nautilus bars,
    instrument, engine build, run, the four reports, dispose), ``engine_seconds`` (engine
    build .. dispose only), ``fills`` (rows of the fills report), ``bars`` (bars the strategy
    received), ``orders`` (orders submitted) and ``orders_filled`` (the bare fills report per
    order, same shape as ``orders``). Raises :class:`BacktestEndedEarly` if the engine did not
    process every bar, ValueError if an order's bar close is not one of the bars.
    """
    spec = spec or BacktestSpec()
    started = time.perf_counter()
    frame = prepare_bars(bars)
    built = build_pool_instrument(pool_id, frame, spec)
    order_map = _orders_config(orders, built.size_precision)
    unknown = set(order_map) - set(int(t) for t in built.ts_close)
    if unknown:
        raise ValueError(f"{len(unknown)} order timestamps are not bar closes, e.g. {min(unknown)}")
    strategy = ReplayStrategy(ReplayStrategyConfig(instrument_id=built.instrument_id, bar_type=built.bar_type,
                                                   orders=order_map))
    # FillModel.__init__ reseeds Python's global `random`; keep the caller's state.
    state = random.getstate()
    try:
        fill_model = FillModel(prob_fill_on_limit=1.0, prob_slippage=0.0, random_seed=0)
    finally:
        random.setstate(state)

    engine_started = time.perf_counter()
    engine = build_engine(built, spec.starting_capital_usd * BARE_CAPITAL_MULTIPLIER, fill_model)
    try:
        engine.add_strategy(strategy)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Timestamp\.utcnow is deprecated")
            engine.run()
            result = engine.get_result()
            engine.trader.generate_order_fills_report()
            fills = engine.trader.generate_fills_report()
            engine.trader.generate_positions_report()
            engine.trader.generate_account_report(VENUE)
    finally:
        engine.dispose()
    ended = time.perf_counter()

    n = len(frame)
    if strategy.bars_seen != n or int(result.iterations) < n:
        last = pd.Timestamp(int(built.ts_close[-1]), tz="UTC")
        seen = pd.Timestamp(int(result.backtest_end), tz="UTC") if result.backtest_end else None
        raise BacktestEndedEarly(
            f"bare replay of pool {pool_id} ended early: strategy saw {strategy.bars_seen} of {n} bars, "
            f"{result.iterations} iterations", pool_id=pool_id, bars_given=n, bars_seen=strategy.bars_seen,
            iterations=int(result.iterations), last_ts_expected=last, last_ts_seen=seen)
    return {
        "seconds": ended - started,
        "engine_seconds": ended - engine_started,
        "fills": 0 if fills is None else len(fills),
        "bars": strategy.bars_seen,
        "orders": strategy.orders_submitted,
        "orders_filled": orders_from_fills_report(fills),
    }


def same_orders(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Two order frames (ts_ns, side, qty) hold the same orders in the same sequence."""
    return (len(a) == len(b) and a["ts_ns"].astype("int64").tolist() == b["ts_ns"].astype("int64").tolist()
            and [str(x).upper() for x in a["side"]] == [str(x).upper() for x in b["side"]]
            and [Decimal(str(x)) for x in a["qty"]] == [Decimal(str(x)) for x in b["qty"]])


def time_stage_vs_bare(pool_data, warmup: bool = True, repeats: int = 3) -> dict:
    """Time the Q50 strategy's backtest (:func:`run_q50_backtest`) against :func:`replay_bare`
    pool by pool.

    ``pool_data``: iterable of (pool_id, bars, inputs (:class:`~q50_assets.lineage.backtest.engine.Q50Inputs`),
    spec). Sequential, same process, interleaved (each pool's backtest, then its bare replay,
    then the next pool), ``repeats`` times; each side's time per pool is its fastest repeat (as
    ``timeit`` does: on a shared machine the minimum is the run least disturbed by others). With
    ``warmup`` the first pool is run both ways once, untimed, first (one-off process costs).
    Returns totals: backtest_seconds, bare_seconds, ratio (= backtest / bare), pools,
    fills_backtest, fills_bare, plus orders, orders_mismatch_pools (pools whose bare orders
    differ from the backtest's: should be 0), bars, bare_engine_seconds, ratio_engine_only
    (backtest / bare engine build..dispose only) and repeats.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    pool_data = list(pool_data)
    if warmup and pool_data:
        pool_id, bars, inputs, spec = pool_data[0]
        replay_bare(pool_id, bars, orders_from_outcome(run_q50_backtest(pool_id, bars, inputs, spec)), spec)
    totals = {"backtest_seconds": 0.0, "bare_seconds": 0.0, "bare_engine_seconds": 0.0, "pools": 0,
              "bars": 0, "orders": 0, "fills_backtest": 0, "fills_bare": 0, "orders_mismatch_pools": 0,
              "repeats": repeats}
    for pool_id, bars, inputs, spec in pool_data:
        stage_s = bare_s = engine_s = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            outcome = run_q50_backtest(pool_id, bars, inputs, spec)
            stage_s = min(stage_s, time.perf_counter() - t0)
            orders = orders_from_outcome(outcome)  # untimed: the bare side's input
            bare = replay_bare(pool_id, bars, orders, spec)
            bare_s = min(bare_s, bare["seconds"])
            engine_s = min(engine_s, bare["engine_seconds"])
        totals["backtest_seconds"] += stage_s
        totals["bare_seconds"] += bare_s
        totals["bare_engine_seconds"] += engine_s
        totals["pools"] += 1
        totals["bars"] += bare["bars"]
        totals["orders"] += len(orders)
        totals["fills_backtest"] += len(outcome.fills)
        totals["fills_bare"] += bare["fills"]
        if not same_orders(bare["orders_filled"], orders):
            totals["orders_mismatch_pools"] += 1
    bare_s, engine_s = totals["bare_seconds"], totals["bare_engine_seconds"]
    totals["ratio"] = totals["backtest_seconds"] / bare_s if bare_s > 0 else float("nan")
    totals["ratio_engine_only"] = totals["backtest_seconds"] / engine_s if engine_s > 0 else float("nan")
    for key in ("backtest_seconds", "bare_seconds", "bare_engine_seconds"):
        totals[key] = round(totals[key], 4)
    for key in ("ratio", "ratio_engine_only"):
        totals[key] = round(totals[key], 4)
    return totals


__all__ = [
    "BARE_CAPITAL_MULTIPLIER",
    "ReplayStrategy",
    "ReplayStrategyConfig",
    "orders_from_fills_report",
    "orders_from_outcome",
    "replay_bare",
    "same_orders",
    "time_stage_vs_bare",
]
