"""The backtest stage of one pool, as plain functions: the Q50 strategy and its yardsticks in
NautilusTrader engines, on the out-of-sample span, on the full time grid; the stage's tables and
picture; the trading-history rows of its fills.

No Dagster here: the asset layer (``q50_assets/lineage/backtest/asset.py``, ``trading_history.py``) only
wires these to resources, checks and metadata. Configuration is the small
:class:`BacktestStageConfig`, never the project settings.

Variants (columns of ``bar_returns`` / ``positions``, rows of ``metrics``):

* ``q50`` -- the strategy (research/strategy.py), fills ``fill_latency_bars`` after each decision
  at the fill bar's close or typical price;
* ``q50_gross`` -- q50's own decisions (its schedule of target fractions) replayed by a target
  strategy at zero cost (fee 0, no impact): what the signal earned before costs, so that
  ``cost_drag`` = gross - net return is what costs took;
* ``q50_close`` -- the same decisions filled at the decision bar's own close (no latency): how
  much the delay costs;
* ``q50_reserve_x<k>`` -- ``q50`` with the ASSUMED reserve (``fallback_reserve``: a statistic of
  the collector's observed reserves, or ``fallback_reserve_usd``; where the collector has no
  observation) scaled by k: how much the result rests on that assumption (identical to ``q50``
  when no bar of the span uses it);
* ``q50_horizon`` -- the horizon rule (lineage/backtest/horizon.py: expected return over the
  holding horizon net of the round trip's cost, hold ``holding_bars``), its schedule executed by
  the target strategy with q50's execution and costs; ``q50_horizon_gross`` -- the same schedule
  at zero cost;
* ``buy_and_hold`` -- ``buy_and_hold_fraction`` of equity from the first out-of-sample bar, same
  execution and costs;
* ``buy_and_hold_matched`` -- buy & hold scaled to q50's own mean position (fraction of equity
  held), so exposure is compared like with like; ``bh_matched_horizon`` -- the same at
  q50_horizon's mean position;
* ``cash`` -- nothing held: every return is 0.

Every variant's per-bar returns run over the same out-of-sample span (the first bar close at or
after the first signal's, to the last bar close) on the FULL time grid (one row per timeframe
step; a bar missing from the collector's series is flat). Metrics are computed from them and
annualised from the timeframe. The permutation null (research/permutation.py) shifts each rule's
schedule of targets (q50's, q50_horizon's) in time, keeping its holding runs, and replays it under
the same costs.

A run whose result cannot differ from one already made is not repeated: a rule that decided no
order is flat, and so are its gross replay and a buy & hold matched to no exposure.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from q50_assets.lineage.common.bar_length import BarLength
from q50_assets.lineage.common.costs import SOURCE_FALLBACK, FallbackReserve, ReserveSeries
from q50_assets.lineage.backtest.execution import DUST_USD
from q50_assets.lineage.backtest.metrics import bars_per_year, grid_equity, grid_returns, returns_metrics
from q50_assets.settings import BacktestSettings, HorizonRuleSettings, PositionLimits, Settings, SignalSettings
from q50_assets.lineage.common.batch import each
from q50_assets.lineage.common.gate import Blocked
from q50_assets.lineage.common.ports import CollectorSource, ProjectTableStore
from q50_assets.lineage.ohlcv.step import bars_or_blocked
from q50_assets.lineage.signals.step import reserve_assumption

Q50 = "q50"
Q50_CLOSE = "q50_close"
Q50_GROSS = "q50_gross"
Q50_HORIZON = "q50_horizon"
Q50_HORIZON_GROSS = "q50_horizon_gross"
BUY_AND_HOLD = "buy_and_hold"
BUY_AND_HOLD_MATCHED = "buy_and_hold_matched"
BH_MATCHED_HORIZON = "bh_matched_horizon"
CASH = "cash"
# Each trading rule: its zero-cost replay and its buy & hold at the same mean exposure.
RULES = {Q50: (Q50_GROSS, BUY_AND_HOLD_MATCHED), Q50_HORIZON: (Q50_HORIZON_GROSS, BH_MATCHED_HORIZON)}
GROSS_VARIANTS = tuple(gross for gross, _ in RULES.values())
SHOWN_METRICS = ("total_return", "cost_drag", "sharpe", "sortino", "max_drawdown", "win_rate", "trades", "fees_paid",
                 "impact_paid", "exposure", "mean_position", "turnover", "mean_holding_bars")
ROUND_TRIP_COLUMNS = ("entry_decided_at", "entry_filled_at", "exit_filled_at", "open", "bars_held", "notional_usd",
                      "gross_return", "net_return", "cost_usd", "fees_usd", "impact_usd", "expected_net_edge",
                      "expected_net_edge_usd", "expected_cost_usd", "vol_regime", "momentum_regime", "signal_tier",
                      "reserve_usd", "reserve_source")


def reserve_variant(factor: float) -> str:
    """Variant name of a reserve sensitivity factor: 0.5 -> q50_reserve_x0.5, 2.0 -> q50_reserve_x2."""
    return f"q50_reserve_x{factor:g}"


def variants_for(reserve_sensitivity: tuple[float, ...]) -> tuple[str, ...]:
    """Every variant a pool's result has, in display order."""
    return (Q50, Q50_GROSS, Q50_CLOSE, *(reserve_variant(f) for f in reserve_sensitivity), Q50_HORIZON,
            Q50_HORIZON_GROSS, BUY_AND_HOLD, BUY_AND_HOLD_MATCHED, BH_MATCHED_HORIZON, CASH)


