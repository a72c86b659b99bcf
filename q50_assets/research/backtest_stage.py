"""The backtest stage of one pool, as plain functions: decisions -> the Q50 strategy and its
baselines in NautilusTrader engines -> metrics on the out-of-sample span; the stage's pictures and
tables; the trading-history rows of its fills.

No Dagster here: the asset layer (``q50_assets/assets/backtest.py``, ``trading_history.py``) only
wires these to resources, checks and metadata. Configuration is the small
:class:`BacktestStageConfig`, never the project settings.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import pandas as pd

from q50_assets.research.backtest import (BacktestOutcome, BacktestSpec, buy_and_hold_targets, run_pool_backtest,
                                          shuffled_targets)
from q50_assets.research.metrics import outcome_metrics
from q50_assets.research.sizing import DEFAULT_KELLY_FRACTION, decide_targets

VARIANTS = ("q50", "buy_and_hold", "shuffled")
SHOWN_METRICS = ("total_return", "sharpe", "sortino", "max_drawdown", "win_rate", "trades", "fees_paid",
                 "impact_paid", "exposure")


@dataclass(frozen=True)
class BacktestStageConfig:
    """What one pool's backtest stage needs to know (translated from the settings once).

    spec: costs, capital and limits of every engine (its ``reserve_usd`` is replaced per pool).
    """

    spec: BacktestSpec = field(default_factory=BacktestSpec)
    base_position_size: float = 0.1
    max_position_size: float = 0.5
    kelly_fraction: float = DEFAULT_KELLY_FRACTION
    shuffle_seed: int = 7
    buy_and_hold_fraction: float = 1.0

    @property
    def bar(self) -> pd.Timedelta:
        return pd.Timedelta(self.spec.bar_length)

    def pool_spec(self, reserve_usd: float | None) -> BacktestSpec:
        from dataclasses import replace

        return replace(self.spec, reserve_usd=reserve_usd)


@dataclass
class PoolBacktest:
    """One pool's backtest stage output."""

    pool_id: str
    backtest_run_id: str
    status: str  # "ok", "disabled", "no_oos_signals"
    reason: str = ""
    oos_start: pd.Timestamp | None = None  # first bar CLOSE of the out-of-sample span
    bars: pd.DataFrame | None = None  # the pipeline's complete bars handed to Nautilus
    decisions: pd.DataFrame | None = None
    signals: pd.DataFrame | None = None
    outcomes: dict[str, BacktestOutcome] = field(default_factory=dict)
    metrics: pd.DataFrame | None = None  # index variant


def run_variants(pool_id: str, bars: pd.DataFrame, signals: pd.DataFrame, regimes: pd.DataFrame,
                 reserve_usd: float | None, config: BacktestStageConfig, backtest_run_id: str) -> PoolBacktest:
    """Strategy + baselines for one pool; metrics from each bar close >= the first OOS signal's."""
    decisions = decide_targets(signals, regimes, base_position_size=config.base_position_size,
                               max_position_size=config.max_position_size, kelly_fraction=config.kelly_fraction)
    if decisions.empty:
        return PoolBacktest(pool_id, backtest_run_id, "no_oos_signals",
                            "the model made no out-of-sample prediction for this pool", bars=bars,
                            decisions=decisions, signals=signals)
    bar = config.bar
    oos_open = decisions.index.min()
    oos_index = bars.index[bars.index >= oos_open]
    targets = {
        "q50": decisions["target"],
        "buy_and_hold": buy_and_hold_targets(oos_index, config.buy_and_hold_fraction),
        "shuffled": shuffled_targets(decisions["target"], config.shuffle_seed),
    }
    spec = config.pool_spec(reserve_usd)
    outcomes = {name: run_pool_backtest(pool_id, bars, t, spec) for name, t in targets.items()}
    oos_start = oos_open + bar
    rows = {}
    for name, outcome in outcomes.items():
        m = outcome_metrics(outcome, start=oos_start)
        m["final_equity"] = outcome.final_equity
        rows[name] = m
    metrics = pd.DataFrame.from_dict(rows, orient="index")
    metrics.index.name = "variant"
    metrics["oos_start"] = oos_start
    metrics["oos_end"] = bars.index[-1] + bar
    return PoolBacktest(pool_id, backtest_run_id, "ok", oos_start=oos_start, bars=bars, decisions=decisions,
                        signals=signals, outcomes=outcomes, metrics=metrics)


