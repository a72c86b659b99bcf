"""One pool, one NautilusTrader backtest: bars + a strategy -> fills, positions, equity.

Real Nautilus (``BacktestEngine``, low-level API), one fresh engine per run, disposed in
``finally``. The instrument, bars, venue and engine are set up by ONE builder
(:func:`build_pool_instrument`, :func:`build_engine`), shared with the bare replay of
:mod:`benchmarks.bare_replay`. What this module takes care of (the traps of
NautilusTrader 1.231, see the project's library field notes):

* **Time.** ``bars`` are indexed by GeckoTerminal ``open_time``; Nautilus treats ``ts_event``
  as the bar CLOSE, so each bar is stamped ``open_time + bar_length``. Decisions are made at a
  bar's close from what was known then; fills happen ``fill_latency_bars`` later
  (:mod:`q50_assets.lineage.backtest.strategy`).
* **Symbols.** ``_`` in a Nautilus symbol marks a spread: pool ids map to
  :func:`safe_symbol` ("P" + 12 hex digits of sha1), kept in the outcome.
* **Instrument.** ``CurrencyPair`` base token / quote USD on an invented venue ``DEX``, a
  ``CASH`` account with ``base_currency=None`` (multi-currency) and ``NETTING``.
* **Precision and size.** ``Price`` silently rounds to its precision and ``Quantity`` is capped
  at ``QUANTITY_MAX`` (3.4e13): a 4.2e-12 USD token bought for 10 000 USD is 2.4e15 tokens.
  So an instrument unit is a LOT of ``lot_tokens = 10**k`` tokens, and prices are per lot. The
  grid is set from the FIRST bar only (an instrument exists before the prices it will trade
  at; a grid taken from the whole series would let later prices move earlier fills by a
  rounding step): k so that a lot of the first bar's low costs >= 1e-4 USD; price precision
  keeps >= 6 significant digits of that lot price plus :data:`PRICE_MARGIN_DECIMALS` (room for
  a 1,000-fold fall with 6 digits kept, a 10-million-fold one with 2); size precision makes one
  increment worth <= ~1e-5 USD at the first bar's high. A later price the grid cannot hold with
  >= 2 significant digits stops the run with an error naming the bar. Nautilus reports are per
  lot; ``trades`` gives both.
* **Costs: one model.** :class:`q50_assets.lineage.common.costs.CostModel` (fee + constant-product
  impact at the pool's liquidity at the fill's time) is what the strategy decides and sizes
  with, and what :class:`AmmImpactFillModel` charges: it moves the FILL PRICE to the AMM
  average price of the order, and Nautilus' ``MakerTakerFeeModel`` charges the instrument's
  ``taker_fee`` (the swap fee) on that notional, in cents. ``fees_paid`` = sum of Nautilus
  commissions, ``impact_paid`` = sum over fills of (fill price - reference price) * quantity,
  signed against the trader.
* **Execution.** MARKET orders, processed synchronously (``use_message_queue=False``) so the
  strategy records the post-trade state. The portfolio analyzer's per-trade recording is
  switched off (quadratic pandas concat, statistics unused: see :mod:`q50_assets.lineage.backtest.metrics`).
* **Early stop.** The engine can stop without raising (e.g. ``AccountBalanceNegative``):
  the bars the strategy saw, the engine's iterations and the last timestamp are compared with
  the data, and :class:`BacktestEndedEarly` is raised.
* **Start.** An engine that cannot be built raises :class:`NautilusUnavailable` (the backtest
  stage then records ``status: unavailable`` and everything up to signals carries on).
* **Logging** is process-global in Nautilus (the first engine's ``LoggingConfig`` wins and
  its log guard must stay alive): engines here ask for ERROR and the first guard is kept in
  a module variable.

How impact reaches Nautilus fills: a ``FillModel`` subclass overriding
``get_orderbook_for_fill_simulation`` (a ``cpdef``, overridable from Python in 1.231; the
matching engine calls it for every MARKET order and fills against the returned book). The
book it returns holds one level at the AMM average price, sized to the order, so the fill
price carries the impact and the fee model then charges the fee on that notional -- the
same order of costs as a DEX swap.

Other helpers: :func:`buy_and_hold_targets` (baseline schedule).
"""

from __future__ import annotations

import hashlib
import math
import random
import time
import warnings
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np
import pandas as pd
from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
from nautilus_trader.backtest.models import FillModel, MakerTakerFeeModel
from nautilus_trader.common.component import is_logging_initialized
from nautilus_trader.config import LoggingConfig
from nautilus_trader.model.book import OrderBook
from nautilus_trader.model.currencies import USD
from nautilus_trader.model.data import Bar, BarType, BookOrder
from nautilus_trader.model.enums import AccountType, BookType, CurrencyType, OmsType, OrderSide
from nautilus_trader.model.identifiers import InstrumentId, Symbol, Venue
from nautilus_trader.model.instruments import CurrencyPair
from nautilus_trader.model.objects import QUANTITY_MAX, Currency, Money, Price, Quantity