class BacktestStageConfig(BacktestSettings, PositionLimits, SignalSettings, HorizonRuleSettings, BarLength):
    """What one pool's backtest stage needs, each from its settings section: the engines'
    capital, impact cap, rebalance band, fill latency, fill price and volume cap
    (``nautilus_trader.backtest``), the fee and the strategy's threshold (``signals``), its
    position limits (``risk_management``), the horizon rule's holding time and premium
    (``rules.horizon``), the null's draws, the yardsticks and the reserve sensitivity, at the
    configured bar length."""

    @property
    def bar(self) -> pd.Timedelta:
        return pd.Timedelta(seconds=self.bar_seconds)

    @property
    def variants(self) -> tuple[str, ...]:
        return variants_for(self.reserve_sensitivity)

    def spec(self):
        """Every engine's BacktestSpec (its reserves are set per pool). Imported here: the stage
        records ``unavailable`` instead of failing where NautilusTrader cannot be imported."""
        from q50_assets.lineage.backtest.engine import BacktestSpec

        return BacktestSpec(starting_capital_usd=self.starting_capital_usd, taker_fee=self.swap_fee,
                            max_reserve_fraction=self.max_reserve_fraction, min_trade_fraction=self.min_trade_fraction,
                            bar_length=self.bar, fill_latency_bars=self.fill_latency_bars, fill_price=self.fill_price,
                            max_volume_share=self.max_volume_share)

    @classmethod
    def of(cls, settings: Settings) -> "BacktestStageConfig":
        nt = settings.nautilus_trader
        return cls(**nt.backtest.model_dump(), **settings.signals.model_dump(),
                   **nt.risk_management.model_dump(include=set(PositionLimits.model_fields)),
                   **settings.rules.horizon.model_dump(), bar_seconds=settings.bar_seconds)

    def sizing_params(self):
        """The sizing parameters the rules size entries with (the signals' and q50's)."""
        from q50_assets.lineage.signals.sizing import SizingParams

        return SizingParams(fee_rate=self.swap_fee, max_reserve_fraction=self.max_reserve_fraction,
                            base_position_size=self.base_position_size, max_position_size=self.max_position_size,
                            kelly_fraction=self.kelly_fraction, variance_multiplier=self.variance_multiplier,
                            base_threshold=self.base_threshold)


@dataclass
class PoolBacktest:
    """One pool's backtest stage output: DataFrames and numbers only (picklable, no Nautilus
    objects). ``status``: "ok", "disabled", "unavailable" (NautilusTrader cannot be imported or
    its engine cannot start), "no_oos_signals"."""

    pool_id: str
    backtest_run_id: str
    status: str
    reason: str = ""
    oos_start: pd.Timestamp | None = None  # first bar CLOSE of the out-of-sample span
    oos_end: pd.Timestamp | None = None  # last bar close
    bars: pd.DataFrame | None = None  # the pipeline's complete bars handed to Nautilus
    signals: pd.DataFrame | None = None
    decisions: pd.DataFrame | None = None  # q50's decisions, one row per bar with a signal or a position
    outcomes: dict = field(default_factory=dict)  # engine variant -> BacktestOutcome
    bar_returns: pd.DataFrame | None = None  # index bar close (full grid), column per variant
    positions: pd.DataFrame | None = None  # fraction of equity held after each bar, same shape
    round_trips: pd.DataFrame | None = None  # q50's, ROUND_TRIP_COLUMNS
    metrics: pd.DataFrame | None = None  # index variant
    permutation: dict = field(default_factory=dict)  # q50's: statistic, null (ndarray), p_value, draws, ...
    rule_permutations: dict = field(default_factory=dict)  # rule -> its permutation dict (q50's is the one above)
    rule_round_trips: dict = field(default_factory=dict)  # rule -> its round trips (q50's are round_trips)
    horizon_schedule: pd.DataFrame | None = None  # q50_horizon's decisions (horizon.SCHEDULE_COLUMNS)
    reserve: dict = field(default_factory=dict)  # fallback share of the span, sources, observations


def q50_inputs(config: BacktestStageConfig, signals, regimes: pd.DataFrame):
    """What the Q50 strategy decides with for one pool: its signal loader (``Q50SignalLoader``),
    its stored regime labels as of each time, and the stage's sizing."""
    from q50_assets.lineage.backtest.engine import Q50Inputs
    from q50_assets.lineage.regimes.rules import RegimeDetector

    return Q50Inputs(signals=signals, regimes=RegimeDetector().with_labels(regimes),
                     base_position_size=config.base_position_size, max_position_size=config.max_position_size,
                     kelly_fraction=config.kelly_fraction, variance_multiplier=config.variance_multiplier,
                     base_threshold=config.base_threshold)


def pool_spec(config: BacktestStageConfig, reserves):
    """The engines' spec for one pool: the stage's, at the pool's liquidity over time."""
    return replace(config.spec(), reserves=reserves, reserve_usd=None)


def nautilus_status() -> tuple[bool, str]:
    """(True, "") when NautilusTrader imports; else (False, the reason)."""
    try:
        import q50_assets.lineage.backtest.engine  # noqa: F401  (imports nautilus_trader)
    except Exception as exc:  # ImportError, or a broken binary wheel
        return False, f"nautilus_trader cannot be imported: {type(exc).__name__}: {exc}"
    return True, ""


def _grid(first_close: pd.Timestamp, last_close: pd.Timestamp, bar: pd.Timedelta) -> pd.DatetimeIndex:
    return pd.date_range(first_close, last_close, freq=bar, name="ts").as_unit("ns")


