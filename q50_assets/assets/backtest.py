"""Lineage stage 5 - backtest results: per pool, the Q50 strategy in a real NautilusTrader engine
beside two baselines on the same bars and costs (buy & hold; the same targets shuffled in time),
metrics on the out-of-sample span only; plus a portfolio summary across pools.

Glue only: decisions are :func:`q50_assets.research.sizing.decide_targets`, the engine and
strategy :mod:`q50_assets.research.backtest`, the metrics :mod:`q50_assets.research.metrics`.
"""


import base64
import io
import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetOut,

    MetadataValue,
    Output,
    asset,
    multi_asset,
)

from q50_assets.assets.batch import PoolChecks, add_pool_metadata, blocked_metadata, each, pool_check_spec, progress_callback
from q50_assets.assets.ohlcv import OHLCV_ASSET
from q50_assets.assets.partitions import pool_partitions
from q50_assets.assets.regimes import REGIMES_ASSET
from q50_assets.assets.signals import SIGNALS_ASSET
from q50_assets.assets.trading_history import TRADING_HISTORY_ASSET, history_step, reconcile
from q50_assets.research.backtest import BacktestOutcome, buy_and_hold_targets, shuffled_targets
from q50_assets.research.bars import TIMEFRAME_SECONDS
from q50_assets.research.metrics import outcome_metrics
from q50_assets.research.sizing import decide_targets
from q50_assets.resources.database import CollectorDatabase
from q50_assets.resources.lineage import LineageConfig
from q50_assets.resources.nautilus import NautilusBacktester
from q50_assets.settings import Settings
from q50_assets.stages.gate import Blocked
from q50_assets.stages.ohlcv import bars_or_blocked

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
    status: str  # "ok", "disabled", "no_oos_signals", "failed_checks" (ok, but a rule of the stage failed)
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


