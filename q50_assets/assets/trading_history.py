"""Lineage stage 6 - trading history: every Nautilus order of the Q50 strategy's backtest with its
fills, written to ``q50_trading_history`` with the signal, regime, target and feature vector that
decided it. A re-run of the same backtest run replaces that run's rows in one transaction.
"""


import math

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    MetadataValue,
    Output,
    ResourceParam,
    asset,
)

from q50_assets.assets.backtest import PoolBacktest
from q50_assets.assets.partitions import pool_partitions
from q50_assets.research.bars import TIMEFRAME_SECONDS
from q50_assets.resources.database import CollectorDatabase
from q50_assets.settings import Settings

TRADING_HISTORY_ASSET = "q50_trading_history"


def history_rows(result: PoolBacktest, bar: pd.Timedelta) -> pd.DataFrame:
    """One row per fill of the strategy (variant q50), from Nautilus' fills and order reports.

    The decision behind a fill is the one of the bar whose close is the fill time (orders are
    submitted and filled at that close); a fill with no decision at that bar (the strategy going
    flat where no signal exists) keeps the signal fields empty rather than borrowing another bar's.
    """
    outcome = result.outcomes["q50"]
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


@asset(
    name=TRADING_HISTORY_ASSET,
    partitions_def=pool_partitions,
    group_name="backtest",
    kinds={"sql"},
    check_specs=[
        AssetCheckSpec("reconciles_with_fills", asset=TRADING_HISTORY_ASSET, blocking=True,
                       description="The rows stored for this backtest run equal Nautilus' fills report: count, "
                       "total quantity, total fees."),
    ],
    description="Every order of the Q50 strategy's Nautilus backtest with its fill (side, quantity, price, fee, "
    "impact), the signal, regime and target that decided it and the feature vector behind it; keyed by the "
    "backtest run id, replaced per run in one transaction.",
)
def q50_trading_history(
    context: AssetExecutionContext,
    backtest_results: PoolBacktest,
    collector_db: CollectorDatabase,
    settings: ResourceParam[Settings],
):
    pool_id = context.partition_key
    if backtest_results.status != "ok":
        yield Output(pd.DataFrame(), metadata={"pool_id": pool_id, "status": backtest_results.status,
                                               "reason": backtest_results.reason})
        yield AssetCheckResult(check_name="reconciles_with_fills", passed=True,
                               metadata={"skipped": backtest_results.reason})
        return
    bar = pd.Timedelta(seconds=TIMEFRAME_SECONDS[settings.timeframe])
    rows = history_rows(backtest_results, bar)
    # feature_vector_id: the collector's pool_feature_vectors row of the decision's bar when
    # risk_management.use_existing_feature_vectors finds one, else ours; feature_vector_table says which.
    rows, pointers = collector_db.with_feature_vector_pointers(
        pool_id, rows, bar, settings.nautilus_trader.risk_management.use_existing_feature_vectors)
    run_id = backtest_results.backtest_run_id
    written = collector_db.replace_trading_history(run_id, pool_id, rows)

    # Reconcile what the database now holds with Nautilus' own fills report.
    stored = collector_db.trading_history(run_id, pool_id)
    outcome = backtest_results.outcomes["q50"]
    fills = outcome.fills
    expected = {
        "count": 0 if fills is None else len(fills),
        "quantity": 0.0 if fills is None or fills.empty else float(fills["last_qty"].astype(float).sum()) * outcome.lot_tokens,
        "fees": float(outcome.fees_paid),  # sum of the commissions in Nautilus' fills report
    }
    got = {"count": len(stored), "quantity": float(stored["quantity"].sum()) if len(stored) else 0.0,
           "fees": float(stored["fee"].sum()) if len(stored) else 0.0}
    ok = (got["count"] == expected["count"]
          and math.isclose(got["quantity"], expected["quantity"], rel_tol=1e-9, abs_tol=1e-9)
          and math.isclose(got["fees"], expected["fees"], rel_tol=1e-9, abs_tol=1e-6))
    yield Output(
        rows,
        metadata={"pool_id": pool_id, "backtest_run_id": run_id, "rows_written": written,
                  "buys": int((rows["side"] == "BUY").sum()) if len(rows) else 0,
                  "sells": int((rows["side"] == "SELL").sum()) if len(rows) else 0,
                  "fees_usd": MetadataValue.float(got["fees"]),
                  "feature_vectors": MetadataValue.json(pointers)},
    )
    yield AssetCheckResult(check_name="reconciles_with_fills", passed=ok, severity=AssetCheckSeverity.ERROR,
                           metadata={"pool_id": pool_id, "stored": MetadataValue.json(got),
                                     "nautilus_fills": MetadataValue.json(expected)})