from q50_assets.lineage.common.costs import CostModel, ReserveSeries
from q50_assets.lineage.backtest.strategy import (DECISION_FIELDS, EQUITY_FIELDS, ORDER_FIELDS, PoolMarket, Q50Strategy,
                                          Q50StrategyConfig, TargetStrategy, TargetStrategyConfig)

VENUE = Venue("DEX")
MAX_PRECISION = 16  # Nautilus high-precision build
MIN_LOT_PRICE_USD = 1e-4  # below this first price, trade lots of 10**k tokens
PRICE_MARGIN_DECIMALS = 3  # price grid: 6 significant digits of the first price, 3 more decimals
# Size grid: one increment <= 1e-5 USD at the first price, no margin: a rise only makes increments
# coarser (still far below a cent after a 100-fold rise), and finer ones put positions past the ~15
# significant digits Nautilus' float booking keeps exactly (dust left behind by every exit).
SIZE_MARGIN_DECIMALS = 0
BAR_COLUMNS = ("open", "high", "low", "close", "volume")
FILL_PRICES = ("close", "typical")

# The first engine's log guard; dropping it could tear down the process-global logger.
_LOG_GUARD = None


class NautilusUnavailable(RuntimeError):
    """NautilusTrader's engine could not be built (the message says why)."""


class BacktestEndedEarly(RuntimeError):
    """The engine stopped before the last bar (Nautilus logs the reason and returns).

    Attributes: pool_id, bars_given, bars_seen, iterations, last_ts_expected, last_ts_seen,
    and ``outcome`` (the partial :class:`BacktestOutcome`, for inspection).
    """

    def __init__(self, message: str, *, pool_id: str, bars_given: int, bars_seen: int, iterations: int,
                 last_ts_expected, last_ts_seen, outcome=None):
        super().__init__(message)
        self.pool_id = pool_id
        self.bars_given = bars_given
        self.bars_seen = bars_seen
        self.iterations = iterations
        self.last_ts_expected = last_ts_expected
        self.last_ts_seen = last_ts_seen
        self.outcome = outcome


def safe_symbol(pool_id: str) -> str:
    """Nautilus-safe, deterministic symbol of a pool id: "P" + first 12 upper hex digits of
    sha1(pool_id) (letters and digits only; no "_", which Nautilus reads as a spread)."""
    if not isinstance(pool_id, str) or not pool_id:
        raise ValueError(f"pool_id must be a non-empty string, got {pool_id!r}")
    return "P" + hashlib.sha1(pool_id.encode("utf-8")).hexdigest().upper()[:12]


def _exponent(value: float) -> int:
    """Decimal exponent of the leading digit: 4.2e-12 -> -12, 150 -> 2 (exact, no log10)."""
    return Decimal(repr(float(value))).adjusted()


def price_precision_for(min_price: float, significant_digits: int = 6) -> int:
    """Decimals a Price needs so ``min_price`` keeps >= ``significant_digits`` significant
    digits, capped at 16 (Nautilus' maximum). 4.2e-12 -> 16 (only 5 digits: see the lot
    scaling of the module docstring), 1e-4 -> 9, 1.0 -> 5, 150.0 -> 3, 1e6 -> 0."""
    if not math.isfinite(min_price) or min_price <= 0:
        raise ValueError(f"min_price must be a finite number > 0, got {min_price!r}")
    return int(min(MAX_PRECISION, max(0, significant_digits - 1 - _exponent(min_price))))


def lot_exponent_for(min_price: float) -> int:
    """k such that a lot of 10**k tokens costs >= MIN_LOT_PRICE_USD at ``min_price``
    (0 when one token already does)."""
    if not math.isfinite(min_price) or min_price <= 0:
        raise ValueError(f"min_price must be a finite number > 0, got {min_price!r}")
    return max(0, _exponent(MIN_LOT_PRICE_USD) - _exponent(min_price))


def size_precision_for(max_price: float) -> int:
    """Decimals of a Quantity so one increment is worth <= ~1e-5 USD at ``max_price``."""
    if not math.isfinite(max_price) or max_price <= 0:
        raise ValueError(f"max_price must be a finite number > 0, got {max_price!r}")
    return int(min(MAX_PRECISION, max(0, _exponent(max_price) + 6)))


