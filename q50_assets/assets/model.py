"""Lineage stage 3a - the Q50 model: walk-forward LightGBM quantile regression (q10/q50/q90)
on features pooled across every pool in the QLib store.

Glue only: the walk-forward logic is :mod:`q50_assets.research.q50_model`. Every prediction
comes from a model trained on labels fully known before the prediction time.
"""

import math
import time
from dataclasses import dataclass

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

from q50_assets.assets.features import FEATURES_ASSET, expressions_for
from q50_assets.research.bars import TIMEFRAME_SECONDS
from q50_assets.research.features import may_be_missing, warmup_bars
from q50_assets.research.q50_model import (
    QUANTILE_COLUMNS,
    QUANTILES,
    LiveQ50Model,
    WalkForwardConfig,
    WalkForwardResult,
    fit_live_model,
    make_labels,
    walk_forward,
)
from q50_assets.resources.qlib_store import QlibStore
from q50_assets.settings import Settings

MODEL_ASSET = "q50_model"


@dataclass
class TrainedQ50Model:
    """The model stage's output: the walk-forward result, the live model for bars that close
    after the training run, and the run that produced both."""

    run_id: str
    result: WalkForwardResult
    live: LiveQ50Model | None = None


def walk_forward_config(settings: Settings) -> WalkForwardConfig:
    m = settings.model
    return WalkForwardConfig(
        horizon_bars=m.horizon_bars,
        bar_seconds=TIMEFRAME_SECONDS[settings.timeframe],
        initial_train_bars=m.initial_train_bars,
        retrain_every_bars=m.retrain_every_bars,
        min_train_rows=m.min_train_rows,
        seed=m.seed,
        num_boost_round=m.num_boost_round,
    )