def backtest_checks(result: PoolBacktest, bar: pd.Timedelta) -> dict[str, tuple[bool, dict]]:
    """The stage's three rules for one computed pool: (passed, metadata) per check name."""
    bars = result.bars
    bars_ok, bars_details = _check_bars(result, bar)
    processed_ok = all(o.iterations >= len(bars) and o.backtest_end is not None
                       and o.backtest_end >= bars.index[-1] + bar for o in result.outcomes.values())
    min_cash = {name: float(o.equity["cash"].min()) for name, o in result.outcomes.items()}
    return {
        "bars_match_pipeline": (bars_ok, {"bars": MetadataValue.json(bars_details)}),
        "engine_processed_every_bar": (processed_ok, {
            "bars_given": len(bars),
            "iterations": MetadataValue.json({n: o.iterations for n, o in result.outcomes.items()})}),
        "cash_never_negative": (all(v >= 0 for v in min_cash.values()), {"min_cash_usd": MetadataValue.json(min_cash)}),
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
    reserves: dict  # pool -> (reserve USD used, where it came from)
    pictures: dict  # pool -> equity picture (PNG bytes) for pools with metrics


def backtest_step(ohlcv: dict, signals: dict, regimes: dict, nautilus: NautilusBacktester, db: CollectorDatabase,
                  lineage: LineageConfig, run_id: str, progress=None) -> BacktestBatch:
    """A batch of pools: three Nautilus engines per usable pool (strategy and both baselines), then
    the stage's rules; a pool failing one keeps its result out of the table (status
    ``failed_checks``); the equity picture of every pool with metrics."""
    settings = lineage.backtest_settings()
    bar = pd.Timedelta(seconds=lineage.bar_seconds)
    reserves = db.pool_reserves_usd(list(ohlcv))
    fallback = lineage.backtest.fallback_reserve_usd
    out, outcomes, sources = {}, {}, {}
    for pool_id in each(list(ohlcv), progress):
        bars = _pool_inputs_gate(pool_id, ohlcv[pool_id], signals.get(pool_id), regimes.get(pool_id))
        if isinstance(bars, Blocked):
            out[pool_id] = bars
            continue
        if not nautilus.enabled:
            out[pool_id] = PoolBacktest(pool_id, run_id, "disabled", "nautilus_trader.enabled is false: no backtest "
                                        "ran (signals and regimes are unaffected)")
            continue
        reserve, source = reserves[pool_id], "collector"
        if reserve is None:
            reserve, source = fallback, ("fallback_reserve_usd" if fallback is not None else "none (no impact)")
        sources[pool_id] = (reserve, source)
        result = run_variants(pool_id, bars, signals[pool_id], regimes[pool_id], nautilus, reserve, settings, run_id)
        if result.status == "ok":
            outcomes[pool_id] = backtest_checks(result, bar)
            failed = [name for name, (ok, _) in outcomes[pool_id].items() if not ok]
            if failed:  # only verified results reach the table
                result = replace(result, status="failed_checks", reason=f"checks failed: {', '.join(failed)}")
        out[pool_id] = result
    drawn = {p: equity_png(r) for p, r in out.items()
             if not isinstance(r, Blocked) and r.status in ("ok", "failed_checks")}
    return BacktestBatch(out, outcomes, sources, drawn)


def _backtest_metadata(result: PoolBacktest, bar: pd.Timedelta, reserve: tuple[float | None, str],
                       png: bytes | None) -> dict:
    if result.status not in ("ok", "failed_checks"):
        return {"pool_id": result.pool_id, "status": result.status, "reason": result.reason}
    q50 = result.metrics.loc["q50"]
    reserve_usd, reserve_source = reserve
    return {
        "pool_id": result.pool_id,
        "status": result.status,
        **({"reason": result.reason} if result.reason else {}),
        "backtest_run_id": result.backtest_run_id,
        "oos_start": MetadataValue.text(str(result.oos_start)),
        "oos_bars": int((result.bars.index + bar >= result.oos_start).sum()),
        "q50_total_return": MetadataValue.float(float(q50["total_return"])),
        "buy_and_hold_total_return": MetadataValue.float(float(result.metrics.loc["buy_and_hold", "total_return"])),
        "shuffled_total_return": MetadataValue.float(float(result.metrics.loc["shuffled", "total_return"])),
        "q50_trades": int(q50["trades"]),
        "impact_applied": result.outcomes["q50"].impact_applied,
        "reserve_usd": MetadataValue.float(float(reserve_usd)) if reserve_usd is not None else "none",
        "reserve_source": reserve_source,
        "rows_written": len(result.metrics) if result.status == "ok" else 0,
        "summary": MetadataValue.md(metrics_markdown(result.metrics)),
        "equity_curve": MetadataValue.md(f"![equity curve](data:image/png;base64,{base64.b64encode(png).decode()})"),
    }


@multi_asset(
    outs={
        BACKTEST_ASSET: AssetOut(
            io_manager_key="q50_tables", group_name="backtest", kinds={"nautilustrader"},
            description="Per pool: the Q50 strategy in a NautilusTrader BacktestEngine (targets from the signal "
            "and regime known at each bar's close), beside buy & hold and the same targets shuffled in time, on "
            "the same bars, fee and AMM price impact. Metrics on the out-of-sample span only, stored in "
            "q50_backtest_results per backtest run (history kept); equity picture and table in metadata."),
        TRADING_HISTORY_ASSET: AssetOut(
            io_manager_key="q50_tables", group_name="backtest", kinds={"sql"},
            description="Every order of the Q50 strategy's Nautilus backtest with its fill (side, quantity, "
            "price, fee, impact), the signal, regime and target that decided it and the feature vector behind "
            "it; keyed by the backtest run id, replaced per run in one transaction. Written by the same step "
            "as backtest_results (the fills are never stored twice)."),
    },
    internal_asset_deps={
        BACKTEST_ASSET: {AssetKey(OHLCV_ASSET), AssetKey(SIGNALS_ASSET), AssetKey(REGIMES_ASSET)},
        TRADING_HISTORY_ASSET: {AssetKey(BACKTEST_ASSET)},
    },
    partitions_def=pool_partitions,
    ins={
        "ohlcv_bars": AssetIn(OHLCV_ASSET),
        "q50_signals": AssetIn(SIGNALS_ASSET, input_manager_key="q50_tables"),
        "regime_labels": AssetIn(REGIMES_ASSET, input_manager_key="q50_tables"),
    },
    check_specs=[
        pool_check_spec(BACKTEST_ASSET, "bars_match_pipeline", "The bars Nautilus consumed equal the pipeline's OHLCV "
                        "for the pool: count, first and last bar close, sum of closes (every variant).", True),
        pool_check_spec(BACKTEST_ASSET, "engine_processed_every_bar", "Each engine's iterations and last timestamp "
                        "cover every bar given (Nautilus can stop early without raising).", True),
        pool_check_spec(BACKTEST_ASSET, "cash_never_negative",
                        "USD cash after every bar's trade is >= 0 in every variant.", True),
        pool_check_spec(TRADING_HISTORY_ASSET, "reconciles_with_fills", "The rows stored for this backtest run equal "
                        "Nautilus' fills report: count, total quantity, total fees.", True),
    ],
    name="backtest_and_trading_history",
)
def backtest_results(context: AssetExecutionContext, ohlcv_bars: dict, q50_signals: dict, regime_labels: dict,
                     nautilus: NautilusBacktester, collector_db: CollectorDatabase, lineage: LineageConfig):
    pool_ids = list(context.partition_keys)
    run_id = context.run.run_id
    bar = pd.Timedelta(seconds=lineage.bar_seconds)
    batch = backtest_step(ohlcv_bars, q50_signals, regime_labels, nautilus, collector_db, lineage, run_id,
                          progress_callback(context, BACKTEST_ASSET, len(pool_ids)))
    results = batch.results
    histories = history_step(results, bar)
    checks = PoolChecks(context)
    for pool_id in pool_ids:
        result = results[pool_id]
        if isinstance(result, Blocked):
            add_pool_metadata(context, pool_id, blocked_metadata(result), BACKTEST_ASSET)
            add_pool_metadata(context, pool_id, blocked_metadata(result), TRADING_HISTORY_ASSET)
            continue
        if result.status == "disabled":
            context.log.warning(f"pool {pool_id}: {result.reason}")
        add_pool_metadata(context, pool_id, _backtest_metadata(result, bar, batch.reserves.get(pool_id, (None, "none")),
                                                               batch.pictures.get(pool_id)), BACKTEST_ASSET)
        for name, (passed, metadata) in batch.outcomes.get(pool_id, {}).items():
            checks.add(BACKTEST_ASSET, name, pool_id, passed, metadata)
    yield Output(results, output_name=BACKTEST_ASSET,
                 metadata={"pools": len(pool_ids), "backtest_run_id": run_id,
                           "pools_ok": sum(not isinstance(r, Blocked) and r.status == "ok" for r in results.values())})
    yield Output(histories, output_name=TRADING_HISTORY_ASSET, metadata={"backtest_run_id": run_id})
    # The history is in the table now (the IO manager wrote it when the output was yielded):
    # reconcile what the database holds with Nautilus' own fills report.
    written = {p: h for p, h in histories.items() if not isinstance(h, Blocked)}
    stored = collector_db.trading_history_many({p: h.backtest_run_id for p, h in written.items()}) if written else {}
    for pool_id in pool_ids:
        history = histories[pool_id]
        if isinstance(history, Blocked):
            if not isinstance(results[pool_id], Blocked):
                add_pool_metadata(context, pool_id, blocked_metadata(history), TRADING_HISTORY_ASSET)
            continue
        ok, got, expected = reconcile(stored[pool_id], results[pool_id].outcomes["q50"])
        rows = history.rows
        add_pool_metadata(context, pool_id, {
            "pool_id": pool_id, "status": "ok", "backtest_run_id": history.backtest_run_id, "rows_written": len(rows),
            "buys": int((rows["side"] == "BUY").sum()) if len(rows) else 0,
            "sells": int((rows["side"] == "SELL").sum()) if len(rows) else 0,
            "fees_usd": MetadataValue.float(got["fees"])}, TRADING_HISTORY_ASSET)
        checks.add(TRADING_HISTORY_ASSET, "reconciles_with_fills", pool_id, ok,
                   {"stored": MetadataValue.json(got), "nautilus_fills": MetadataValue.json(expected)})
    yield from checks.events()


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
    ins={"backtest_results": AssetIn(BACKTEST_ASSET, input_manager_key="q50_tables")},
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
def backtest_portfolio(context: AssetExecutionContext, backtest_results: dict):
    frames = [frame.reset_index() for frame in backtest_results.values() if len(frame)]
    results = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["pool_id", "variant", "total_return", "oos_start", "oos_end", "bars"])
    problems, checked = comparable_baselines(results)
    table = portfolio_table(results)
    yield Output(table, metadata={"pools": checked, "summary": MetadataValue.md(portfolio_markdown(table))})
    yield AssetCheckResult(check_name="comparable_baselines", passed=not problems, severity=AssetCheckSeverity.ERROR,
                           metadata={"pools_checked": checked, "problems": MetadataValue.json(problems[:50])})