@dataclass(frozen=True)
class BacktestSpec:
    """How a pool is backtested (costs, capital, execution).

    starting_capital_usd: USD cash at the start (no token held).
    taker_fee: swap fee per side, as a fraction of the fill notional (0.25 % DEX swap fee).
    reserve_usd: a constant pool liquidity (total of both sides, USD), shorthand for
        ``reserves``; None and no ``reserves`` -> no impact (flagged in the outcome).
    reserves: the pool's liquidity over time (:class:`ReserveSeries`; wins over reserve_usd).
    max_reserve_fraction: largest trade as a fraction of the quote reserve (reserve / 2).
    min_trade_fraction: rebalance band, as a fraction of equity.
    significant_digits: significant digits kept by the price precision.
    bar_length: bar duration; bars are stamped at open_time + bar_length (the close).
    fill_latency_bars: bars from decision to fill (0 = at the decision bar's own close).
    fill_price: a delayed fill's reference price: the fill bar's "close" or "typical" price.
    max_volume_share: largest fill as a share of the fill bar's USD volume (None = no cap).
    """

    starting_capital_usd: float = 10_000.0
    taker_fee: float = 0.0025
    reserve_usd: float | None = None
    max_reserve_fraction: float = 0.1
    min_trade_fraction: float = 0.02
    significant_digits: int = 6
    bar_length: pd.Timedelta = field(default_factory=lambda: pd.Timedelta(hours=1))
    fill_latency_bars: int = 0
    fill_price: str = "close"
    max_volume_share: float | None = None
    reserves: ReserveSeries | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.starting_capital_usd) or self.starting_capital_usd <= 0:
            raise ValueError(f"starting_capital_usd must be > 0, got {self.starting_capital_usd!r}")
        if not math.isfinite(self.taker_fee) or not 0 <= self.taker_fee < 1:
            raise ValueError(f"taker_fee must be in [0, 1), got {self.taker_fee!r}")
        if self.reserve_usd is not None and (not math.isfinite(self.reserve_usd) or self.reserve_usd <= 0):
            raise ValueError(f"reserve_usd must be None or a finite number > 0, got {self.reserve_usd!r}")
        if not 0 < self.max_reserve_fraction < 1:
            raise ValueError(f"max_reserve_fraction must be in (0, 1), got {self.max_reserve_fraction!r}")
        if not 0 <= self.min_trade_fraction < 1:
            raise ValueError(f"min_trade_fraction must be in [0, 1), got {self.min_trade_fraction!r}")
        if not 1 <= self.significant_digits <= MAX_PRECISION:
            raise ValueError(f"significant_digits must be in [1, 16], got {self.significant_digits!r}")
        if pd.Timedelta(self.bar_length) <= pd.Timedelta(0):
            raise ValueError(f"bar_length must be positive, got {self.bar_length!r}")
        if not isinstance(self.fill_latency_bars, int) or self.fill_latency_bars < 0:
            raise ValueError(f"fill_latency_bars must be an integer >= 0, got {self.fill_latency_bars!r}")
        if self.fill_price not in FILL_PRICES:
            raise ValueError(f"fill_price must be one of {FILL_PRICES}, got {self.fill_price!r}")
        if self.max_volume_share is not None and not 0 < self.max_volume_share <= 1:
            raise ValueError(f"max_volume_share must be None or in (0, 1], got {self.max_volume_share!r}")

    @property
    def impact_applied(self) -> bool:
        return self.reserves is not None or self.reserve_usd is not None

    @property
    def quote_reserve_usd(self) -> float | None:
        """USD side of a constant ``reserve_usd`` (half of it), None without one."""
        return None if self.reserve_usd is None else self.reserve_usd / 2.0

    def cost_model(self) -> CostModel:
        """The one cost model of this spec: fee, impact cap, and the liquidity over time."""
        reserves = self.reserves
        if reserves is None and self.reserve_usd is not None:
            reserves = ReserveSeries(None, fallback_usd=self.reserve_usd)
        return CostModel(self.taker_fee, self.max_reserve_fraction, reserves)


class AmmImpactFillModel(FillModel):
    """Fills MARKET orders at the constant-product AMM average price of the one cost model.

    The matching engine asks for a simulated book per order; this returns one level on each
    side at :meth:`CostModel.fill_price` for the order's full remaining size (so no partial
    fills: the strategy caps sizes itself), from the reference price of the bar the order was
    submitted at (``ref_by_ts``: its close, or its typical price) and the pool's reserve at that
    time. The fee is Nautilus' fee model's, on the resulting notional.
    """

    def __init__(self, cost_model: CostModel, ref_by_ts: dict[int, float]) -> None:
        # FillModel.__init__ reseeds Python's global `random`; keep the caller's state.
        state = random.getstate()
        try:
            super().__init__(prob_fill_on_limit=1.0, prob_slippage=0.0, random_seed=0)
        finally:
            random.setstate(state)
        self.cost_model = cost_model
        self.ref_by_ts = ref_by_ts

    def get_orderbook_for_fill_simulation(self, instrument, order, best_bid, best_ask):
        qty = order.leaves_qty
        prec = instrument.price_precision
        ts = order.ts_init
        ref = self.ref_by_ts.get(ts)
        ask_ref = best_ask.as_double() if ref is None else ref
        bid_ref = best_bid.as_double() if ref is None else ref
        ask = self.cost_model.fill_price(ask_ref, qty.as_double(), True, ts, prec)
        bid = self.cost_model.fill_price(bid_ref, qty.as_double(), False, ts, prec)
        book = OrderBook(instrument_id=instrument.id, book_type=BookType.L2_MBP)
        book.add(BookOrder(side=OrderSide.BUY, price=Price(float(bid), prec), size=qty, order_id=1), 0, 0)
        book.add(BookOrder(side=OrderSide.SELL, price=Price(float(ask), prec), size=qty, order_id=2), 0, 0)
        return book