def _position_fraction(outcome, grid: pd.DatetimeIndex) -> pd.Series:
    eq = outcome.equity
    frac = (eq["qty"] * eq["close"] / eq["equity"]).where(eq["equity"] > 0, 0.0)
    return grid_equity(frac, grid).fillna(0.0)


def _base_equity(outcome, oos_start: pd.Timestamp) -> float:
    before = outcome.equity.loc[outcome.equity.index < oos_start, "equity"]
    return float(before.iloc[-1]) if len(before) else float(outcome.spec.starting_capital_usd)


def trade_metrics(outcome, oos_start: pd.Timestamp, mean_equity: float) -> dict[str, float]:
    """Fills, fees, impact and turnover (traded notional / mean equity) in the span; expired orders."""
    tr = outcome.trades[outcome.trades.index >= oos_start]
    orders = outcome.orders
    decided = orders["decided_at"] >= oos_start if len(orders) else np.zeros(0, dtype=bool)
    expired = orders.loc[decided, "status"].astype(str).str.startswith("expired: no fill") | \
        orders.loc[decided, "status"].astype(str).str.startswith("expired: zero")
    return {
        "trades": int(len(tr)),
        "fees_paid": float(tr["commission_usd"].sum()),
        "impact_paid": float(tr["impact_usd"].sum()),
        "turnover": float(tr["notional_usd"].sum() / mean_equity) if mean_equity > 0 else float("nan"),
        "orders_expired": int(expired.sum()),
    }


def round_trips(outcome, reserves: ReserveSeries | None, bar: pd.Timedelta) -> pd.DataFrame:
    """q50's round trips (flat -> long -> flat), the open one at the end flagged ``open``.

    Per trip: when the entry was decided and filled, when the exit filled, bars held (grid steps,
    to the last bar close for an open trip), notional bought (USD), gross return at the fills'
    reference prices (before fee and impact), net return (cash out / cash in - 1, after fee and
    impact; an open trip marked at the last close), fees + impact, and what the decision expected
    at entry (net edge as a fraction and in USD, cost) with its regime, tier and reserve.
    """
    trades = outcome.trades.sort_index(kind="stable")
    if trades.empty:
        return pd.DataFrame(columns=list(ROUND_TRIP_COLUMNS))
    orders = outcome.orders.set_index("client_order_id") if len(outcome.orders) else outcome.orders
    decisions = outcome.decisions if outcome.decisions is not None else pd.DataFrame()
    last_ts = outcome.equity.index[-1]
    last_close = float(outcome.equity["close"].iloc[-1])
    trips, current, held = [], None, 0.0
    step = 10.0 ** -outcome.size_precision
    for ts, row in trades.iterrows():
        dust = DUST_USD / row["ref_price"]  # a leftover worth under a cent closes the trip
        if current is None:
            if row["side"] != "BUY":
                continue  # a sell while flat cannot happen on a cash account; nothing to attribute
            current = {"fills": [], "first": ts, "order": row["client_order_id"]}
        current["fills"].append((ts, row))
        held += row["qty"] if row["side"] == "BUY" else -row["qty"]
        # Only a sell closes a trip: a buy worth under a cent (buy & hold at a tiny matched
        # exposure) is a position held, not a trip that ended where it began.
        if row["side"] == "SELL" and held <= max(step / 2, dust):
            trips.append((current, False))
            current, held = None, 0.0
    if current is not None:
        trips.append((current, True))
    rows = []
    for trip, is_open in trips:
        buys = [(t, r) for t, r in trip["fills"] if r["side"] == "BUY"]
        sells = [(t, r) for t, r in trip["fills"] if r["side"] == "SELL"]
        bought = sum(r["qty"] for _, r in buys)
        sold = sum(r["qty"] for _, r in sells)
        spent = sum(r["notional_usd"] + r["commission_usd"] for _, r in buys)
        received = sum(r["notional_usd"] - r["commission_usd"] for _, r in sells)
        remaining = bought - sold if is_open else 0.0
        gross_in = sum(r["qty"] * r["ref_price"] for _, r in buys)
        gross_out = sum(r["qty"] * r["ref_price"] for _, r in sells) + remaining * last_close
        entry_filled = trip["first"]
        exit_filled = sells[-1][0] if (sells and not is_open) else pd.NaT
        order = orders.loc[trip["order"]] if trip["order"] in orders.index else None
        decided = order["decided_at"] if order is not None else pd.NaT
        d = decisions.loc[decided] if (len(decisions) and decided in decisions.index) else None
        reserve, source = (reserves.at_ns(entry_filled.value) if reserves is not None else (None, "none"))
        end = exit_filled if not is_open else last_ts
        rows.append({
            "entry_decided_at": decided,
            "entry_filled_at": entry_filled,
            "exit_filled_at": exit_filled,
            "open": bool(is_open),
            "bars_held": int(round((end - entry_filled) / bar)),
            "notional_usd": float(sum(r["notional_usd"] for _, r in buys)),
            "gross_return": float(gross_out / gross_in - 1.0) if gross_in > 0 else float("nan"),
            "net_return": float((received + remaining * last_close) / spent - 1.0) if spent > 0 else float("nan"),
            "cost_usd": float(sum(r["commission_usd"] + r["impact_usd"] for _, r in trip["fills"])),
            "fees_usd": float(sum(r["commission_usd"] for _, r in trip["fills"])),
            "impact_usd": float(sum(r["impact_usd"] for _, r in trip["fills"])),
            "expected_net_edge": float(d["expected_net_edge"]) if d is not None else float("nan"),
            "expected_net_edge_usd": float(d["expected_net_edge_usd"]) if d is not None else float("nan"),
            "expected_cost_usd": float(d["expected_cost_usd"]) if d is not None else float("nan"),
            "vol_regime": d["vol_regime"] if d is not None else "",
            "momentum_regime": d["momentum_regime"] if d is not None else "",
            "signal_tier": d["signal_tier"] if d is not None else "",
            "reserve_usd": float("nan") if reserve is None else float(reserve),
            "reserve_source": source,
        })
    return pd.DataFrame(rows, columns=list(ROUND_TRIP_COLUMNS))


