"""What the lineage wrote to the project's tables, in a form two databases can be compared by:
ids, run ids and creation times (which differ between any two runs) replaced by what they point
at. Used to show that the incremental path (sensor ticks, retrains at fold boundaries) and a run
from scratch on the same final database wrote the same rows."""

from __future__ import annotations

import pandas as pd
from sqlalchemy import Engine, select

from q50_assets.db.q50_models import (
    q50_backtest_results,
    q50_feature_vectors,
    q50_regime_labels,
    q50_signals,
    q50_trading_history,
)

# Differ between any two runs, by construction: ids from sequences, run ids, wall-clock times.
RUN_COLUMNS = {"id", "created_at", "model_run", "backtest_run_id", "feature_vector_id", "q50_feature_vector_id",
               "nautilus_order_id"}


def _read(engine: Engine, table) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.DataFrame([dict(r) for r in conn.execute(select(table)).mappings()],
                            columns=[c.name for c in table.columns])


def _vector_keys(engine: Engine) -> pd.DataFrame:
    vectors = _read(engine, q50_feature_vectors)
    return vectors.set_index("id")[["pool_id", "timestamp"]].rename(columns={"timestamp": "vector_bar"})


def _normalised(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    out = frame.drop(columns=[c for c in frame.columns if c in RUN_COLUMNS])
    for col in out.columns:
        if isinstance(out[col].dtype, pd.DatetimeTZDtype) or col in ("timestamp", "known_at", "filled_at",
                                                                      "decided_at", "oos_start", "oos_end"):
            out[col] = pd.to_datetime(out[col], utc=True)
    return out.sort_values(keys).reset_index(drop=True)


def lineage_tables(engine: Engine) -> dict[str, pd.DataFrame]:
    """Regimes, signals, each pool's latest backtest results and that backtest's trading history."""
    vectors = _vector_keys(engine)
    signals = _read(engine, q50_signals)
    # A signal points at the feature vector of its bar: compare the bar, not the id.
    signals["vector_bar"] = pd.to_datetime(signals["feature_vector_id"].map(vectors["vector_bar"]), utc=True)
    results = _read(engine, q50_backtest_results)
    latest = results.sort_values("id").groupby("pool_id")["backtest_run_id"].last()
    history = _read(engine, q50_trading_history)
    history = history[history["backtest_run_id"] == history["pool_id"].map(latest)]
    return {
        "q50_regime_labels": _normalised(_read(engine, q50_regime_labels), ["pool_id", "timeframe", "timestamp"]),
        "q50_signals": _normalised(signals, ["pool_id", "timeframe", "timestamp"]),
        "q50_backtest_results": _normalised(results[results["backtest_run_id"] == results["pool_id"].map(latest)],
                                            ["pool_id", "variant"]),
        "q50_trading_history": _normalised(history, ["pool_id", "timestamp", "side", "execution_status"]),
    }


def integrity_faults(engine: Engine) -> dict[str, int]:
    """Rows that should not exist: duplicated keys, history of a backtest run with no results."""
    signals = _read(engine, q50_signals)
    regimes = _read(engine, q50_regime_labels)
    history = _read(engine, q50_trading_history)
    runs = set(_read(engine, q50_backtest_results)["backtest_run_id"])
    key = ["pool_id", "timestamp", "side", "execution_status", "backtest_run_id"]
    return {
        "duplicate_signals": int(signals.duplicated(["pool_id", "timeframe", "timestamp"]).sum()),
        "duplicate_regimes": int(regimes.duplicated(["pool_id", "timeframe", "timestamp"]).sum()),
        "duplicate_history": int(history.duplicated(key).sum()),
        "orphan_history": int((~history["backtest_run_id"].isin(runs)).sum()),
    }


def differences(incremental: dict[str, pd.DataFrame], scratch: dict[str, pd.DataFrame],
                rtol: float = 0.0) -> dict[str, str]:
    """Per table, why the two differ ("" when they are equal: same rows, floats within ``rtol``)."""
    out = {}
    for name, a in incremental.items():
        b = scratch[name]
        try:
            pd.testing.assert_frame_equal(a, b, check_exact=rtol == 0.0, rtol=rtol or 1e-5, atol=0.0,
                                          check_dtype=False)
            out[name] = ""
        except AssertionError as exc:
            out[name] = f"{len(a)} rows against {len(b)}: {str(exc).splitlines()[:6]}"
    return out