@dataclass(frozen=True)
class BarsConsumed:
    """The bars as the strategy received them from the engine (Bar objects)."""

    count: int
    first_ts: pd.Timestamp | None
    last_ts: pd.Timestamp | None
    close_sum: float  # sum of Bar.close, per LOT (engine units)
    close_sum_per_token: float  # close_sum / lot_tokens


@dataclass
class BacktestOutcome:
    """Everything one backtest run produced (DataFrames and numbers only: picklable).

    Nautilus reports (DataFrames as Nautilus makes them; quantities/prices per lot, UUID
    columns differ run to run): ``order_fills`` (generate_order_fills_report), ``fills``
    (generate_fills_report), ``positions`` (generate_positions_report, NETTING: an earlier
    round trip is a snapshot row), ``account`` (generate_account_report).
    ``trades``: one row per Nautilus fill, deterministic: index ts (fill time, UTC), side, qty
    (lots), price (USD per lot), qty_tokens, price_per_token, notional_usd, commission_usd,
    ref_price (the fill's reference price per lot: the fill bar's close or typical price),
    impact_usd, client_order_id.
    ``equity``: one row per bar seen, after that bar's fills, index ts (bar close, UTC): close
    (per lot), cash, qty (lots), equity, target (the fraction decided at that close, NaN = none).
    ``orders``: one row per order decided (strategy.ORDER_FIELDS), filled or expired, with what
    the cost model expected the fill to cost. ``decisions``: the Q50 strategy's decisions
    (strategy.DECISION_FIELDS), None for a target schedule.
    """

    pool_id: str
    symbol: str
    instrument_id: str
    lot_tokens: int
    price_precision: int
    size_precision: int
    spec: BacktestSpec
    impact_applied: bool
    bars_given: int
    bars: BarsConsumed
    iterations: int
    backtest_start: pd.Timestamp | None
    backtest_end: pd.Timestamp | None
    trades: pd.DataFrame
    equity: pd.DataFrame
    orders: pd.DataFrame
    decisions: pd.DataFrame | None
    orders_expired: int
    order_fills: pd.DataFrame
    fills: pd.DataFrame
    positions: pd.DataFrame
    account: pd.DataFrame
    fees_paid: float
    impact_paid: float
    final_equity: float
    elapsed_s: float
    logging_preinitialized: bool

    @property
    def equity_curve(self) -> pd.Series:
        return self.equity["equity"]


@dataclass
class PoolInstrument:
    """One pool's Nautilus instrument and bars, built once by :func:`build_pool_instrument`."""

    symbol: str
    instrument_id: InstrumentId
    instrument: CurrencyPair
    bar_type: BarType
    bars: list
    ts_close: np.ndarray  # uint64, bar close ns
    lot_tokens: int
    price_precision: int
    size_precision: int
    frame: pd.DataFrame  # the prepared bars (index open_time UTC, per-token prices, USD volume)

    def market(self, spec: BacktestSpec, fill_price: str | None = None) -> PoolMarket:
        """The strategy's plain-list view of these bars (reference price per ``fill_price``), from the
        prices as Nautilus holds them (rounded to the instrument's precision)."""
        close = [b.close.as_double() for b in self.bars]
        if (fill_price or spec.fill_price) == "typical":
            ref = [(b.high.as_double() + b.low.as_double() + b.close.as_double()) / 3.0 for b in self.bars]
        else:
            ref = close
        return PoolMarket(self.ts_close.astype(np.int64), close, ref, self.frame["volume"].to_numpy(),
                          bar_ns=pd.Timedelta(spec.bar_length).value, lot_tokens=self.lot_tokens,
                          price_precision=self.price_precision, size_precision=self.size_precision)