def _unavailable(pool_id: str, run_id: str, reason: str, bars=None, signals=None) -> PoolBacktest:
    return PoolBacktest(pool_id, run_id, "unavailable", reason, bars=bars, signals=signals)


def run_pool_stage(pool_id: str, bars: pd.DataFrame, signals: pd.DataFrame, regimes: pd.DataFrame,
                   reserves: ReserveSeries | None, config: BacktestStageConfig, backtest_run_id: str,
                   signal_loader=None) -> PoolBacktest:
    """One pool's backtest stage (module docstring): every variant, metrics, round trips, the
    permutation null. ``signals``: the signal frame the strategy trades on (or pass a prebuilt
    ``signal_loader``: e.g. built from the ``q50_signals`` table); ``regimes``: the pool's regime
    labels; ``reserves``: its liquidity over time (None = no impact). Returns status
    ``unavailable`` (with the reason) when NautilusTrader cannot be imported or started."""
    ok, reason = nautilus_status()
    if not ok:
        return _unavailable(pool_id, backtest_run_id, reason, bars, signals)
    from q50_assets.lineage.backtest.engine import (NautilusUnavailable, buy_and_hold_targets,
                                              run_pool_backtest, run_q50_backtest)
    from q50_assets.lineage.backtest.horizon import horizon_schedule
    from q50_assets.lineage.backtest.permutation import ReplayMarket, ReplayParams, permutation_null
    from q50_assets.lineage.signals.rules import Q50SignalLoader

    loader = signal_loader if signal_loader is not None else Q50SignalLoader(signals)
    if len(loader) == 0:
        return PoolBacktest(pool_id, backtest_run_id, "no_oos_signals",
                            "the model made no out-of-sample prediction for this pool", bars=bars, signals=signals)
    bar = config.bar
    inputs = q50_inputs(config, loader, regimes)
    spec = pool_spec(config, reserves)
    bar_index = pd.DatetimeIndex(bars.index)
    bar_index = bar_index.tz_localize("UTC") if bar_index.tz is None else bar_index.tz_convert("UTC")
    oos_open = pd.Timestamp(min(loader.open_ns), tz="UTC")
    oos_bars = bar_index[bar_index >= oos_open]
    if len(oos_bars) == 0:
        return PoolBacktest(pool_id, backtest_run_id, "no_oos_signals",
                            "no bar at or after the first out-of-sample signal", bars=bars, signals=signals)
    oos_start = oos_bars[0] + bar
    oos_end = bar_index[-1] + bar
    grid = _grid(oos_start, oos_end, bar)
    tf = config.timeframe

    try:
        outcomes = {Q50: run_q50_backtest(pool_id, bars, inputs, spec, timeframe=tf),
                    Q50_CLOSE: run_q50_backtest(pool_id, bars, inputs, replace(spec, fill_latency_bars=0),
                                                timeframe=tf)}
        flat = outcomes[Q50] if _is_flat(outcomes[Q50]) else None  # a run that never ordered: reusable
        outcomes[Q50_GROSS] = outcomes[Q50] if flat is not None else gross_outcome(pool_id, bars, outcomes[Q50], spec)
        fallback_share = 0.0
        sources: dict[str, int] = {}
        if reserves is not None:
            values, srcs = reserves.sample(grid.asi8)
            sources = {str(k): int(v) for k, v in pd.Series(srcs).value_counts().items()}
            fallback_share = float(np.mean(srcs == SOURCE_FALLBACK))
        for factor in config.reserve_sensitivity:
            name = reserve_variant(factor)
            if reserves is not None and fallback_share > 0:
                outcomes[name] = run_q50_backtest(
                    pool_id, bars, inputs, replace(spec, reserves=reserves.scaled_fallback(factor)), timeframe=tf)
            else:
                outcomes[name] = outcomes[Q50]  # no assumed reserve in the span: the same run
        schedule = horizon_schedule(loader.frame, bar_index, bar=bar, holding_bars=config.holding_bars,
                                    risk_premium=config.risk_premium, capital_usd=config.starting_capital_usd,
                                    sizing=config.sizing_params(), reserves=reserves)
        targets = schedule["target"]
        if targets.notna().any() or flat is None:
            outcomes[Q50_HORIZON] = run_pool_backtest(pool_id, bars, targets, spec)
            flat = flat if flat is not None or not _is_flat(outcomes[Q50_HORIZON]) else outcomes[Q50_HORIZON]
        else:
            outcomes[Q50_HORIZON] = flat  # no order decided: the same flat run
        outcomes[Q50_HORIZON_GROSS] = (outcomes[Q50_HORIZON] if _is_flat(outcomes[Q50_HORIZON])
                                       else gross_outcome(pool_id, bars, outcomes[Q50_HORIZON], spec))
        outcomes[BUY_AND_HOLD] = run_pool_backtest(
            pool_id, bars, buy_and_hold_targets(oos_bars, config.buy_and_hold_fraction), spec)
        matched = {}
        for rule, (_, matched_name) in RULES.items():
            fraction = _mean_position_held(outcomes[rule], grid)
            same = next((outcomes[m] for m, f in matched.items() if f == fraction), None)
            if same is None and fraction <= 0 and flat is not None:
                same = flat  # buy & hold of nothing is the flat run
            outcomes[matched_name] = same if same is not None else run_pool_backtest(
                pool_id, bars, buy_and_hold_targets(oos_bars, fraction), spec)
            matched[matched_name] = fraction
    except NautilusUnavailable as exc:
        return _unavailable(pool_id, backtest_run_id, str(exc), bars, signals)

    ppy = bars_per_year(int(bar.total_seconds()))
    returns, positions, rows = {}, {}, {}
    for name in config.variants:
        if name == CASH:
            returns[name] = pd.Series(0.0, index=grid)
            positions[name] = pd.Series(0.0, index=grid)
            continue
        outcome = outcomes[name]
        base = _base_equity(outcome, oos_start)
        returns[name] = grid_returns(outcome.equity["equity"], grid, base)
        positions[name] = _position_fraction(outcome, grid)
    bar_returns = pd.DataFrame(returns, index=grid)[list(config.variants)]
    position_frame = pd.DataFrame(positions, index=grid)[list(config.variants)]

    trips_by_variant: dict[str, pd.DataFrame] = {}
    for name in config.variants:
        m = returns_metrics(bar_returns[name], position_frame[name], ppy)
        if name == CASH:
            m.update(trades=0, fees_paid=0.0, impact_paid=0.0, turnover=0.0, orders_expired=0, round_trips=0,
                     win_rate=float("nan"), mean_holding_bars=float("nan"),
                     final_equity=float(config.starting_capital_usd))
        else:
            outcome = outcomes[name]
            mean_equity = float(grid_equity(outcome.equity["equity"], grid).mean())
            m.update(trade_metrics(outcome, oos_start, mean_equity))
            t = trips_by_variant[name] = round_trips(outcome, reserves, bar)
            closed = t[~t["open"]] if len(t) else t
            m["round_trips"] = int(len(closed))
            m["win_rate"] = float((closed["net_return"] > 0).mean()) if len(closed) else float("nan")
            m["mean_holding_bars"] = float(t["bars_held"].mean()) if len(t) else float("nan")
            m["final_equity"] = float(outcome.final_equity)
        m["reserve_fallback_share"] = fallback_share
        rows[name] = m
    metrics = pd.DataFrame.from_dict(rows, orient="index")
    metrics.index.name = "variant"
    metrics["oos_start"] = oos_start
    metrics["oos_end"] = oos_end
    # What costs took from each rule: the same decisions' return at zero cost minus the net one.
    metrics["cost_drag"] = np.nan
    for rule, (gross, _) in RULES.items():
        metrics.loc[rule, "cost_drag"] = metrics.loc[gross, "total_return"] - metrics.loc[rule, "total_return"]

    # The permutation null of each rule's timing (research/permutation.py), under the same costs.
    from q50_assets.lineage.backtest.engine import prepare_bars, build_pool_instrument

    built = build_pool_instrument(pool_id, prepare_bars(bars), spec)
    market = ReplayMarket(built.market(spec, "close" if spec.fill_latency_bars == 0 else spec.fill_price),
                          spec.cost_model())
    params = ReplayParams(spec.starting_capital_usd, spec.taker_fee, spec.max_reserve_fraction,
                          spec.min_trade_fraction, spec.fill_latency_bars, spec.max_volume_share)
    start = int(np.searchsorted(market.ts, oos_start.value))
    metrics["permutation_statistic"] = np.nan
    metrics["permutation_p_value"] = np.nan
    permutations = {}
    for rule in RULES:
        statistic = float(bar_returns[rule].mean())
        if _is_flat(outcomes[rule]) and rule != Q50:
            # No order: every shift of an empty schedule is the same flat book (null all 0, p = 1).
            draws = np.zeros(config.permutations)
            permutations[rule] = {"statistic": statistic, "null": draws, "p_value": 1.0, "draws": len(draws),
                                  "replayed_statistic": 0.0, "statistic_name": "mean per-bar net return"}
        else:
            taus = outcomes[rule].equity["target"].to_numpy(dtype="float64")
            null = permutation_null(market, params, taus, start, len(grid), statistic, config.permutations,
                                    config.permutation_seed)
            permutations[rule] = {"statistic": statistic, "null": null.null, "p_value": null.p_value,
                                  "draws": null.draws, "replayed_statistic": null.replayed_statistic,
                                  "statistic_name": "mean per-bar net return"}
        metrics.loc[rule, "permutation_statistic"] = statistic
        metrics.loc[rule, "permutation_p_value"] = permutations[rule]["p_value"]

    reserve = {"fallback_share": fallback_share, "sources": sources,
               "observations": 0 if reserves is None else len(reserves),
               "fallback_usd": None if reserves is None else reserves.fallback_usd}
    q50 = outcomes[Q50]
    return PoolBacktest(pool_id, backtest_run_id, "ok", oos_start=oos_start, oos_end=oos_end, bars=bars,
                        signals=signals, decisions=q50.decisions, outcomes=outcomes, bar_returns=bar_returns,
                        positions=position_frame, round_trips=trips_by_variant[Q50], metrics=metrics,
                        permutation=permutations[Q50], rule_permutations=permutations,
                        rule_round_trips={rule: trips_by_variant[rule] for rule in RULES},
                        horizon_schedule=schedule, reserve=reserve)