def metrics_markdown(metrics: pd.DataFrame) -> str:
    cols = [c for c in SHOWN_METRICS if c in metrics.columns]
    lines = ["| variant | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for variant, row in metrics.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            if c in ("trades",):
                cells.append(str(int(v)))
            elif c in ("fees_paid", "impact_paid"):
                cells.append(f"{v:,.2f}")
            elif c in ("total_return", "max_drawdown", "win_rate", "exposure"):
                cells.append("n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f} %")
            else:
                cells.append("n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def equity_png(result: PoolBacktest) -> bytes:
    # A bare Figure (no pyplot state), fixed margins and a fixed legend place: tight_layout and
    # loc="best" re-measure every text and line, which doubled the stage's plotting time.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 2.8), dpi=72)
    ax = fig.add_axes((0.09, 0.2, 0.89, 0.7))
    for name, outcome in result.outcomes.items():
        curve = outcome.equity_curve
        curve = curve[curve.index >= result.oos_start] if result.oos_start is not None else curve
        ax.plot(curve.index, curve.to_numpy(), label=name, linewidth=1.2)
    ax.set_title(f"Equity, out of sample (USD) - {result.pool_id[:24]}", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    ax.tick_params(labelsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def bars_match_pipeline(result: PoolBacktest) -> tuple[bool, dict]:
    """Nautilus' consumed bars vs the pipeline's OHLCV (count, first/last close time, sum of closes)."""
    bars = result.bars
    bar = pd.Timedelta(next(iter(result.outcomes.values())).spec.bar_length)
    expected = {"count": len(bars), "first": bars.index[0] + bar, "last": bars.index[-1] + bar,
                "close_sum": float(bars["close"].sum())}
    ok, details = True, {}
    for name, outcome in result.outcomes.items():
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


def history_rows(result: PoolBacktest) -> pd.DataFrame:
    """One row per fill of the strategy (variant q50), from Nautilus' fills and order reports.

    The decision behind a fill is the one of the bar whose close is the fill time (orders are
    submitted and filled at that close); a fill with no decision at that bar (the strategy going
    flat where no signal exists) keeps the signal fields empty rather than borrowing another bar's.
    """
    outcome = result.outcomes["q50"]
    bar = pd.Timedelta(outcome.spec.bar_length)
    fills = outcome.fills
    if fills is None or fills.empty:
        return pd.DataFrame()
    fills = fills.sort_values("ts_event", kind="stable")
    trades = outcome.trades  # same fills, same stable order: per-token quantities, fee, impact
    if len(trades) != len(fills):
        raise RuntimeError(f"pool {result.pool_id}: {len(fills)} Nautilus fills but {len(trades)} trade rows")
    status = outcome.order_fills["status"].astype(str) if "status" in outcome.order_fills else pd.Series(dtype=str)
    fill_time = pd.DatetimeIndex(fills["ts_event"]).tz_convert("UTC")
    decision_open = fill_time - bar
    decisions = result.decisions.reindex(decision_open)
    signals = result.signals.reindex(decision_open)
    client_ids = [str(i) for i in fills.index]
    return pd.DataFrame({
        "timestamp": fill_time,
        "filled_at": fill_time,
        "q50_signal": signals["q50"].to_numpy(),
        "regime_classification": decisions["regime"].to_numpy(),
        "position_size": decisions["target"].to_numpy(),
        "nautilus_order_id": client_ids,
        "execution_status": [status.get(i, "FILLED") for i in client_ids],
        "feature_vector_id": signals["feature_vector_id"].to_numpy() if "feature_vector_id" in signals else None,
        "side": trades["side"].to_numpy(),
        "quantity": trades["qty_tokens"].to_numpy(),
        "price": trades["price_per_token"].to_numpy(),
        "fee": trades["commission_usd"].to_numpy(),
        "impact": trades["impact_usd"].to_numpy(),
    })


__all__ = [
    "BacktestStageConfig",
    "PoolBacktest",
    "SHOWN_METRICS",
    "VARIANTS",
    "bars_match_pipeline",
    "equity_png",
    "history_rows",
    "metrics_markdown",
    "run_variants",
]
