"""Lineage stage 6 - trading history: every Nautilus order of the Q50 strategy's backtest with its
fills, written to ``q50_trading_history`` with the signal, regime, target and feature vector that
decided it. A re-run of the same backtest run replaces that run's rows in one transaction.

The asset is materialized by the backtest step (``assets/backtest.py``): the fills come straight
from the engines of that step and are stored once, in the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from q50_assets.stages.gate import Blocked

if TYPE_CHECKING:
    from q50_assets.assets.backtest import PoolBacktest
    from q50_assets.research.backtest import BacktestOutcome

TRADING_HISTORY_ASSET = "q50_trading_history"


@dataclass(frozen=True)
class PoolTradingHistory:
    """One pool's rows of one backtest run (what the table IO manager writes)."""

    backtest_run_id: str
    rows: pd.DataFrame


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


def history_step(results: dict, bar: pd.Timedelta) -> dict[str, PoolTradingHistory | Blocked]:
    """Per pool of a batch, the Q50 strategy's fills as history rows; a pool without a verified
    backtest has none (blocked, disabled, no out-of-sample signal, or a failed backtest rule)."""
    out: dict[str, PoolTradingHistory | Blocked] = {}
    for pool_id, result in results.items():
        if isinstance(result, Blocked):
            out[pool_id] = result
        elif result.status != "ok":
            out[pool_id] = Blocked(pool_id, "backtest_results", f"no verified backtest ({result.status}: {result.reason})")
        else:
            out[pool_id] = PoolTradingHistory(result.backtest_run_id, history_rows(result, bar))
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