def build_pool_instrument(pool_id: str, frame: pd.DataFrame, spec: BacktestSpec) -> PoolInstrument:
    """Instrument, bar type and Nautilus bars of one pool (``frame`` from ``prepare_bars``): the
    ONE place they are made, for the backtest and the bare replay alike."""
    bar_ns = pd.Timedelta(spec.bar_length).value
    symbol = safe_symbol(pool_id)
    first = frame.iloc[0]
    lot_tokens = 10 ** lot_exponent_for(float(first["low"]))
    scaled = frame[["open", "high", "low", "close"]] * float(lot_tokens)
    price_prec = min(MAX_PRECISION, price_precision_for(float(first["low"]) * lot_tokens, spec.significant_digits)
                     + PRICE_MARGIN_DECIMALS)
    size_prec = min(MAX_PRECISION, size_precision_for(float(first["high"]) * lot_tokens) + SIZE_MARGIN_DECIMALS)
    # A guard, not an input: a price the grid (set from the first bar) would hold with fewer than
    # two significant digits, or a lot price beyond what a Quantity of 10 000 USD can hold, fails loudly.
    coarse = scaled["low"] < 10.0 ** (1 - price_prec)
    if coarse.any():
        when = frame.index[coarse.to_numpy()][0]
        raise ValueError(f"pool {pool_id}: the price at {when} ({frame.loc[when, 'low']!r} USD) is too small for the "
                         f"instrument's price grid ({price_prec} decimals per lot of {lot_tokens} tokens, set from "
                         "the first bar): it fell more than the grid's margin allows")

    base = Currency(symbol, size_prec, 0, symbol, CurrencyType.CRYPTO)
    instrument_id = InstrumentId(Symbol(symbol), VENUE)
    fee = Decimal(repr(spec.taker_fee))
    instrument = CurrencyPair(
        instrument_id=instrument_id, raw_symbol=Symbol(symbol), base_currency=base, quote_currency=USD,
        price_precision=price_prec, size_precision=size_prec,
        price_increment=Price(10.0 ** -price_prec, price_prec), size_increment=Quantity(10.0 ** -size_prec, size_prec),
        ts_event=0, ts_init=0, maker_fee=fee, taker_fee=fee,
    )
    bar_type = BarType.from_str(f"{instrument_id}-{_bar_spec(spec.bar_length)}-LAST-EXTERNAL")
    ts_close = (frame.index.as_unit("ns").asi8 + bar_ns).astype(np.uint64)
    volume_lots = np.minimum(frame["volume"].to_numpy() / scaled["close"].to_numpy(), QUANTITY_MAX / 10.0)
    bars = Bar.from_raw_arrays_to_list(
        bar_type, price_prec, size_prec,
        np.array(scaled["open"], dtype=np.float64, copy=True),
        np.array(scaled["high"], dtype=np.float64, copy=True),
        np.array(scaled["low"], dtype=np.float64, copy=True),
        np.array(scaled["close"], dtype=np.float64, copy=True),
        np.array(volume_lots, dtype=np.float64, copy=True),
        np.array(ts_close, dtype=np.uint64, copy=True),
        np.array(ts_close, dtype=np.uint64, copy=True),
    )
    return PoolInstrument(symbol, instrument_id, instrument, bar_type, bars, ts_close, lot_tokens, price_prec,
                          size_prec, frame)


def build_engine(built: PoolInstrument, starting_capital_usd: float, fill_model: FillModel) -> BacktestEngine:
    """A fresh engine with the pool's venue, instrument and bars (ERROR logging, no analysis, the
    analyzer's per-trade recording off). Raises :class:`NautilusUnavailable` if it cannot start."""
    global _LOG_GUARD
    try:
        engine = BacktestEngine(BacktestEngineConfig(logging=LoggingConfig(log_level="ERROR"), run_analysis=False))
    except Exception as exc:  # a broken install or platform: say so, do not crash the stage
        raise NautilusUnavailable(f"NautilusTrader's BacktestEngine could not start: {type(exc).__name__}: {exc}") \
            from exc
    if _LOG_GUARD is None:
        _LOG_GUARD = engine.get_log_guard()
    # The portfolio analyzer appends every closed position with pd.concat (quadratic: ~2 ms per
    # round trip). Its statistics annualise with 252 days and are not used (metrics.py).
    engine.portfolio.analyzer.record_trade = _ignore_trade
    engine.add_venue(
        venue=VENUE, oms_type=OmsType.NETTING, account_type=AccountType.CASH,
        starting_balances=[Money(starting_capital_usd, USD)], base_currency=None,
        fill_model=fill_model, fee_model=MakerTakerFeeModel(), use_message_queue=False, bar_execution=True,
    )
    engine.add_instrument(built.instrument)
    engine.add_data(built.bars)
    return engine


def utc_index(index) -> pd.DatetimeIndex:
    """A datetime index in UTC (naive times taken as UTC)."""
    idx = pd.DatetimeIndex(index)
    idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
    return idx.as_unit("ns")


def prepare_bars(bars: pd.DataFrame) -> pd.DataFrame:
    """A pool's validated bars as the engines take them: OHLCV as float64 on a UTC index (also
    what the benchmarks' bare engine replays)."""
    missing = [c for c in BAR_COLUMNS if c not in bars.columns]
    if missing:
        raise ValueError(f"bars lack columns {missing}")
    if len(bars) == 0:
        raise ValueError("no bars")
    frame = bars.loc[:, list(BAR_COLUMNS)].astype("float64").copy()
    frame.index = utc_index(bars.index)
    if frame.index.has_duplicates:
        raise ValueError("bars index (open_time) has duplicates")
    if not frame.index.is_monotonic_increasing:
        frame = frame.sort_index()
    prices = frame[["open", "high", "low", "close"]].to_numpy()
    if not (np.isfinite(prices).all() and (prices > 0).all()):
        raise ValueError("bar prices must be finite and > 0")
    # Nautilus needs low <= open, close <= high; source data is not always consistent.
    frame["high"] = frame[["open", "high", "low", "close"]].max(axis=1)
    frame["low"] = frame[["open", "high", "low", "close"]].min(axis=1)
    volume = frame["volume"].to_numpy()
    frame["volume"] = np.where(np.isfinite(volume) & (volume > 0), volume, 0.0)
    return frame