def _is_flat(outcome) -> bool:
    """No order was ever decided: equity stays the starting cash, whatever the strategy."""
    return len(outcome.orders) == 0 and len(outcome.trades) == 0


def _mean_position_held(outcome, grid: pd.DatetimeIndex) -> float:
    """Mean fraction of equity held into each bar of the grid, in [0, 1] (buy & hold matched to it)."""
    positions = _position_fraction(outcome, grid)
    return min(max(float(np.r_[0.0, positions.to_numpy()[:-1]].mean()), 0.0), 1.0)


def decided_targets(outcome, bar: pd.Timedelta) -> pd.Series:
    """A run's schedule of target fractions (``equity["target"]``, stamped at each decision's bar close)
    as :func:`run_pool_backtest` takes it: indexed by the decision bar's OPEN, NaN = no order."""
    target = outcome.equity["target"]
    return pd.Series(target.to_numpy(dtype="float64"), index=target.index - pd.Timedelta(bar), name="target")


def gross_spec(spec):
    """The same execution without costs: fee 0 and no price impact (no reserve). The volume share
    cap still binds; the reserve-fraction cap, which needs a reserve, does not."""
    return replace(spec, taker_fee=0.0, reserves=None, reserve_usd=None)


def gross_outcome(pool_id: str, bars: pd.DataFrame, costed, spec):
    """The costed run's own decisions (its schedule of targets) executed by NautilusTrader's target
    strategy at zero cost: what the decisions earned before fees and impact."""
    from q50_assets.lineage.backtest.engine import run_pool_backtest

    return run_pool_backtest(pool_id, bars, decided_targets(costed, spec.bar_length), gross_spec(spec))


