"""Performance metrics of one backtest, computed here (not by Nautilus' analyzer, which
annualises with 252 days and has no max drawdown).

Inputs: the per-bar equity curve (``BacktestOutcome.equity["equity"]``, indexed by bar CLOSE
time, the mark-to-market value after that bar's trade), the trades (``BacktestOutcome.trades``,
one row per Nautilus fill; a raw Nautilus fills report also works for counts and fees), the
Nautilus positions report, and the held quantity per bar (``BacktestOutcome.equity["qty"]``).

Span: ``start`` restricts everything to an out-of-sample span. It is compared with the
equity curve's index (bar CLOSE times): the span is the rows with index >= start. The return
of the first bar in the span is measured from the last mark BEFORE start (the position carried
into the span), so a span is not flattered by skipping its first move; when no row precedes
start, the base is ``initial_equity`` if given (e.g. the starting capital, so the first trade's
costs count), else the first equity in the span. Fills, fees and impact count when their
time is >= start; a round trip counts when it CLOSED at or after start.

Definitions (r = bar-to-bar simple returns of equity inside the span):

* total_return = equity_last / base - 1.
* sharpe = mean(r) / std(r, ddof=1) * sqrt(bars_per_year); NaN with < 2 returns or std 0.
* sortino = mean(r) / sqrt(mean(min(r, 0)**2)) * sqrt(bars_per_year) (target 0, downside
  deviation over all returns); NaN with < 2 returns or no negative return.
* bars_per_year = 24 * 365 for hourly bars (crypto trades around the clock).
* max_drawdown = max over t of 1 - equity_t / running max (base included), a fraction >= 0.
* trades = number of fills; round_trips = positions closed (flat -> long -> flat) in the span.
* win_rate = round trips with realized PnL > 0 / round trips (Nautilus' realized PnL is net
  of commissions; impact is in the fill prices); NaN without round trips.
* fees_paid, impact_paid = sums over fills of commission and impact (USD).
* exposure = fraction of the span's return periods during which a non-zero quantity was held
  (the quantity after the previous bar's trade, i.e. the one earning bar t's return).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from q50_assets.lineage.backtest.execution import DUST_USD

HOURLY_BARS_PER_YEAR = 24 * 365
SECONDS_PER_YEAR = 365 * 86_400
# A fraction of equity below this (a cent of 10 000 USD) is dust, not a position.
HELD_FRACTION = 1e-6


def bars_per_year(bar_seconds: int) -> float:
    """Bars in a (365-day) year of a timeframe: crypto trades around the clock. 1h: 8,760;
    4h: 2,190; 15m: 35,040 (use research.bars.TIMEFRAME_SECONDS for the seconds)."""
    if not bar_seconds > 0:
        raise ValueError(f"bar_seconds must be > 0, got {bar_seconds!r}")
    return SECONDS_PER_YEAR / bar_seconds

METRIC_NAMES = ("total_return", "sharpe", "sortino", "max_drawdown", "win_rate", "trades", "round_trips",
                "fees_paid", "impact_paid", "exposure", "bars")


def _utc(ts) -> pd.Timestamp:
    t = pd.Timestamp(ts)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def utc_index(index) -> pd.DatetimeIndex:
    idx = pd.DatetimeIndex(index)
    return idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")


def _money(value) -> float:
    """'12.32 USD' / number / None -> float (0 for missing)."""
    if value is None:
        return 0.0
    if isinstance(value, (int, float, np.integer, np.floating)):
        return 0.0 if isinstance(value, float) and math.isnan(value) else float(value)
    if isinstance(value, (list, tuple)):
        return float(sum(_money(v) for v in value))
    text = str(value).strip()
    return float(text.split()[0]) if text else 0.0


def sharpe_ratio(returns: pd.Series | np.ndarray, bars_per_year: float = HOURLY_BARS_PER_YEAR) -> float:
    r = np.asarray(returns, dtype="float64")
    r = r[np.isfinite(r)]
    if len(r) < 2:
        return float("nan")
    sd = r.std(ddof=1)
    return float(r.mean() / sd * math.sqrt(bars_per_year)) if sd > 0 else float("nan")


def sortino_ratio(returns: pd.Series | np.ndarray, bars_per_year: float = HOURLY_BARS_PER_YEAR) -> float:
    r = np.asarray(returns, dtype="float64")
    r = r[np.isfinite(r)]
    if len(r) < 2:
        return float("nan")
    downside = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2)))
    return float(r.mean() / downside * math.sqrt(bars_per_year)) if downside > 0 else float("nan")


def max_drawdown(equity: pd.Series | np.ndarray) -> float:
    """Largest peak-to-trough loss as a fraction of the peak (0 when never below a peak)."""
    e = np.asarray(equity, dtype="float64")
    if len(e) == 0:
        return float("nan")
    peak = np.maximum.accumulate(e)
    with np.errstate(divide="ignore", invalid="ignore"):
        dd = np.where(peak > 0, 1.0 - e / peak, 0.0)
    return float(max(0.0, np.nanmax(dd)))


def compute_metrics(equity: pd.Series, trades: pd.DataFrame | None = None, positions: pd.DataFrame | None = None,
                    position_qty: pd.Series | None = None, *, start=None, initial_equity: float | None = None,
                    bars_per_year: float = HOURLY_BARS_PER_YEAR) -> dict[str, float]:
    """Metrics of the module docstring over the span ``index >= start`` (all when None).

    ``equity``: Series indexed by bar close time. ``trades``: per-fill frame with columns
    ``commission_usd`` and ``impact_usd`` (or a raw Nautilus fills report with ``commission``
    and ``ts_event``; impact is then 0), indexed by fill time unless it has ``ts_event``.
    ``positions``: Nautilus positions report (``ts_closed``, ``realized_pnl``).
    ``position_qty``: quantity held after each bar's trade, same index as ``equity``.
    """
    if bars_per_year <= 0:
        raise ValueError(f"bars_per_year must be > 0, got {bars_per_year!r}")
    eq = pd.Series(equity, dtype="float64").copy()
    eq.index = utc_index(eq.index)
    eq = eq.sort_index()
    t0 = None if start is None else _utc(start)
    in_span = np.ones(len(eq), dtype=bool) if t0 is None else (eq.index >= t0)
    span = eq[in_span]
    before = eq[~in_span]
    if len(before):
        base = float(before.iloc[-1])
    elif initial_equity is not None:
        base = float(initial_equity)
    else:
        base = float(span.iloc[0]) if len(span) else float("nan")
    path = np.r_[base, span.to_numpy()] if (len(before) or initial_equity is not None) else span.to_numpy()
    returns = np.diff(path) / path[:-1] if len(path) > 1 else np.array([])

    out: dict[str, float] = {
        "total_return": float(span.iloc[-1] / base - 1.0) if len(span) and base else float("nan"),
        "sharpe": sharpe_ratio(returns, bars_per_year),
        "sortino": sortino_ratio(returns, bars_per_year),
        "max_drawdown": max_drawdown(path) if len(path) else float("nan"),
        "bars": int(len(span)),
    }

    # Fills, fees, impact.
    n_fills, fees, impact = 0, 0.0, 0.0
    if trades is not None and len(trades):
        tr = trades
        times = utc_index(tr["ts_event"]) if "ts_event" in tr.columns else utc_index(tr.index)
        mask = np.ones(len(tr), dtype=bool) if t0 is None else (times >= t0)
        tr = tr[mask]
        n_fills = int(len(tr))
        if "commission_usd" in tr.columns:
            fees = float(tr["commission_usd"].astype(float).sum())
        elif "commission" in tr.columns:
            fees = float(sum(_money(c) for c in tr["commission"]))
        if "impact_usd" in tr.columns:
            impact = float(tr["impact_usd"].astype(float).sum())
    out.update({"trades": n_fills, "fees_paid": fees, "impact_paid": impact})

    # Round trips and win rate.
    round_trips, wins = 0, 0
    if positions is not None and len(positions) and "ts_closed" in positions.columns:
        closed_at = pd.to_datetime(positions["ts_closed"], utc=True)
        mask = closed_at.notna().to_numpy()
        if t0 is not None:
            mask = mask & (closed_at >= t0).fillna(False).to_numpy(dtype=bool)
        closed = positions[mask]
        round_trips = int(len(closed))
        wins = int(sum(_money(v) > 0 for v in closed["realized_pnl"]))
    out["round_trips"] = round_trips
    out["win_rate"] = wins / round_trips if round_trips else float("nan")

    # Exposure: quantity held into each return period of the span.
    exposure = float("nan")
    if position_qty is not None:
        qty = pd.Series(position_qty, dtype="float64").copy()
        qty.index = utc_index(qty.index)
        qty = qty.reindex(eq.index).fillna(0.0)
        held_into = qty.shift(1, fill_value=0.0)[in_span]  # held over (t-1, t]; flat before the first bar
        periods = held_into if (len(before) or initial_equity is not None) else held_into.iloc[1:]
        exposure = float((periods != 0).mean()) if len(periods) else float("nan")
    out["exposure"] = exposure
    return {name: out[name] for name in METRIC_NAMES}


def outcome_metrics(outcome, start=None, bars_per_year: float = HOURLY_BARS_PER_YEAR) -> dict[str, float]:
    """:func:`compute_metrics` of a ``BacktestOutcome``. When no bar precedes ``start`` (or
    without ``start``) the base is the starting capital, so the first trade's costs count."""
    eq = outcome.equity
    held = eq["qty"].where(eq["qty"] * eq["close"] >= DUST_USD, 0.0)  # dust is flat (research/execution.py)
    return compute_metrics(
        eq["equity"], outcome.trades, outcome.positions, held, start=start,
        initial_equity=outcome.spec.starting_capital_usd, bars_per_year=bars_per_year,
    )


