"""Stage 3a - the Q50 model: walk-forward LightGBM quantile regression (q10/q50/q90) on features
pooled across every pool in the QLib store, plus the live model for bars newer than the run.

The walk-forward logic is :mod:`q50_assets.research.q50_model`; every prediction comes from a
model trained on labels fully known before the prediction time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from q50_assets.research.q50_model import (
    QUANTILE_COLUMNS,
    QUANTILES,
    LiveQ50Model,
    WalkForwardConfig,
    WalkForwardResult,
    fit_live_model,
    make_labels,
    pinball_loss,
    walk_forward,
)
from q50_assets.stages.features import FeatureConfig

STAGE = "q50_model"


@dataclass(frozen=True)
class ModelConfig:
    walk_forward: WalkForwardConfig
    features: FeatureConfig
    coverage_tolerance: float = 0.05


@dataclass
class TrainedQ50Model:
    """The model stage's output: the walk-forward result, the live model for bars that close
    after the training run, and the run that produced both."""

    run_id: str
    result: WalkForwardResult
    live: LiveQ50Model | None = None
    panel_counts: dict | None = None
    seconds: float | None = None


def load_training_panel(store, config: ModelConfig) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Pooled features and labels from the QLib store (every pool it holds): real, post-warm-up bars only."""
    pool_ids = sorted(e["pool_id"] for e in store.mapping().values())
    expressions = config.features.expressions
    panel = store.features(pool_ids, {**expressions, "close": "$close", "filled": "$filled"})
    labels = make_labels(panel["close"], config.walk_forward.horizon_bars, config.features.bar_seconds)

    # Each pool's grid is contiguous from its first bar: the position in it is bars since start.
    bars_in = panel.groupby(level="pool_id").cumcount().to_numpy()
    warmup = bars_in < config.features.warmup
    real = panel["filled"].to_numpy() == 0
    usable = real & ~warmup
    counts = {
        "pools": len(pool_ids),
        "grid_rows": len(panel),
        "filled_rows_excluded": int((~real).sum()),
        "warmup_rows_excluded": int((real & warmup).sum()),
        "usable_rows": int(usable.sum()),
    }
    return panel.loc[usable, list(expressions)], labels.loc[usable], counts


def train(store, config: ModelConfig, run_id: str) -> TrainedQ50Model:
    """Every walk-forward fold and the live model on the store's pooled panel."""
    started = time.perf_counter()
    features, labels, counts = load_training_panel(store, config)
    result = walk_forward(features, labels, config.walk_forward)
    live = fit_live_model(features, labels, config.walk_forward)
    return TrainedQ50Model(run_id=run_id, result=result, live=live, panel_counts=counts,
                           seconds=round(time.perf_counter() - started, 2))


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


def oos_summary(result: WalkForwardResult) -> dict[str, float]:
    """Pinball loss and coverage per quantile over every OOS prediction with a known label."""
    known = result.predictions.dropna(subset=["label"])
    out = {"oos_rows": float(len(known))}
    for q, col in zip(QUANTILES, QUANTILE_COLUMNS):
        y, p = known["label"].to_numpy(), known[col].to_numpy()
        out[f"pinball_{col}"] = pinball_loss(y, p, q) if len(known) else float("nan")
        out[f"coverage_{col}"] = float(np.mean(y <= p)) if len(known) else float("nan")
    return out


def unordered_predictions(predictions: pd.DataFrame) -> pd.Series:
    """True for prediction rows that are non-finite or not q10 <= q50 <= q90 (after repair)."""
    quantiles = predictions[list(QUANTILE_COLUMNS)]
    # A NaN compares False, so non-finite predictions are flagged too.
    return ~((predictions["q10"] <= predictions["q50"]) & (predictions["q50"] <= predictions["q90"])
             & np.isfinite(quantiles).all(axis=1))


@dataclass(frozen=True)
class CoverageCheck:
    passed: bool
    coverage_q10: float
    coverage_q90: float
    accepted_q10: tuple[float, float]
    accepted_q90: tuple[float, float]
    oos_labelled_rows: int


def coverage_check(summary: dict[str, float], tolerance: float) -> CoverageCheck:
    n = int(summary["oos_rows"])
    lo10, hi10 = coverage_bounds(0.1, n, tolerance)
    lo90, hi90 = coverage_bounds(0.9, n, tolerance)
    ok = n > 0 and lo10 <= summary["coverage_q10"] <= hi10 and lo90 <= summary["coverage_q90"] <= hi90
    return CoverageCheck(bool(ok), float(summary["coverage_q10"]), float(summary["coverage_q90"]), (lo10, hi10),
                         (lo90, hi90), n)