def _money(value) -> float:
    """'0.25 USD' / Money / number -> float."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return 0.0
    if isinstance(value, (int, float, np.floating, np.integer)):
        return float(value)
    if hasattr(value, "as_double"):
        return value.as_double()
    return float(str(value).split()[0])


def _trades_frame(fills: pd.DataFrame, ref_by_ts: dict[int, float], lot_tokens: int) -> pd.DataFrame:
    columns = ["side", "qty", "price", "qty_tokens", "price_per_token", "notional_usd", "commission_usd",
               "ref_price", "impact_usd", "client_order_id"]
    if fills is None or fills.empty:
        return pd.DataFrame(columns=columns, index=pd.DatetimeIndex([], tz="UTC", name="ts"))
    f = fills.sort_values("ts_event", kind="stable")
    side = f["order_side"].astype(str).to_numpy()
    qty = f["last_qty"].astype(float).to_numpy()
    price = f["last_px"].astype(float).to_numpy()
    ts = pd.DatetimeIndex(f["ts_event"]).tz_convert("UTC").as_unit("ns")
    ref = np.array([ref_by_ts.get(int(t), np.nan) for t in ts.asi8])
    sign = np.where(side == "BUY", 1.0, -1.0)
    order_ids = f["client_order_id"].astype(str).to_numpy() if "client_order_id" in f.columns \
        else f.index.astype(str).to_numpy()
    return pd.DataFrame({
        "side": side,
        "qty": qty,
        "price": price,
        "qty_tokens": qty * lot_tokens,
        "price_per_token": price / lot_tokens,
        "notional_usd": qty * price,
        "commission_usd": [_money(c) for c in f["commission"]],
        "ref_price": ref,
        "impact_usd": sign * (price - ref) * qty,
        "client_order_id": order_ids,
    }, index=pd.DatetimeIndex(ts, name="ts"))


def _times(values) -> pd.DatetimeIndex:
    """Epoch-ns ints (None = NaT) -> UTC times, in one vectorised step."""
    ns = np.array([-1 if v is None else v for v in values], dtype=np.int64)
    out = pd.DatetimeIndex(ns.view("datetime64[ns]"), tz="UTC")
    return out.where(ns >= 0) if (ns < 0).any() else out


def _frame(rows: list[tuple], fields: tuple[str, ...], index: str | None = None,
           times: dict[str, str] | None = None) -> pd.DataFrame:
    """The strategy's record tuples -> a DataFrame, columns built once (no per-column pops:
    this runs after every engine)."""
    if not rows:
        frame = pd.DataFrame({times.get(f, f) if times else f: pd.Series(dtype=object) for f in fields
                              if f != index}, index=pd.DatetimeIndex([], tz="UTC", name=index) if index else None)
        for ns_name, name in (times or {}).items():
            frame[name] = pd.DatetimeIndex([], tz="UTC")
        return frame
    columns = list(zip(*rows))
    data, idx = {}, None
    for name, values in zip(fields, columns):
        if name == index:
            idx = _times(values).rename(name)
        elif times and name in times:
            data[times[name]] = _times(values)
        elif values and isinstance(values[0], float):
            data[name] = np.array(values, dtype=np.float64)
        else:
            data[name] = np.array(values, dtype=object)
    return pd.DataFrame(data, index=idx, copy=False)


def _run(pool_id: str, built: PoolInstrument, strategy, spec: BacktestSpec, cost_model: CostModel,
         market: PoolMarket, started: float) -> BacktestOutcome:
    """Run ``strategy`` on a fresh engine over ``built``'s bars; assemble and check the outcome."""
    ref_by_ts = dict(zip(market.ts, market.ref))
    logging_preinitialized = bool(is_logging_initialized())
    engine = build_engine(built, spec.starting_capital_usd, AmmImpactFillModel(cost_model, ref_by_ts))
    try:
        engine.add_strategy(strategy)
        with warnings.catch_warnings():
            # Nautilus 1.231 calls pd.Timestamp.utcnow(), deprecated in pandas 3.
            warnings.filterwarnings("ignore", message=r"Timestamp\.utcnow is deprecated")
            engine.run()
            result = engine.get_result()
            order_fills = engine.trader.generate_order_fills_report()
            fills = engine.trader.generate_fills_report()
            positions = engine.trader.generate_positions_report()
            account = engine.trader.generate_account_report(VENUE)
        account_obj = engine.portfolio.account(VENUE)
        final_cash = account_obj.balance_total(USD).as_double()
        final_qty = float(engine.portfolio.net_position(built.instrument_id))
    finally:
        engine.dispose()

    n = len(built.frame)
    # One float block (clock ns fit a float64 exactly only to 2**53: kept as int64 beside it).
    values = np.array(strategy.equity_rows, dtype=np.float64).reshape(-1, len(EQUITY_FIELDS) - 1)
    equity = pd.DataFrame(values[:, 1:], columns=list(EQUITY_FIELDS[2:]), index=_times(strategy.equity_ts).rename("ts"))
    equity.insert(0, "clock_ns", np.array([r[0] for r in strategy.equity_rows], dtype=np.int64))
    seen = len(equity)
    close_sum = float(equity["close"].sum()) if seen else 0.0
    consumed = BarsConsumed(count=seen, first_ts=equity.index[0] if seen else None,
                            last_ts=equity.index[-1] if seen else None, close_sum=close_sum,
                            close_sum_per_token=close_sum / built.lot_tokens)
    orders = _frame(strategy.orders, ORDER_FIELDS, times={"decided_ns": "decided_at", "fill_ns": "fill_at"})
    decisions = None
    if hasattr(strategy, "decisions"):
        decisions = _frame(strategy.decisions, DECISION_FIELDS, index="ts",
                           times={"signal_open_ns": "signal_open", "known_at_ns": "known_at"})
    trades = _trades_frame(fills, ref_by_ts, built.lot_tokens)
    last_close = float(equity["close"].iloc[-1]) if seen else 0.0

    def _ts(ns):
        return None if not ns else pd.Timestamp(int(ns), tz="UTC")

    outcome = BacktestOutcome(
        pool_id=pool_id, symbol=built.symbol, instrument_id=str(built.instrument_id), lot_tokens=built.lot_tokens,
        price_precision=built.price_precision, size_precision=built.size_precision, spec=spec,
        impact_applied=cost_model.reserves is not None, bars_given=n, bars=consumed,
        iterations=int(result.iterations), backtest_start=_ts(result.backtest_start),
        backtest_end=_ts(result.backtest_end), trades=trades, equity=equity, orders=orders, decisions=decisions,
        orders_expired=int(strategy.orders_expired), order_fills=order_fills, fills=fills, positions=positions,
        account=account, fees_paid=float(trades["commission_usd"].sum()),
        impact_paid=float(trades["impact_usd"].sum()), final_equity=final_cash + final_qty * last_close,
        elapsed_s=time.perf_counter() - started, logging_preinitialized=logging_preinitialized,
    )
    _check_complete(outcome, expected_last_ts=pd.Timestamp(int(built.ts_close[-1]), tz="UTC"))
    return outcome