def grid_equity(equity: pd.Series, grid: pd.DatetimeIndex) -> pd.Series:
    """Equity marked at each close of the full time grid: a missing bar (no swaps, no price)
    keeps the last mark, so its return is 0. ``equity``: after each real bar, by bar close."""
    eq = pd.Series(equity, dtype="float64").copy()
    eq.index = utc_index(eq.index)
    return eq.reindex(eq.index.union(grid)).ffill().reindex(grid)


def grid_returns(equity: pd.Series, grid: pd.DatetimeIndex, base: float) -> pd.Series:
    """Per-bar simple returns of equity on ``grid`` (bar closes); the first is measured from
    ``base``, the equity before the grid's first bar."""
    eq = grid_equity(equity, grid)
    previous = eq.shift(1)
    previous.iloc[0] = base
    return (eq / previous - 1.0).rename(None)


def returns_metrics(returns: pd.Series, positions: pd.Series, periods_per_year: float) -> dict[str, float]:
    """Metrics of per-bar returns on the full time grid (missing bars count, flat).

    total_return = prod(1 + r) - 1; sharpe = mean / std (ddof 1) * sqrt(periods_per_year) and
    sortino = mean / sqrt(mean(min(r, 0)^2)) * sqrt(periods_per_year) (NaN when undefined, e.g.
    never invested); max_drawdown of the compounded path; exposure = share of bars entered
    holding a position (the fraction after the previous bar > 0); mean_position = mean fraction
    of equity held into each bar; hit_rate = share of the bars held into with a return > 0.
    """
    r = np.asarray(returns, dtype="float64")
    held_into = np.r_[0.0, np.asarray(positions, dtype="float64")[:-1]]
    path = np.cumprod(np.r_[1.0, 1.0 + r])
    held = held_into > HELD_FRACTION
    return {
        "total_return": float(path[-1] - 1.0) if len(r) else float("nan"),
        "sharpe": sharpe_ratio(r, periods_per_year),
        "sortino": sortino_ratio(r, periods_per_year),
        "max_drawdown": max_drawdown(path),
        "exposure": float(held.mean()) if len(r) else float("nan"),
        "mean_position": float(held_into.mean()) if len(r) else float("nan"),
        "hit_rate": float((r[held] > 0).mean()) if held.any() else float("nan"),
        "bars": int(len(r)),
        "bars_per_year": float(periods_per_year),
    }


__all__ = [
    "HOURLY_BARS_PER_YEAR",
    "bars_per_year",
    "grid_equity",
    "grid_returns",
    "returns_metrics",
    "METRIC_NAMES",
    "compute_metrics",
    "max_drawdown",
    "outcome_metrics",
    "sharpe_ratio",
    "sortino_ratio",
]
