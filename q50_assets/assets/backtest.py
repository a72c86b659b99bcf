"""Lineage stage 5 - backtest results: per pool, the Q50 strategy in a real NautilusTrader engine
beside two baselines on the same bars and costs (buy & hold; the same targets shuffled in time),
metrics on the out-of-sample span only; plus a portfolio summary across pools.

Glue only: decisions are :func:`q50_assets.research.sizing.decide_targets`, the engine and
strategy :mod:`q50_assets.research.backtest`, the metrics :mod:`q50_assets.research.metrics`.
"""


import base64
import io
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    MetadataValue,
    Output,
    ResourceParam,
    asset,
)

from q50_assets.assets.partitions import pool_partitions
from q50_assets.assets.regimes import REGIMES_ASSET
from q50_assets.assets.signals import SIGNALS_ASSET
from q50_assets.research.backtest import BacktestOutcome, buy_and_hold_targets, shuffled_targets
from q50_assets.research.bars import TIMEFRAME_SECONDS, ValidatedBars, require_safe
from q50_assets.research.metrics import outcome_metrics
from q50_assets.research.sizing import decide_targets
from q50_assets.resources.database import CollectorDatabase
from q50_assets.resources.nautilus import NautilusBacktester
from q50_assets.settings import Settings

BACKTEST_ASSET = "backtest_results"
PORTFOLIO_ASSET = "backtest_portfolio"
VARIANTS = ("q50", "buy_and_hold", "shuffled")
SHOWN_METRICS = ("total_return", "sharpe", "sortino", "max_drawdown", "win_rate", "trades", "fees_paid",
                 "impact_paid", "exposure")


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
                 nautilus: NautilusBacktester, reserve_usd: float | None, settings: Settings,
                 backtest_run_id: str) -> PoolBacktest:
    """Strategy + baselines for one pool; metrics from each bar close >= the first OOS signal's."""
    risk = settings.nautilus_trader.risk_management
    bt = settings.nautilus_trader.backtest
    decisions = decide_targets(signals, regimes, base_position_size=risk.base_position_size,
                               max_position_size=risk.max_position_size, kelly_fraction=bt.kelly_fraction)
    if decisions.empty:
        return PoolBacktest(pool_id, backtest_run_id, "no_oos_signals",
                            "the model made no out-of-sample prediction for this pool", bars=bars,
                            decisions=decisions, signals=signals)
    bar = pd.Timedelta(seconds=TIMEFRAME_SECONDS[settings.timeframe])
    oos_open = decisions.index.min()
    oos_index = bars.index[bars.index >= oos_open]
    targets = {
        "q50": decisions["target"],
        "buy_and_hold": buy_and_hold_targets(oos_index, bt.buy_and_hold_fraction),
        "shuffled": shuffled_targets(decisions["target"], bt.shuffle_seed),
    }
    outcomes = {name: nautilus.run(pool_id, bars, t, reserve_usd) for name, t in targets.items()}
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


def _check_bars(result: PoolBacktest, bar: pd.Timedelta) -> tuple[bool, dict]:
    """Nautilus' consumed bars vs the pipeline's OHLCV (count, first/last close time, sum of closes)."""
    bars = result.bars
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