def _execution_kwargs(built: PoolInstrument, spec: BacktestSpec, pool_id: str) -> dict:
    return {"instrument_id": built.instrument_id, "bar_type": built.bar_type,
            "fill_latency_bars": spec.fill_latency_bars, "min_trade_fraction": spec.min_trade_fraction,
            "max_volume_share": spec.max_volume_share, "pool_id": pool_id}


def run_pool_backtest(pool_id: str, bars: pd.DataFrame, targets: pd.Series,
                      spec: BacktestSpec | None = None) -> BacktestOutcome:
    """Backtest a fixed schedule of targets (:class:`TargetStrategy`) in a fresh engine.

    ``bars``: index open_time (UTC; naive = UTC), columns open, high, low, close, volume (USD).
    ``targets``: index open_time of the bar at whose CLOSE the decision is made, value = target
    fraction of equity after the fill (NaN or absent = no order; > 1 capped at 1).
    Raises :class:`BacktestEndedEarly` if the engine did not process every bar.
    """
    spec = spec or BacktestSpec()
    started = time.perf_counter()
    frame = prepare_bars(bars)
    built = build_pool_instrument(pool_id, frame, spec)
    bar_ns = pd.Timedelta(spec.bar_length).value
    target_series = pd.Series(targets, dtype="float64").copy()
    target_series.index = utc_index(target_series.index)
    if target_series.index.has_duplicates:
        raise ValueError("targets index has duplicates")
    target_map = {int(t) + bar_ns: float(v) for t, v in zip(target_series.index.asi8, target_series.to_numpy())
                  if v == v}
    cost_model = spec.cost_model()
    market = built.market(spec, "close" if spec.fill_latency_bars == 0 else spec.fill_price)
    strategy = TargetStrategy(TargetStrategyConfig(targets=target_map, **_execution_kwargs(built, spec, pool_id)),
                              market, cost_model)
    return _run(pool_id, built, strategy, spec, cost_model, market, started)


