"""Lineage stage 5 - backtest results: per pool, the Q50 strategy in real NautilusTrader engines
beside its yardsticks on the same bars and costs, on the out-of-sample span only; the trading
history of its fills (the same step). The portfolio across pools is
:mod:`q50_assets.lineage.portfolio.asset`.

Glue only: the stage is :func:`q50_assets.lineage.backtest.step.run_pool_stage`, the trading
history rows :func:`q50_assets.lineage.backtest.step.history_rows`.
"""

import base64

from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetOut,
    MetadataValue,
    Output,
    ResourceParam,
    multi_asset,
)

from q50_assets.lineage.backtest.step import (
    PoolBacktest,
    metrics_markdown,
)
from q50_assets.lineage.common.batch import (PoolChecks, add_pool_metadata, blocked_metadata, fallback_metadata,
                                             pool_check_spec, progress_callback)
from q50_assets.lineage.common.costs import SOURCE_FALLBACK, FallbackReserve
from q50_assets.lineage.common.conditions import eager_after
from q50_assets.lineage.common.gate import Blocked
from q50_assets.lineage.common.partitions import pool_partitions
from q50_assets.lineage.common.ports import CollectorSource, ProjectTableStore
from q50_assets.lineage.ohlcv.asset import OHLCV_ASSET
from q50_assets.lineage.regimes.asset import REGIMES_ASSET
from q50_assets.lineage.signals.asset import SIGNALS_ASSET
from q50_assets.lineage.trading_history.step import TRADING_HISTORY_ASSET, history_step, reconcile
from q50_assets.lineage.common.provenance import provenance_metadata
from q50_assets.settings import Settings
from q50_assets.lineage.backtest.step import VERIFIED, backtest_step

BACKTEST_ASSET = "backtest_results"


def signals_fallback_usd(signals) -> float | None:
    """The assumed reserve a pool's stored signals were priced with (their rows sourced
    ``fallback``), or None where none of them used it."""
    if signals is None or "reserve_source" not in getattr(signals, "columns", ()):
        return None
    assumed = signals.loc[signals["reserve_source"] == SOURCE_FALLBACK, "reserve_usd"].dropna().unique()
    return float(assumed[0]) if len(assumed) == 1 else (float("nan") if len(assumed) else None)


def _backtest_metadata(result: PoolBacktest, settings: Settings, rows_ignored: int, png: bytes | None,
                       fallback: FallbackReserve | None) -> dict:
    if result.status not in VERIFIED:
        return {"pool_id": result.pool_id, "status": result.status, "reason": result.reason}
    m = result.metrics
    perm = result.permutation
    fallback = fallback.usd if fallback is not None else None
    in_signals = signals_fallback_usd(result.signals)
    return {
        "pool_id": result.pool_id,
        "status": result.status,
        **({"reason": result.reason} if result.reason else {}),
        "backtest_run_id": result.backtest_run_id,
        "signal_source": settings.nautilus_trader.strategy_config.signal_source,
        "oos_start": MetadataValue.text(str(result.oos_start)),
        "oos_grid_bars": len(result.bar_returns),
        **{f"{v}_total_return": MetadataValue.float(float(m.loc[v, "total_return"])) for v in m.index},
        "q50_trades": int(m.loc["q50", "trades"]),
        "q50_turnover": MetadataValue.float(float(m.loc["q50", "turnover"])),
        "q50_mean_holding_bars": MetadataValue.float(float(m.loc["q50", "mean_holding_bars"])),
        "q50_orders_expired": int(m.loc["q50", "orders_expired"]),
        "q50_cost_drag": MetadataValue.float(float(m.loc["q50", "cost_drag"])),
        "q50_horizon_trades": int(m.loc["q50_horizon", "trades"]),
        "q50_horizon_cost_drag": MetadataValue.float(float(m.loc["q50_horizon", "cost_drag"])),
        "q50_horizon_permutation_p_value": MetadataValue.float(float(m.loc["q50_horizon", "permutation_p_value"])),
        "permutation_p_value": MetadataValue.float(float(perm["p_value"])),
        "permutation_draws": int(perm["draws"]),
        "reserve_fallback_share": MetadataValue.float(float(result.reserve["fallback_share"])),
        "reserve_sources": MetadataValue.json(result.reserve["sources"]),
        "reserve_observations": int(result.reserve["observations"]),
        "reserve_rows_ignored": int(rows_ignored),
        "fallback_reserve_usd": MetadataValue.float(float(fallback)) if fallback is not None else "none (no impact)",
        # What the signals of this pool assumed: equal to the above unless the collector's
        # reserves changed between the two runs (then the decisions and the fills disagree).
        "signals_fallback_reserve_usd": (MetadataValue.float(in_signals) if in_signals is not None
                                         else "not used by the signals"),
        "rows_written": len(m) if result.status == "ok" else 0,
        "summary": MetadataValue.md(metrics_markdown(m)),
        "equity_curve": MetadataValue.md(
            f"![growth of 1 USD](data:image/png;base64,{base64.b64encode(png).decode()})"),
    }


