"""Lineage stage 6 - trading history: every fill of the Q50 strategy's Nautilus backtest, written to
``q50_trading_history`` with when its order was decided, what the cost model expected it to cost
and at which liquidity, the signal, regime and target that decided it and the feature vector
behind it. A re-run of the same backtest run replaces that run's rows in one transaction.

The asset is materialized by the backtest step (``assets/backtest.py``): the fills come straight
from the engines of that step and are stored once, in the table. The rows are
:func:`q50_assets.lineage.backtest.step.history_rows`; their feature-vector pointers come from the
collector's tables (:meth:`CollectorSource.with_feature_vector_pointers`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd

from q50_assets.lineage.backtest.step import history_rows
from q50_assets.lineage.common.gate import Blocked

if TYPE_CHECKING:
    from q50_assets.lineage.backtest.engine import BacktestOutcome
    from q50_assets.lineage.common.ports import CollectorSource

TRADING_HISTORY_ASSET = "q50_trading_history"


@dataclass(frozen=True)
class PoolTradingHistory:
    """One pool's rows of one backtest run (what the table IO manager writes) and where their
    feature-vector pointers point (``pointers``: the summary of ``with_feature_vector_pointers``)."""

    backtest_run_id: str
    rows: pd.DataFrame
    pointers: dict = field(default_factory=dict)


def history_step(results: dict, db: CollectorSource, use_collector_vectors: bool) -> dict[str, PoolTradingHistory | Blocked]:
    """Per pool of a batch, the Q50 strategy's fills as history rows, each pointing at the feature
    vector behind its decision (the collector's ``pool_feature_vectors`` row of the deciding bar when
    ``use_collector_vectors`` finds one, else the project's; ``feature_vector_table`` says which).
    A pool without a verified backtest has none (blocked, disabled, unavailable, no out-of-sample
    signal, or a failed backtest rule)."""
    out: dict[str, PoolTradingHistory | Blocked] = {}
    for pool_id, result in results.items():
        if isinstance(result, Blocked):
            out[pool_id] = result
        elif result.status != "ok":
            out[pool_id] = Blocked(pool_id, "backtest_results", f"no verified backtest ({result.status}: {result.reason})")
        else:
            rows, pointers = db.with_feature_vector_pointers(pool_id, history_rows(result), use_collector_vectors)
            out[pool_id] = PoolTradingHistory(result.backtest_run_id, rows, pointers)
    return out


def reconcile(stored: pd.DataFrame, outcome: BacktestOutcome) -> tuple[bool, dict, dict]:
    """The rows the database holds for a backtest run against Nautilus' own fills report
    (count, total quantity in tokens, total fees): (equal, stored figures, Nautilus' figures)."""
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
    return ok, got, expected