@asset(
    name=BACKTEST_ASSET,
    partitions_def=pool_partitions,
    group_name="backtest",
    kinds={"nautilustrader"},
    check_specs=[
        AssetCheckSpec("bars_match_pipeline", asset=BACKTEST_ASSET, blocking=True,
                       description="The bars Nautilus consumed equal the pipeline's OHLCV for the pool: count, "
                       "first and last bar close, sum of closes (every variant)."),
        AssetCheckSpec("engine_processed_every_bar", asset=BACKTEST_ASSET, blocking=True,
                       description="Each engine's iterations and last timestamp cover every bar given "
                       "(Nautilus can stop early without raising)."),
        AssetCheckSpec("cash_never_negative", asset=BACKTEST_ASSET, blocking=True,
                       description="USD cash after every bar's trade is >= 0 in every variant."),
    ],
    description="Per pool: the Q50 strategy in a NautilusTrader BacktestEngine (targets from the signal and "
    "regime known at each bar's close), beside buy & hold and the same targets shuffled in time, on the same "
    "bars, fee and AMM price impact. Metrics on the out-of-sample span only; equity picture and table in metadata.",
)
def backtest_results(
    context: AssetExecutionContext,
    ohlcv_bars: ValidatedBars,
    q50_signals: pd.DataFrame,
    regime_labels: pd.DataFrame,
    nautilus: NautilusBacktester,
    collector_db: CollectorDatabase,
    settings: ResourceParam[Settings],
):
    pool_id = context.partition_key
    run_id = context.run.run_id
    bar = pd.Timedelta(seconds=TIMEFRAME_SECONDS[settings.timeframe])
    check_names = ("bars_match_pipeline", "engine_processed_every_bar", "cash_never_negative")

    if not nautilus.enabled:
        reason = "nautilus_trader.enabled is false: no backtest ran (signals and regimes are unaffected)"
        context.log.warning(f"pool {pool_id}: {reason}")
        yield Output(PoolBacktest(pool_id, run_id, "disabled", reason),
                     metadata={"pool_id": pool_id, "status": "disabled", "reason": reason})
        for name in check_names:
            yield AssetCheckResult(check_name=name, passed=True, metadata={"skipped": reason})
        return

    bars = require_safe(ohlcv_bars)
    reserve_usd = collector_db.pool_reserve_usd(pool_id)
    reserve_source = "collector"
    if reserve_usd is None:
        reserve_usd = settings.nautilus_trader.backtest.fallback_reserve_usd
        reserve_source = "fallback_reserve_usd" if reserve_usd is not None else "none (no impact)"
    result = run_variants(pool_id, bars, q50_signals, regime_labels, nautilus, reserve_usd, settings, run_id)
    if result.status != "ok":
        yield Output(result, metadata={"pool_id": pool_id, "status": result.status, "reason": result.reason})
        for name in check_names:
            yield AssetCheckResult(check_name=name, passed=True, metadata={"skipped": result.reason})
        return

    bars_ok, bars_details = _check_bars(result, bar)
    processed_ok = all(o.iterations >= len(bars) and o.backtest_end is not None
                       and o.backtest_end >= bars.index[-1] + bar for o in result.outcomes.values())
    min_cash = {name: float(o.equity["cash"].min()) for name, o in result.outcomes.items()}
    cash_ok = all(v >= 0 for v in min_cash.values())

    written = 0
    if bars_ok and processed_ok and cash_ok:  # only verified results reach the table
        written = collector_db.replace_backtest_results(run_id, pool_id, settings.timeframe,
                                                         result.metrics.reset_index())
    png = equity_png(result)
    q50 = result.metrics.loc["q50"]
    yield Output(
        result,
        metadata={
            "pool_id": pool_id,
            "status": "ok",
            "backtest_run_id": run_id,
            "oos_start": MetadataValue.text(str(result.oos_start)),
            "oos_bars": int((bars.index + bar >= result.oos_start).sum()),
            "q50_total_return": MetadataValue.float(float(q50["total_return"])),
            "buy_and_hold_total_return": MetadataValue.float(float(result.metrics.loc["buy_and_hold", "total_return"])),
            "shuffled_total_return": MetadataValue.float(float(result.metrics.loc["shuffled", "total_return"])),
            "q50_trades": int(q50["trades"]),
            "impact_applied": result.outcomes["q50"].impact_applied,
            "reserve_usd": MetadataValue.float(float(reserve_usd)) if reserve_usd is not None else "none",
            "reserve_source": reserve_source,
            "rows_written": written,
            "summary": MetadataValue.md(metrics_markdown(result.metrics)),
            "equity_curve": MetadataValue.md(
                f"![equity curve](data:image/png;base64,{base64.b64encode(png).decode()})"),
        },
    )
    yield AssetCheckResult(check_name="bars_match_pipeline", passed=bars_ok, severity=AssetCheckSeverity.ERROR,
                           metadata={"pool_id": pool_id, "bars": MetadataValue.json(bars_details)})
    yield AssetCheckResult(
        check_name="engine_processed_every_bar", passed=processed_ok, severity=AssetCheckSeverity.ERROR,
        metadata={"pool_id": pool_id, "bars_given": len(bars),
                  "iterations": MetadataValue.json({n: o.iterations for n, o in result.outcomes.items()})})
    yield AssetCheckResult(check_name="cash_never_negative", passed=cash_ok, severity=AssetCheckSeverity.ERROR,
                           metadata={"pool_id": pool_id, "min_cash_usd": MetadataValue.json(min_cash)})


