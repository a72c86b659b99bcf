"""The basket stage's step, no Dagster: every pool's signals -> the forecast basket and its
volatility yardstick (:mod:`q50_assets.lineage.basket.rules`) -> each pool ever held run through a
real NautilusTrader engine (:func:`q50_assets.lineage.backtest.engine.run_pool_backtest`: next-bar
fills, fee + AMM impact at the pool's liquidity over time, volume cap), net and gross of costs;
equal-weight buy & hold of every candidate pool at the forecast basket's exposure beside them.

**Weighting.** Each slot of the basket weighs 1/top_k, re-weighted every bar: the basket's return
of a bar is the sum over pools of that bar's return of the pool's own account (PnL / the account's
equity before the bar) divided by top_k, and it compounds at the basket's level. A member's account
starts at basket_capital_usd / top_k and holds all of it while a member (sized and charged by the
cost model at that size), so a slot left empty is cash and a pool that pumped does not weigh more
the next time it is chosen. The accounts' sizes drift with their own PnL, which moves the AMM
impact they pay (not their weight). Buy & hold gives each of its N candidate pools 1/N, holding
the forecast basket's mean share of its k slots filled, from the first basket's bar on.

**Gross** runs are the same targets with fee 0 and no impact (same fills, latency and volume cap),
for the forecast basket and the yardstick. Intervals: the calendar-time block bootstrap of
:mod:`q50_assets.lineage.common.uncertainty` (its public ``headline_table``) on the basket's
per-bar returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from q50_assets.lineage.backtest.metrics import grid_equity
from q50_assets.lineage.backtest.step import BacktestStageConfig, nautilus_status, pool_spec, round_trips
from q50_assets.lineage.basket.rules import (BASKETS, BUY_AND_HOLD, FORECAST, VOLATILITY, BasketConfig, Membership,
                                             basket_membership, candidate_panel, first_basket_close,
                                             target_schedule)
from q50_assets.lineage.common.gate import Blocked
from q50_assets.lineage.common.ports import CollectorSource
from q50_assets.lineage.common.uncertainty import BootstrapConfig, headline_table
from q50_assets.lineage.ohlcv.step import bars_or_blocked
from q50_assets.lineage.signals.step import reserve_assumption
from q50_assets.settings import Settings

STAGE = "basket_backtest"
NET, GROSS = "net", "gross"
# (basket, costs) of every run, in display order.
VARIANTS = ((FORECAST, NET), (FORECAST, GROSS), (VOLATILITY, NET), (VOLATILITY, GROSS), (BUY_AND_HOLD, NET))
METRIC_COLUMNS = ("total_return", "mean_bar_return", "mean_bar_return_low", "mean_bar_return_high", "sharpe",
                  "sharpe_low", "sharpe_high", "max_drawdown", "mean_exposure", "bars_held", "turnover", "fees_usd",
                  "impact_usd", "cost_usd", "round_trips", "open_trips", "pools")


def variant_name(basket: str, costs: str) -> str:
    return f"{basket} {costs}"


@dataclass
class BasketResult:
    """What the stage keeps (DataFrames and numbers, no engine objects). ``status``: ok,
    no_basket (no rebalance bar had enough candidates), disabled, unavailable."""

    run_id: str
    status: str
    config: BasketConfig  # the rules it ran with
    reason: str = ""
    span_start: pd.Timestamp | None = None  # first bar close of every variant's returns
    span_end: pd.Timestamp | None = None
    memberships: dict[str, Membership] = field(default_factory=dict)
    not_candidates: dict[str, int] = field(default_factory=dict)
    candidate_rows: int = 0
    blocked: dict[str, str] = field(default_factory=dict)  # pool -> why it is not a candidate
    bar_returns: pd.DataFrame | None = None  # index bar close (full grid), column per variant
    exposure: pd.DataFrame | None = None  # weighted share of the accounts held after each bar, same shape
    metrics: pd.DataFrame | None = None  # index variant (VARIANTS' names), METRIC_COLUMNS
    matched_exposure: float = float("nan")  # buy & hold's target fraction
    seconds: float = 0.0


@dataclass
class _Runs:
    pnl: pd.Series
    held: pd.Series
    notional: float = 0.0
    fees: float = 0.0
    impact: float = 0.0
    trips: int = 0
    open_trips: int = 0
    pools: int = 0


def _run_pools(schedules: dict[str, pd.Series], bars: dict[str, pd.DataFrame], specs: dict, grid: pd.DatetimeIndex,
               reserves: dict, bar: pd.Timedelta, weight: float) -> _Runs:
    """Every pool's schedule in its own engine; on ``grid``, the weighted sum of the accounts' per-bar
    returns (``pnl``, the basket's return) and of their shares held (``held``)."""
    from q50_assets.lineage.backtest.engine import run_pool_backtest

    out = _Runs(pd.Series(0.0, index=grid), pd.Series(0.0, index=grid))
    for pool_id in sorted(schedules):
        spec = specs[pool_id]
        outcome = run_pool_backtest(pool_id, bars[pool_id], schedules[pool_id], spec)
        start = spec.starting_capital_usd
        before = outcome.equity.loc[outcome.equity.index < grid[0], "equity"]
        base = float(before.iloc[-1]) if len(before) else start
        equity = grid_equity(outcome.equity["equity"], grid).fillna(start)
        previous = equity.shift(1)
        previous.iloc[0] = base
        account_return = (equity - previous) / previous
        held = grid_equity(outcome.equity["qty"] * outcome.equity["close"], grid).fillna(0.0)
        out.pnl = out.pnl + weight * account_return.to_numpy()  # module docstring: 1/k per slot
        out.held = out.held + weight * (held / equity).to_numpy()
        trades = outcome.trades[outcome.trades.index >= grid[0]]
        out.notional += float(trades["notional_usd"].sum())
        out.fees += float(trades["commission_usd"].sum())
        out.impact += float(trades["impact_usd"].sum())
        trips = round_trips(outcome, reserves.get(pool_id), bar)
        out.trips += int((~trips["open"].astype(bool)).sum()) if len(trips) else 0
        out.open_trips += int(trips["open"].astype(bool).sum()) if len(trips) else 0
        out.pools += int(len(outcome.trades) > 0)
    return out


def _max_drawdown(returns: np.ndarray) -> float:
    path = np.cumprod(np.r_[1.0, 1.0 + returns])  # the basket compounds (module docstring)
    peak = np.maximum.accumulate(path)
    return float(np.max(1.0 - path / peak)) if len(path) else float("nan")


def basket_metrics(bar_returns: pd.DataFrame, exposure: pd.DataFrame, runs: dict[str, _Runs], capital: float,
                   bar_seconds: int, bootstrap: BootstrapConfig) -> pd.DataFrame:
    """Per variant: total return, mean per-bar return and annualised Sharpe with their block-bootstrap
    intervals, max drawdown, mean exposure, bars held, turnover (notional traded / capital), fees,
    impact, round trips and the pools that traded."""
    table = headline_table({"basket": bar_returns}, trials=1, bar_seconds=bar_seconds, config=bootstrap)
    rows = {}
    for name, run in runs.items():
        r = bar_returns[name].to_numpy(dtype="float64")
        h = table.loc[name]
        rows[name] = {
            "total_return": float(np.prod(1.0 + r) - 1.0), "mean_bar_return": float(h["mean_bar_return"]),
            "mean_bar_return_low": float(h["mean_bar_return_low"]), "mean_bar_return_high": float(h["mean_bar_return_high"]),
            "sharpe": float(h["sharpe"]), "sharpe_low": float(h["sharpe_low"]), "sharpe_high": float(h["sharpe_high"]),
            "max_drawdown": _max_drawdown(r), "mean_exposure": float(exposure[name].mean()),
            "bars_held": int((exposure[name] > 0).sum()), "turnover": run.notional / capital,
            "fees_usd": run.fees, "impact_usd": run.impact, "cost_usd": run.fees + run.impact,
            "round_trips": run.trips, "open_trips": run.open_trips, "pools": run.pools}
    metrics = pd.DataFrame.from_dict(rows, orient="index", columns=list(METRIC_COLUMNS))
    metrics.index.name = "variant"
    return metrics


def basket_step(ohlcv: dict, signals: dict, db: CollectorSource, settings: Settings, run_id: str) -> BasketResult:
    """Every pool's bars and signals -> the baskets' Nautilus runs and metrics (module docstring)."""
    import time

    started = time.perf_counter()
    config = BasketConfig.of(settings)
    result = BasketResult(run_id, "ok", config)
    bars, usable = {}, {}
    for pool_id in sorted(set(ohlcv) | set(signals)):
        b = bars_or_blocked(ohlcv[pool_id]) if pool_id in ohlcv else Blocked(pool_id, "ohlcv_bars", "no bars stored")
        s = signals.get(pool_id)
        if isinstance(b, Blocked):
            result.blocked[pool_id] = f"{b.stage}: {b.reason}"
        elif isinstance(s, Blocked):
            result.blocked[pool_id] = f"{s.stage}: {s.reason}"
        elif s is None or len(s) == 0:
            result.blocked[pool_id] = "q50_signals: no signal rows"
        else:
            bars[pool_id], usable[pool_id] = b, s
    panel = candidate_panel(usable, config)
    result.not_candidates, result.candidate_rows = panel.not_candidates, len(panel.rows)
    result.memberships = {b: basket_membership(panel, config, b) for b in BASKETS}
    start = first_basket_close(result.memberships)
    if start is None:
        result.status = "no_basket"
        result.reason = (f"no rebalance bar had {config.min_candidate_pools} candidate pools "
                         f"({result.candidate_rows} candidate rows over {len(usable)} pools)")
        return result
    if not settings.nautilus_trader.enabled:
        result.status, result.reason = "disabled", "nautilus_trader.enabled is false: no backtest ran"
        return result
    available, why = nautilus_status()
    if not available:
        result.status, result.reason = "unavailable", why
        return result

    bar = config.bar
    candidates = sorted(set(panel.rows.index[panel.rows.index.get_level_values("close") >= start]
                            .get_level_values("pool_id")))
    end = max(pd.DatetimeIndex(bars[p].index).max() for p in candidates) + bar
    end = end.tz_localize("UTC") if end.tzinfo is None else end
    grid = pd.date_range(start, end, freq=bar, name="close").as_unit("ns")
    result.span_start, result.span_end = grid[0], grid[-1]
    ever = {b: [p for p in m.members.columns if m.members.loc[m.members.index >= start, p].any()]
            for b, m in result.memberships.items()}
    needed = sorted(set(candidates) | {p for pools in ever.values() for p in pools})
    # The reserve assumed where none was observed: the same rule as the signals' and backtests'.
    fallback = reserve_assumption(db, settings)
    reserves = {p: r for p, (r, _) in db.pool_reserves_many(needed, fallback.usd).items()}
    stage = BacktestStageConfig.of(settings)
    capital = config.basket_capital_usd

    def specs(pools, each_capital, costs):
        out = {}
        for p in pools:
            spec = replace(pool_spec(stage, reserves[p]), starting_capital_usd=each_capital)
            out[p] = spec if costs == NET else replace(spec, taker_fee=0.0, reserves=None, reserve_usd=None)
        return out

    runs: dict[str, _Runs] = {}
    for basket in BASKETS:
        members = result.memberships[basket].members
        schedules = {p: target_schedule(members[p], bar, start) for p in ever[basket]}
        for costs in (NET, GROSS):
            runs[variant_name(basket, costs)] = _run_pools(
                schedules, bars, specs(ever[basket], config.member_capital_usd, costs), grid, reserves, bar,
                1.0 / config.top_k)
    # Matched to what the forecast basket decided to hold (share of its k slots filled), not to its
    # value held: a sleeve that grew would otherwise ask buy & hold for more than all of its capital.
    slots = result.memberships[FORECAST].members.reindex(grid).fillna(0.0).sum(axis=1) / config.top_k
    result.matched_exposure = min(max(float(slots.mean()), 0.0), 1.0)
    hold = pd.Series(result.matched_exposure, index=grid)
    each = capital / len(candidates)
    runs[variant_name(BUY_AND_HOLD, NET)] = _run_pools(
        {p: target_schedule(hold, bar, start) for p in candidates}, bars, specs(candidates, each, NET), grid,
        reserves, bar, 1.0 / len(candidates))

    names = [variant_name(b, c) for b, c in VARIANTS]
    result.bar_returns = pd.DataFrame({n: runs[n].pnl for n in names}, index=grid)
    result.exposure = pd.DataFrame({n: runs[n].held for n in names}, index=grid)
    result.metrics = basket_metrics(result.bar_returns, result.exposure, runs, capital, settings.bar_seconds,
                                    BootstrapConfig.of(settings))
    result.seconds = time.perf_counter() - started
    return result


__all__ = ["BasketResult", "METRIC_COLUMNS", "NET", "GROSS", "STAGE", "VARIANTS", "basket_metrics", "basket_step",
           "variant_name"]