@multi_asset(
    outs={
        BACKTEST_ASSET: AssetOut(
            io_manager_key="q50_tables", group_name="backtest", kinds={"nautilustrader"},
            automation_condition=eager_after(SIGNALS_ASSET, BACKTEST_ASSET),
            description="Per pool: the Q50 strategy in NautilusTrader BacktestEngines (decisions bar by bar from "
            "the signal and regime known at each close, sized and charged by one cost model: fee + "
            "constant-product impact at the pool's liquidity at the time; fills one or more bars later), beside "
            "the same decisions at zero cost (gross: what costs took), filled at the close, the assumed reserve "
            "scaled by each reserve_sensitivity factor; the horizon rule q50_horizon (expected return over the holding horizon net of the "
            "round trip) and its zero-cost replay; buy & hold at full and at each rule's own exposure, and cash; "
            "per-bar returns on the full time grid out of sample; a permutation null of each rule's timing. Stored in q50_backtest_results per backtest run (history kept; the "
            "null's draws on the q50 row); equity picture and table in metadata."),
        TRADING_HISTORY_ASSET: AssetOut(
            io_manager_key="q50_tables", group_name="backtest", kinds={"sql"},
            automation_condition=eager_after(SIGNALS_ASSET, BACKTEST_ASSET),
            description="Every fill of the Q50 strategy's Nautilus backtest (side, quantity, price, fee, impact), "
            "when its order was decided, what the cost model expected it to cost and at which liquidity, the "
            "signal, regime and target that decided it and the feature vector behind it (the collector's or the "
            "project's, feature_vector_table says which); keyed by the backtest run id, replaced per run in one "
            "transaction. Written by the same step as backtest_results (the fills are never stored twice)."),
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
                     collector: ResourceParam[CollectorSource],
                     project_tables: ResourceParam[ProjectTableStore], signal_db: ResourceParam[ProjectTableStore],
                     settings: ResourceParam[Settings]):
    pool_ids = list(context.partition_keys)
    run_id = context.run.run_id
    batch = backtest_step(ohlcv_bars, q50_signals, regime_labels, collector, settings, run_id,
                          signal_tables=signal_db, progress=progress_callback(context, BACKTEST_ASSET, len(pool_ids)))
    results = batch.results
    histories = history_step(results, collector, settings.nautilus_trader.risk_management.use_existing_feature_vectors)
    checks = PoolChecks(context)
    for pool_id in pool_ids:
        result = results[pool_id]
        if isinstance(result, Blocked):
            add_pool_metadata(context, pool_id, blocked_metadata(result), BACKTEST_ASSET)
            add_pool_metadata(context, pool_id, blocked_metadata(result), TRADING_HISTORY_ASSET)
            continue
        if result.status not in VERIFIED:
            context.log.warning(f"pool {pool_id}: {result.status}: {result.reason}")
        add_pool_metadata(context, pool_id, _backtest_metadata(result, settings, batch.reserve_rows_ignored.get(pool_id, 0),
                                                               batch.pictures.get(pool_id), batch.fallback), BACKTEST_ASSET)
        used = signals_fallback_usd(result.signals)
        if batch.fallback is not None and used is not None and used != batch.fallback.usd:
            context.log.warning(f"pool {pool_id}: its signals assumed a reserve of {used} USD, this backtest "
                                f"{batch.fallback.usd} USD: the collector's reserves changed between the two runs")
        for name, (passed, metadata) in batch.outcomes.get(pool_id, {}).items():
            checks.add(BACKTEST_ASSET, name, pool_id, passed, metadata)
    yield Output(results, output_name=BACKTEST_ASSET,
                 metadata={"pools": len(pool_ids), "backtest_run_id": run_id,
                           "pools_ok": sum(not isinstance(r, Blocked) and r.status == "ok" for r in results.values()),
                           **fallback_metadata(batch.fallback),
                           **provenance_metadata(settings, run_id=run_id)})
    yield Output(histories, output_name=TRADING_HISTORY_ASSET, metadata={"backtest_run_id": run_id})
    # The history is in the table now (the IO manager wrote it when the output was yielded):
    # reconcile what the database holds with Nautilus' own fills report.
    written = {p: h for p, h in histories.items() if not isinstance(h, Blocked)}
    stored = project_tables.trading_history_many({p: h.backtest_run_id for p, h in written.items()}) if written else {}
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
            "fees_usd": MetadataValue.float(got["fees"]),
            "feature_vectors": MetadataValue.json(history.pointers)}, TRADING_HISTORY_ASSET)
        checks.add(TRADING_HISTORY_ASSET, "reconciles_with_fills", pool_id, ok,
                   {"stored": MetadataValue.json(got), "nautilus_fills": MetadataValue.json(expected)})
    yield from checks.events()