@dataclass(frozen=True)
class Q50Inputs:
    """What the Q50 strategy decides with: the pool's signal loader and regime detector (with its
    labels), and its sizing parameters (research/sizing.py SizingParams fields)."""

    signals: object  # Q50SignalLoader
    regimes: object  # RegimeDetector with labels
    base_position_size: float = 0.1
    max_position_size: float = 0.5
    kelly_fraction: float = 0.5
    variance_multiplier: float = 1.0
    base_threshold: float = 0.0


def run_q50_backtest(pool_id: str, bars: pd.DataFrame, inputs: Q50Inputs,
                     spec: BacktestSpec | None = None, *, timeframe: str = "1h") -> BacktestOutcome:
    """Backtest the Q50 strategy (decisions bar by bar from ``inputs``) in a fresh engine.

    Fills follow ``spec``: ``fill_latency_bars`` later at ``fill_price`` (the q50 variant), or at
    the decision's own close with latency 0 (q50_close). Raises :class:`BacktestEndedEarly` if
    the engine did not process every bar.
    """
    spec = spec or BacktestSpec()
    started = time.perf_counter()
    frame = prepare_bars(bars)
    built = build_pool_instrument(pool_id, frame, spec)
    cost_model = spec.cost_model()
    market = built.market(spec, "close" if spec.fill_latency_bars == 0 else spec.fill_price)
    config = Q50StrategyConfig(
        fee_rate=spec.taker_fee, max_reserve_fraction=spec.max_reserve_fraction,
        base_position_size=inputs.base_position_size, max_position_size=inputs.max_position_size,
        kelly_fraction=inputs.kelly_fraction, variance_multiplier=inputs.variance_multiplier,
        base_threshold=inputs.base_threshold, timeframe=timeframe, **_execution_kwargs(built, spec, pool_id))
    strategy = Q50Strategy(config, market, cost_model, inputs.signals, inputs.regimes)
    return _run(pool_id, built, strategy, spec, cost_model, market, started)


def _ignore_trade(*args, **kwargs) -> None:
    return None


def _bar_spec(bar_length) -> str:
    td = pd.Timedelta(bar_length)
    seconds = int(td.total_seconds())
    if seconds <= 0 or td != pd.Timedelta(seconds=seconds):
        raise ValueError(f"bar_length must be a whole number of seconds, got {bar_length!r}")
    for unit, size in (("DAY", 86400), ("HOUR", 3600), ("MINUTE", 60)):
        if seconds % size == 0:
            return f"{seconds // size}-{unit}"
    return f"{seconds}-SECOND"


def _check_complete(outcome: BacktestOutcome, expected_last_ts: pd.Timestamp) -> None:
    """Raise :class:`BacktestEndedEarly` unless every bar was processed.

    Three independent checks: the strategy saw every bar; the engine's iteration count
    reached the number of bars; the last bar seen (and the engine's backtest end) is the
    last bar given.
    """
    problems = []
    if outcome.bars.count != outcome.bars_given:
        problems.append(f"strategy saw {outcome.bars.count} of {outcome.bars_given} bars")
    if outcome.iterations < outcome.bars_given:
        problems.append(f"engine iterations {outcome.iterations} < {outcome.bars_given} bars")
    if outcome.bars.last_ts != expected_last_ts:
        problems.append(f"last bar seen {outcome.bars.last_ts} != last bar {expected_last_ts}")
    if outcome.backtest_end is None or outcome.backtest_end < expected_last_ts:
        problems.append(f"backtest ended at {outcome.backtest_end} before {expected_last_ts}")
    if problems:
        raise BacktestEndedEarly(
            f"backtest of pool {outcome.pool_id} ({outcome.symbol}) ended early: " + "; ".join(problems),
            pool_id=outcome.pool_id, bars_given=outcome.bars_given, bars_seen=outcome.bars.count,
            iterations=outcome.iterations, last_ts_expected=expected_last_ts, last_ts_seen=outcome.bars.last_ts,
            outcome=outcome,
        )


def buy_and_hold_targets(index, fraction: float = 1.0) -> pd.Series:
    """Buy-and-hold baseline: ``fraction`` of equity at every bar of ``index`` (open times).

    The strategy buys after the first bar (fee- and impact-aware, so cash stays >= 0; an entry
    capped by volume or liquidity continues on the next bars) and then holds: later drift stays
    inside the rebalance band (``min_trade_fraction``).
    """
    if not math.isfinite(fraction) or not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    idx = pd.DatetimeIndex(index)
    return pd.Series(float(fraction), index=idx, name="target")


__all__ = [
    "AmmImpactFillModel",
    "BacktestEndedEarly",
    "BacktestOutcome",
    "BacktestSpec",
    "BarsConsumed",
    "NautilusUnavailable",
    "PoolInstrument",
    "Q50Inputs",
    "build_engine",
    "build_pool_instrument",
    "buy_and_hold_targets",
    "lot_exponent_for",
    "price_precision_for",
    "run_pool_backtest",
    "run_q50_backtest",
    "safe_symbol",
    "size_precision_for",
]