def load_training_panel(store: QlibStore, settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Pooled features and labels from the QLib store: real, post-warm-up bars only."""
    pool_ids = sorted(e["pool_id"] for e in store.mapping().values())
    expressions = expressions_for(settings)
    panel = store.features(pool_ids, {**expressions, "close": "$close", "filled": "$filled"})
    bar_seconds = TIMEFRAME_SECONDS[settings.timeframe]
    labels = make_labels(panel["close"], settings.model.horizon_bars, bar_seconds)

    # Each pool's grid is contiguous from its first bar: the position in it is bars since start.
    bars_in = panel.groupby(level="pool_id").cumcount().to_numpy()
    warmup = bars_in < warmup_bars(settings.nautilus_trader.strategy_config.regime_detection.macd_slow)
    real = panel["filled"].to_numpy() == 0
    usable = real & ~warmup
    counts = {
        "pools": len(pool_ids),
        "grid_rows": len(panel),
        "filled_rows_excluded": int((~real).sum()),
        "warmup_rows_excluded": int((real & warmup).sum()),
        "usable_rows": int(usable.sum()),
    }
    # Flow / collector features are missing outside their data: how many training rows have them.
    counts["rows_with_optional_features"] = {
        name: int(panel.loc[usable, name].notna().sum()) for name in expressions if may_be_missing(name)}
    return panel.loc[usable, list(expressions)], labels.loc[usable], counts


def coverage_bounds(quantile: float, n: int, tolerance: float) -> tuple[float, float]:
    """Accepted OOS coverage of a quantile: its level +- (tolerance + 3 binomial standard errors).

    Three standard errors cover sampling noise for n labelled rows; ``tolerance`` (default 5
    points) allows for the drift of hourly memecoin returns between training and test spans,
    which no fixed-distribution model tracks exactly. Beyond that the quantiles are not what
    they claim to be and prob_up/threshold built on them would mislead.
    """
    se = math.sqrt(quantile * (1 - quantile) / max(n, 1))
    margin = tolerance + 3 * se
    return quantile - margin, quantile + margin


def _folds_markdown(folds: pd.DataFrame, limit: int = 12) -> str:
    cols = ["fold", "boundary", "train_rows", "test_rows", "pinball_q10", "pinball_q50", "pinball_q90",
            "coverage_q10", "coverage_q90"]
    shown = folds[[c for c in cols if c in folds.columns]].tail(limit)
    header = "| " + " | ".join(shown.columns) + " |\n|" + "---|" * len(shown.columns) + "\n"
    rows = []
    for _, r in shown.iterrows():
        cells = []
        for v in r:
            cells.append(f"{v:.4f}" if isinstance(v, float) else str(v))
        rows.append("| " + " | ".join(cells) + " |")
    return header + "\n".join(rows)


def oos_summary(result: WalkForwardResult) -> dict[str, float]:
    """Pinball loss and coverage per quantile over every OOS prediction with a known label."""
    from q50_assets.research.q50_model import pinball_loss

    known = result.predictions.dropna(subset=["label"])
    out = {"oos_rows": float(len(known))}
    for q, col in zip(QUANTILES, QUANTILE_COLUMNS):
        y, p = known["label"].to_numpy(), known[col].to_numpy()
        out[f"pinball_{col}"] = pinball_loss(y, p, q) if len(known) else float("nan")
        out[f"coverage_{col}"] = float(np.mean(y <= p)) if len(known) else float("nan")
    return out


@asset(
    name=MODEL_ASSET,
    deps=[AssetKey(FEATURES_ASSET)],
    group_name="model",
    kinds={"lightgbm"},
    check_specs=[
        AssetCheckSpec(
            "quantiles_ordered",
            asset=MODEL_ASSET,
            blocking=True,
            description="Every prediction finite with q10 <= q50 <= q90 after repair; metadata counts "
            "the rows whose raw quantiles crossed and needed the repair.",
        ),
        AssetCheckSpec(
            "oos_coverage",
            asset=MODEL_ASSET,
            blocking=False,
            description="Out-of-sample share of labels at or below q10 and q90 within their level +- "
            "(model.coverage_tolerance + 3 binomial standard errors).",
        ),
    ],
    description="Walk-forward LightGBM quantile regression at 0.1/0.5/0.9 on features pooled across "
    "pools; expanding window, retrained every model.retrain_every_bars, labels embargoed by the horizon. "
    "Output: out-of-sample predictions per pool and bar, plus per-fold pinball loss and coverage.",
)
def q50_model(context: AssetExecutionContext, qlib_store: QlibStore, settings: ResourceParam[Settings]):
    started = time.perf_counter()
    features, labels, counts = load_training_panel(qlib_store, settings)
    config = walk_forward_config(settings)
    result = walk_forward(features, labels, config)
    live = fit_live_model(features, labels, config)
    elapsed = time.perf_counter() - started

    preds = result.predictions
    quantiles = preds[list(QUANTILE_COLUMNS)]
    # A NaN compares False, so non-finite predictions fail this check too.
    bad_rows = ~((preds["q10"] <= preds["q50"]) & (preds["q50"] <= preds["q90"]) & np.isfinite(quantiles).all(axis=1))
    ordered = not bool(bad_rows.any())
    summary = oos_summary(result)
    n = int(summary["oos_rows"])
    tol = settings.model.coverage_tolerance
    lo10, hi10 = coverage_bounds(0.1, n, tol)
    lo90, hi90 = coverage_bounds(0.9, n, tol)
    cov_ok = n > 0 and lo10 <= summary["coverage_q10"] <= hi10 and lo90 <= summary["coverage_q90"] <= hi90
    trained = result.folds[~result.folds["skipped"]]

    yield Output(
        TrainedQ50Model(run_id=context.run.run_id, result=result, live=live),
        metadata={
            "live_model_trained_until": MetadataValue.text(str(live.trained_until) if live else "none"),
            "live_model_train_rows": live.train_rows if live else 0,
            **counts,
            "folds": len(trained),
            "folds_skipped": int(result.folds["skipped"].sum()),
            "predictions": len(preds),
            "rows_without_prediction": result.rows_without_prediction,
            "crossed_repaired": result.crossed_repaired,
            **{k: MetadataValue.float(float(v)) for k, v in summary.items() if k != "oos_rows"},
            "oos_labelled_rows": n,
            "seconds": round(elapsed, 2),
            "folds_table": MetadataValue.md(_folds_markdown(result.folds)),
        },
    )
    yield AssetCheckResult(
        check_name="quantiles_ordered",
        passed=ordered,
        severity=AssetCheckSeverity.ERROR,
        metadata={"predictions": len(preds), "crossed_repaired": result.crossed_repaired,
                  "bad_rows": int(bad_rows.sum()),
                  "first_bad": MetadataValue.json([str(i) for i in preds.index[bad_rows][:10]])},
    )
    yield AssetCheckResult(
        check_name="oos_coverage",
        passed=bool(cov_ok),
        severity=AssetCheckSeverity.WARN,
        metadata={
            "coverage_q10": MetadataValue.float(float(summary["coverage_q10"])),
            "coverage_q90": MetadataValue.float(float(summary["coverage_q90"])),
            "accepted_q10": MetadataValue.text(f"[{lo10:.3f}, {hi10:.3f}]"),
            "accepted_q90": MetadataValue.text(f"[{lo90:.3f}, {hi90:.3f}]"),
            "oos_labelled_rows": n,
        },
    )
