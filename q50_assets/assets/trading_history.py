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

from q50_assets.assets.partitions import pool_partitions
from q50_assets.research.backtest_stage import PoolBacktest, history_rows
from q50_assets.resources.database import CollectorDatabase
from q50_assets.settings import Settings

TRADING_HISTORY_ASSET = "q50_trading_history"


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
    description="Every fill of the Q50 strategy's Nautilus backtest (side, quantity, price, fee, impact), when "
    "its order was decided, what the cost model expected it to cost and at which liquidity, the signal, regime "
    "and target that decided it and the feature vector behind it; keyed by the backtest run id, replaced per "
    "run in one transaction.",
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
    rows = history_rows(backtest_results)
    # feature_vector_id: the collector's pool_feature_vectors row of the deciding signal's bar when
    # risk_management.use_existing_feature_vectors finds one, else ours; feature_vector_table says which.
    rows, pointers = collector_db.with_feature_vector_pointers(
        pool_id, rows, settings.nautilus_trader.risk_management.use_existing_feature_vectors)
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