def metrics_markdown(metrics: pd.DataFrame) -> str:
    cols = [c for c in SHOWN_METRICS if c in metrics.columns]
    lines = ["| variant | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for variant, row in metrics.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            missing = v is None or (isinstance(v, float) and math.isnan(v))
            if c in ("trades",):
                cells.append(str(int(v)))
            elif c in ("fees_paid", "impact_paid"):
                cells.append(f"{v:,.2f}")
            elif c in ("total_return", "cost_drag", "max_drawdown", "win_rate"):
                cells.append("n/a" if missing else f"{100 * v:.2f} %")
            elif c in ("exposure", "mean_position"):
                cells.append("n/a" if missing else f"{100 * v:.3g} %")  # often a few hundredths of a percent
            else:
                cells.append("n/a" if missing else f"{v:.2f}")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def equity_png(result: PoolBacktest) -> bytes:
    """Growth of 1 USD per variant over the out-of-sample span (from ``bar_returns``)."""
    # A bare Figure (no pyplot state), fixed margins and a fixed legend place: tight_layout and
    # loc="best" re-measure every text and line, which doubled the stage's plotting time.
    # The times are converted to Matplotlib's day numbers once, vectorised: handing each line a
    # DatetimeIndex converts every timestamp again per line, most of the stage's plotting time.
    from matplotlib import dates as mdates
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 2.8), dpi=72)
    ax = fig.add_axes((0.09, 0.2, 0.89, 0.7))
    if result.bar_returns is not None:
        growth = (1.0 + result.bar_returns).cumprod()
        index = growth.index.tz_convert(None) if growth.index.tz is not None else growth.index
        days = mdates.date2num(index.to_numpy())
        for name in growth.columns:
            ax.plot(days, growth[name].to_numpy(), label=name, linewidth=1.0)
        locator = mdates.AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_title(f"Growth of 1 USD, out of sample, after costs (*_gross: before) - {result.pool_id[:24]}",
                 fontsize=9)
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    ax.tick_params(labelsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def bars_match_pipeline(result: PoolBacktest) -> tuple[bool, dict]:
    """Nautilus' consumed bars vs the pipeline's OHLCV (count, first/last close time, sum of closes)."""
    bars = result.bars
    outcomes = {name: o for name, o in result.outcomes.items()}
    bar = pd.Timedelta(next(iter(outcomes.values())).spec.bar_length)
    expected = {"count": len(bars), "first": bars.index[0] + bar, "last": bars.index[-1] + bar,
                "close_sum": float(bars["close"].sum())}
    ok, details = True, {}
    for name, outcome in outcomes.items():
        seen = outcome.bars
        # Prices pass through Nautilus' Price at 6+ significant digits: compare sums to 1e-5.
        same = (seen.count == expected["count"] and seen.first_ts == expected["first"]
                and seen.last_ts == expected["last"]
                and math.isclose(seen.close_sum_per_token, expected["close_sum"], rel_tol=1e-5))
        ok &= same
        details[name] = {"count": seen.count, "first": str(seen.first_ts), "last": str(seen.last_ts),
                         "close_sum": seen.close_sum_per_token}
    details["pipeline"] = {k: str(v) if isinstance(v, pd.Timestamp) else v for k, v in expected.items()}
    return ok, details


def results_rows(result: PoolBacktest) -> pd.DataFrame:
    """The rows ``q50_backtest_results`` stores for one pool: one per variant, each rule's
    permutation null draws and round trips on its own row (for the pooled p-value and the
    breakdowns), every variant's per-bar returns on the q50 row."""
    rows = result.metrics.reset_index().copy()
    is_q50 = rows["variant"] == Q50
    permutations = result.rule_permutations or {Q50: result.permutation}
    trips = {Q50: result.round_trips, **{r: t for r, t in result.rule_round_trips.items() if r != Q50}}
    rows["permutation_null"] = [permutations[v]["null"].tolist() if v in permutations else None
                                for v in rows["variant"]]
    # What the portfolio report is computed from, stored once with the backtest that made it.
    rows["bar_returns"] = [bar_returns_record(result.bar_returns) if q else None for q in is_q50]
    rows["round_trip_records"] = [round_trip_records(trips[v]) if v in trips else None for v in rows["variant"]]
    return rows


def bar_returns_record(bar_returns: pd.DataFrame) -> dict:
    """Per-bar net returns of every variant as JSON: bar close epochs (seconds) and one list per
    variant (read back by :func:`bar_returns_from_record`)."""
    index = pd.DatetimeIndex(bar_returns.index).tz_convert("UTC")
    record = {"close_time": (index.as_unit("s").asi8).tolist()}
    for variant in bar_returns.columns:
        record[str(variant)] = bar_returns[variant].to_numpy(dtype="float64").tolist()
    return record


def bar_returns_from_record(record: dict) -> pd.DataFrame:
    index = pd.to_datetime(np.asarray(record["close_time"], dtype="int64"), unit="s", utc=True)
    columns = [k for k in record if k != "close_time"]
    return pd.DataFrame({c: np.asarray(record[c], dtype="float64") for c in columns}, index=index)


def round_trip_records(trips: pd.DataFrame | None) -> list[dict]:
    """Round trips as JSON records (times ISO 8601 UTC, NaN as null)."""
    if trips is None or trips.empty:
        return []
    return json.loads(trips.reset_index(drop=True).to_json(orient="records", date_format="iso", date_unit="s"))


def round_trips_from_records(records: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(records, columns=list(ROUND_TRIP_COLUMNS)) if records else \
        pd.DataFrame(columns=list(ROUND_TRIP_COLUMNS))
    for column in ("entry_decided_at", "entry_filled_at", "exit_filled_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def history_rows(result: PoolBacktest) -> pd.DataFrame:
    """One row per fill of the strategy (variant q50), from Nautilus' fills and the strategy's
    order records: when the order was decided (and filled, ``fill_latency_bars`` later), the
    signal, regime and target of that decision, what the cost model expected the fill to cost,
    and the fill itself (side, quantity, price, fee, impact)."""
    outcome = result.outcomes[Q50]
    fills = outcome.fills
    if fills is None or fills.empty:
        return pd.DataFrame()
    trades = outcome.trades  # one row per fill, in fill order: per-token quantities, fee, impact
    if len(trades) != len(fills):
        raise RuntimeError(f"pool {result.pool_id}: {len(fills)} Nautilus fills but {len(trades)} trade rows")
    status = outcome.order_fills["status"].astype(str) if "status" in outcome.order_fills else pd.Series(dtype=str)
    orders = outcome.orders[outcome.orders["client_order_id"] != ""].set_index("client_order_id")
    ids = trades["client_order_id"].astype(str)
    decided = pd.DatetimeIndex(orders["decided_at"].reindex(ids)).tz_convert("UTC")
    decisions = result.decisions.reindex(decided) if result.decisions is not None else pd.DataFrame(index=decided)
    signal_open = pd.DatetimeIndex(decisions["signal_open"]) if "signal_open" in decisions else decided
    signals = result.signals.reindex(signal_open) if result.signals is not None else pd.DataFrame(index=signal_open)
    fill_time = pd.DatetimeIndex(trades.index).tz_convert("UTC")
    reserves = outcome.spec.cost_model()
    reserve = [reserves.reserve_at(int(t)) for t in fill_time.as_unit("ns").asi8]
    regime = [f"{v}_{m}" for v, m in zip(decisions.get("vol_regime", pd.Series(index=decided, dtype=object)),
                                       decisions.get("momentum_regime", pd.Series(index=decided, dtype=object)))]
    return pd.DataFrame({
        "timestamp": fill_time,
        "filled_at": fill_time,
        "decided_at": decided,
        # The bar whose signal (and feature vector) decided the order: what feature_vector_id names.
        "signal_open": signal_open,
        "q50_signal": signals["q50"].to_numpy() if "q50" in signals else np.nan,
        "regime_classification": regime,
        "position_size": decisions["target"].to_numpy() if "target" in decisions else np.nan,
        "nautilus_order_id": ids.to_numpy(),
        "execution_status": [status.get(i, "FILLED") for i in ids],
        "feature_vector_id": signals["feature_vector_id"].to_numpy() if "feature_vector_id" in signals else None,
        "side": trades["side"].to_numpy(),
        "quantity": trades["qty_tokens"].to_numpy(),
        "price": trades["price_per_token"].to_numpy(),
        "fee": trades["commission_usd"].to_numpy(),
        "impact": trades["impact_usd"].to_numpy(),
        "expected_cost_usd": orders["expected_cost_usd"].reindex(ids).to_numpy(),
        "reserve_usd": [np.nan if r is None else r for r, _ in reserve],
        "reserve_source": [s for _, s in reserve],
    })


__all__ = [
    "bar_returns_from_record",
    "bar_returns_record",
    "round_trip_records",
    "round_trips_from_records",
    "BH_MATCHED_HORIZON",
    "BUY_AND_HOLD",
    "BUY_AND_HOLD_MATCHED",
    "GROSS_VARIANTS",
    "Q50_GROSS",
    "Q50_HORIZON",
    "Q50_HORIZON_GROSS",
    "RULES",
    "decided_targets",
    "gross_outcome",
    "gross_spec",
    "BacktestStageConfig",
    "CASH",
    "PoolBacktest",
    "Q50",
    "Q50_CLOSE",
    "ROUND_TRIP_COLUMNS",
    "SHOWN_METRICS",
    "bars_match_pipeline",
    "equity_png",
    "history_rows",
    "metrics_markdown",
    "nautilus_status",
    "reserve_variant",
    "results_rows",
    "round_trips",
    "run_pool_stage",
    "trade_metrics",
    "variants_for",
]


VERIFIED = ("ok", "failed_checks")  # statuses of a pool whose engines ran (metrics and a picture exist)


def backtest_checks(result: PoolBacktest) -> dict[str, tuple[bool, dict]]:
    """The stage's three rules for one computed pool: (passed, metadata) per check name."""
    bars = result.bars
    bar = pd.Timedelta(result.outcomes["q50"].spec.bar_length)
    bars_ok, bars_details = bars_match_pipeline(result)
    processed_ok = all(o.iterations >= len(bars) and o.backtest_end is not None
                       and o.backtest_end >= bars.index[-1] + bar for o in result.outcomes.values())
    min_cash = {name: float(o.equity["cash"].min()) for name, o in result.outcomes.items()}
    return {
        "bars_match_pipeline": (bars_ok, {"bars": bars_details}),
        "engine_processed_every_bar": (processed_ok, {
            "bars_given": len(bars), "iterations": {n: o.iterations for n, o in result.outcomes.items()}}),
        "cash_never_negative": (all(v >= 0 for v in min_cash.values()), {"min_cash_usd": min_cash}),
    }


def _pool_inputs_gate(pool_id: str, validated, signals: pd.DataFrame | None, regimes: pd.DataFrame | None):
    """The bars a pool's backtest may use, or why it is skipped (the gate of the stages before)."""
    bars = bars_or_blocked(validated)
    if isinstance(bars, Blocked):
        return bars
    if regimes is None or regimes.empty:
        return Blocked(pool_id, "regime_labels", "no regime_labels rows for this pool (blocked upstream or by a "
                       "regime_labels check)")
    if signals is None or signals.empty:
        return Blocked(pool_id, "q50_signals", "no q50_signals rows for this pool (no out-of-sample prediction, "
                       "or blocked upstream or by a q50_signals check)")
    return bars


@dataclass
class BacktestBatch:
    results: dict  # pool -> PoolBacktest or Blocked
    outcomes: dict  # pool -> {check name: (passed, metadata)} for computed pools
    reserve_rows_ignored: dict  # pool -> collector reserve rows that observed nothing
    pictures: dict  # pool -> equity picture (PNG bytes) for pools with metrics
    fallback: FallbackReserve | None = None  # the batch's assumed reserve (None: no engine ran)


def backtest_step(ohlcv: dict, signals: dict, regimes: dict, db: CollectorSource,
                  settings: Settings, run_id: str, signal_tables: ProjectTableStore | None = None,
                  progress=None) -> BacktestBatch:
    """A batch of pools: per usable pool, the backtest stage (:func:`run_pool_stage`: every variant's
    Nautilus engines, metrics, round trips, the permutation null) at the pool's liquidity as the
    collector observed it, then the stage's rules; a pool failing one keeps its result out of the
    table (status ``failed_checks``); the equity picture of every pool with metrics.

    ``signal_tables``: where ``backtest.signal_source: database`` reads the stored signals.
    """
    source = settings.nautilus_trader.strategy_config.signal_source
    if source == "database" and signal_tables is None:
        raise ValueError("backtest.signal_source: database needs the tables holding the stored signals")
    available, why = nautilus_status() if settings.nautilus_trader.enabled else (True, "")
    # The engines' spec imports NautilusTrader: only built when it can run.
    config = BacktestStageConfig.of(settings) if settings.nautilus_trader.enabled and available else None
    gates = {p: _pool_inputs_gate(p, ohlcv[p], signals.get(p), regimes.get(p)) for p in ohlcv}
    usable = [p for p, b in gates.items() if not isinstance(b, Blocked)]
    runs = bool(usable) and settings.nautilus_trader.enabled and available
    # The same assumed reserve as the signals' (one definition, one read per batch).
    fallback = reserve_assumption(db, settings) if runs else None
    reserves = db.pool_reserves_many(usable, fallback.usd) if runs else {}
    out, outcomes, ignored = {}, {}, {}
    for pool_id in each(list(ohlcv), progress):
        bars = gates[pool_id]
        if isinstance(bars, Blocked):
            out[pool_id] = bars
            continue
        if not settings.nautilus_trader.enabled:
            out[pool_id] = PoolBacktest(pool_id, run_id, "disabled", "nautilus_trader.enabled is false: no backtest "
                                        "ran (signals and regimes are unaffected)")
            continue
        if not available:
            out[pool_id] = PoolBacktest(pool_id, run_id, "unavailable", f"{why} (signals and regimes are unaffected)")
            continue
        series, ignored[pool_id] = reserves[pool_id]
        loader = None
        if source == "database":  # signals made elsewhere, stored in q50_signals of the signal database
            loader = signal_tables.signal_loader(pool_id, settings.timeframe)
        result = run_pool_stage(pool_id, bars, signals[pool_id], regimes[pool_id], series, config, run_id,
                                signal_loader=loader)
        if result.status == "ok":
            outcomes[pool_id] = backtest_checks(result)
            failed = [name for name, (ok, _) in outcomes[pool_id].items() if not ok]
            if failed:  # only verified results reach the table
                result = replace(result, status="failed_checks", reason=f"checks failed: {', '.join(failed)}")
        out[pool_id] = result
    drawn = {p: equity_png(r) for p, r in out.items() if not isinstance(r, Blocked) and r.status in VERIFIED}
    return BacktestBatch(out, outcomes, ignored, drawn, fallback)