def portfolio_table(results: pd.DataFrame) -> pd.DataFrame:
    """Across pools, per variant: mean and median OOS return, pools beating buy & hold / shuffled,
    total fees and impact, trades. Equal weight per pool (each backtest has its own capital)."""
    if results.empty:
        return pd.DataFrame()
    by_variant = results.groupby("variant")
    table = pd.DataFrame({
        "pools": by_variant["pool_id"].nunique(),
        "mean_return": by_variant["total_return"].mean(),
        "median_return": by_variant["total_return"].median(),
        "mean_sharpe": by_variant["sharpe"].mean(),
        "mean_max_drawdown": by_variant["max_drawdown"].mean(),
        "trades": by_variant["trades"].sum(),
        "fees_paid": by_variant["fees_paid"].sum(),
        "impact_paid": by_variant["impact_paid"].sum(),
        "mean_exposure": by_variant["exposure"].mean(),
    })
    wide = results.pivot_table(index="pool_id", columns="variant", values="total_return")
    if {"q50", "buy_and_hold", "shuffled"} <= set(wide.columns):
        table["q50_beats_this"] = [
            int((wide["q50"] > wide[v]).sum()) if v != "q50" else np.nan for v in table.index]
    return table.reindex([v for v in VARIANTS if v in table.index])


def portfolio_markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "No backtest results yet."
    lines = ["| variant | pools | mean return | median return | mean Sharpe | mean max DD | trades | fees USD | "
             "impact USD | mean exposure | pools where q50 beats it |", "|---|" + "---|" * 10]
    for variant, r in table.iterrows():
        beats = r.get("q50_beats_this", np.nan)
        lines.append(
            f"| {variant} | {int(r['pools'])} | {100 * r['mean_return']:.2f} % | {100 * r['median_return']:.2f} % | "
            f"{r['mean_sharpe']:.2f} | {100 * r['mean_max_drawdown']:.2f} % | {int(r['trades'])} | "
            f"{r['fees_paid']:,.0f} | {r['impact_paid']:,.0f} | {100 * r['mean_exposure']:.1f} % | "
            f"{'' if pd.isna(beats) else int(beats)} |")
    return "\n".join(lines)


def comparable_baselines(results: pd.DataFrame) -> tuple[list[dict], int]:
    """Pools whose latest backtest cannot be compared fairly: a variant missing, variants on
    different out-of-sample spans, or a return that is not finite or below -100 % (spot cannot
    lose more than it holds). Returns (problems, pools checked)."""
    problems = []
    for pool_id, rows in results.groupby("pool_id"):
        variants = set(rows["variant"])
        if variants != set(VARIANTS):
            problems.append({"pool_id": pool_id, "problem": f"variants {sorted(variants)}"})
            continue
        spans = rows[["oos_start", "oos_end", "bars"]].astype(str).drop_duplicates()
        if len(spans) != 1:
            problems.append({"pool_id": pool_id, "problem": "variants cover different out-of-sample spans"})
        bad = rows[~np.isfinite(rows["total_return"].astype(float)) | (rows["total_return"].astype(float) < -1)]
        if len(bad):
            problems.append({"pool_id": pool_id, "problem": f"impossible total_return in {sorted(bad['variant'])}"})
    return problems, int(results["pool_id"].nunique()) if len(results) else 0


@asset(
    name=PORTFOLIO_ASSET,
    deps=[AssetKey(BACKTEST_ASSET)],
    group_name="backtest",
    kinds={"pandas"},
    check_specs=[
        AssetCheckSpec("comparable_baselines", asset=PORTFOLIO_ASSET, blocking=True,
                       description="Every pool in the table has q50, buy & hold and shuffled results from one "
                       "backtest run on the same out-of-sample span, with finite returns >= -100 %."),
    ],
    description="Across pools: the latest backtest of each pool, per variant (q50, buy & hold, shuffled), "
    "out of sample, equal weight per pool. Read from q50_backtest_results, so pools blocked upstream "
    "simply have no row.",
)
def backtest_portfolio(context: AssetExecutionContext, collector_db: CollectorDatabase,
                       settings: ResourceParam[Settings]):
    results = collector_db.latest_backtest_results(settings.timeframe)
    problems, checked = comparable_baselines(results)
    table = portfolio_table(results)
    yield Output(table, metadata={"pools": checked, "summary": MetadataValue.md(portfolio_markdown(table))})
    yield AssetCheckResult(check_name="comparable_baselines", passed=not problems, severity=AssetCheckSeverity.ERROR,
                           metadata={"pools_checked": checked, "problems": MetadataValue.json(problems[:50])})
