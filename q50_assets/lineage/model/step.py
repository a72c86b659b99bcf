"""Stage 3a - the Q50 model: walk-forward LightGBM quantile regression (q10/q50/q90) on features
pooled across every pool in the QLib store, q10/q90 recalibrated past-only, plus the live model
(the last fold's model) for bars newer than the run that fall in that fold; and the evidence a
researcher needs to trust it (skill over a naive forecaster, rank IC, coverage before and after
recalibration, reliability).

The walk-forward logic is :mod:`q50_assets.lineage.model.walk_forward`, the recalibration
:mod:`q50_assets.lineage.model.calibration`, the evidence :mod:`q50_assets.lineage.model.evaluation`; every
prediction comes from a model trained on labels fully known before the prediction time.
"""

from __future__ import annotations

import math
from collections.abc import Collection
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pydantic import ConfigDict

from q50_assets.settings import CoverageSettings, Settings
from q50_assets.lineage.model.calibration import CalibrationConfig
from q50_assets.lineage.model.evaluation import ModelEvidence, NaiveConfig, model_evidence
from q50_assets.lineage.features.formulas import may_be_missing
from q50_assets.lineage.model.walk_forward import (
    QUANTILE_COLUMNS,
    QUANTILES,
    LiveQ50Model,
    WalkForwardConfig,
    WalkForwardResult,
    calibrate_live_model,
    calibrate_walk_forward,
    live_model,
    make_labels,
    pinball_loss,
    walk_forward,
)
from q50_assets.lineage.common.uncertainty import BootstrapConfig
from q50_assets.lineage.features.step import FeatureConfig
from q50_assets.lineage.common.ports import CollectorSource, FeatureStore

STAGE = "q50_model"


class ModelConfig(CoverageSettings):
    """Everything the model stage reads: the walk-forward (whose label_offset_bars is the
    backtest's fill latency), the feature set, the recalibration, the naive yardstick and the
    bootstrap of its evidence; each built from its own settings keys."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    walk_forward: WalkForwardConfig
    features: FeatureConfig
    calibration: CalibrationConfig = CalibrationConfig()
    naive: NaiveConfig = NaiveConfig()
    bootstrap: BootstrapConfig = BootstrapConfig()

    @classmethod
    def of(cls, settings: Settings) -> "ModelConfig":
        return cls(walk_forward=WalkForwardConfig.of(settings), features=FeatureConfig.of(settings),
                   coverage_tolerance=settings.model.coverage_tolerance, calibration=CalibrationConfig.of(settings),
                   naive=NaiveConfig.of(settings), bootstrap=BootstrapConfig.of(settings))


class ModelBlockedError(RuntimeError):
    """The model run failed a blocking check: nothing downstream may use its quantiles."""


@dataclass
class TrainedQ50Model:
    """The model stage's output: the walk-forward result (q10/q90 recalibrated), the live model
    (its last fold's, for bars newer than the training run that fall in that fold's window), and
    the run that produced both.

    ``blocked_reason`` is set when a blocking check of the run failed. Dagster stops the run's
    downstream steps, but a later run (a sensor's refresh) would still load this output, so
    consumers call :meth:`require_usable` first.
    """

    run_id: str
    result: WalkForwardResult
    live: LiveQ50Model | None = None
    blocked_reason: str = ""
    panel_counts: dict | None = None
    seconds: float | None = None
    evidence: ModelEvidence | None = None  # skill, coverage, reliability (the report shows them again)
    evidence_seconds: float | None = None

    def require_usable(self) -> None:
        if self.blocked_reason:
            raise ModelBlockedError(f"q50_model run {self.run_id} failed a blocking check ({self.blocked_reason}); "
                                    "no signals are produced from it: retrain after fixing the cause")


def load_training_panel(store, config: ModelConfig, in_collector: Collection[str] | None = None
                        ) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Pooled features and labels from the QLib store (every pool it holds that the collector still
    has bars of, ``in_collector``; None: every pool): real, post-warm-up bars only. Labels start
    ``walk_forward.label_offset_bars`` after each bar's close, where a delayed strategy's fill does
    (make_labels). A pool gone from the collector leaves training and is named in the counts."""
    stored = sorted(e["pool_id"] for e in store.mapping().values())
    current = set(in_collector) if in_collector is not None else set(stored)
    pool_ids = [p for p in stored if p in current]
    gone = [p for p in stored if p not in current]
    expressions = config.features.expressions
    panel = store.features(pool_ids, {**expressions, "close": "$close", "filled": "$filled"})
    walk = config.walk_forward
    labels = make_labels(panel["close"], walk.horizon_bars, config.features.bar_seconds,
                         offset_bars=walk.label_offset_bars)

    # Each pool's grid is contiguous from its first bar: the position in it is bars since start.
    bars_in = panel.groupby(level="pool_id").cumcount().to_numpy()
    warmup = bars_in < config.features.warmup
    real = panel["filled"].to_numpy() == 0
    usable = real & ~warmup
    counts = {
        "pools": len(pool_ids),
        "pools_gone_from_collector": len(gone),
        "pools_gone_from_collector_listed": gone[:20],
        "grid_rows": len(panel),
        "filled_rows_excluded": int((~real).sum()),
        "warmup_rows_excluded": int((real & warmup).sum()),
        "usable_rows": int(usable.sum()),
    }
    # Flow / collector features are missing outside their data: how many training rows have them.
    counts["rows_with_optional_features"] = {
        name: int(panel.loc[usable, name].notna().sum()) for name in expressions if may_be_missing(name)}
    return panel.loc[usable, list(expressions)], labels.loc[usable], counts


def train_q50_model(features: pd.DataFrame, labels: pd.DataFrame, config: ModelConfig, run_id: str) -> TrainedQ50Model:
    """The model stage's work, for the asset and for anything else that trains it (benchmarks):
    walk-forward, past-only recalibration of each fold's q10/q90, and the live model = the last
    fold's boosters with that fold's offsets (no live model when the last fold was skipped or its
    offsets had too little evidence)."""
    raw = walk_forward(features, labels, config.walk_forward)
    result = calibrate_walk_forward(raw, labels, config.calibration)
    live = live_model(raw, config.walk_forward)
    if live is not None:
        live = calibrate_live_model(live, raw.predictions, labels, config.calibration)
    return TrainedQ50Model(run_id=run_id, result=result, live=live)


def train(store, config: ModelConfig, run_id: str, in_collector: Collection[str] | None = None
          ) -> tuple[TrainedQ50Model, pd.DataFrame]:
    """The store's pooled panel trained on (:func:`train_q50_model`); returns the model (with the
    panel's counts and the seconds it took) and the panel's labels (for the evidence)."""
    started = time.perf_counter()
    features, labels, counts = load_training_panel(store, config, in_collector)
    trained = train_q50_model(features, labels, config, run_id)
    trained.panel_counts = counts
    trained.seconds = round(time.perf_counter() - started, 2)
    return trained, labels


def evidence(trained: TrainedQ50Model, labels: pd.DataFrame, config: ModelConfig) -> ModelEvidence | None:
    """The model's out-of-sample evidence against the past-only naive forecaster (None when no
    prediction has a known label)."""
    preds = trained.result.predictions
    if not len(preds.dropna(subset=["label"])):
        return None
    return model_evidence(preds, labels, naive=config.naive, bootstrap=config.bootstrap)


def coverage_bounds(quantile: float, n: int, tolerance: float) -> tuple[float, float]:
    """Accepted OOS coverage of a recalibrated quantile: its level +- (tolerance + 3 binomial
    standard errors).

    Three standard errors cover sampling noise for n labelled rows; ``tolerance`` (default 2
    points) allows for what a past-only recalibration cannot foresee (the drift between the
    week it learns from and the day it is applied to). Beyond that the quantiles are not what
    they claim to be and prob_up, the threshold and Kelly sizing built on them would mislead.
    """
    se = math.sqrt(quantile * (1 - quantile) / max(n, 1))
    margin = tolerance + 3 * se
    return quantile - margin, quantile + margin


def oos_summary(result: WalkForwardResult) -> dict[str, float]:
    """Pinball loss and coverage per quantile over every OOS prediction with a known label; for a
    recalibrated result also of the model's raw q10/q90 on the same rows (``*_raw_*``)."""
    known = result.predictions.dropna(subset=["label"])
    out = {"oos_rows": float(len(known))}
    columns = [(q, col) for q, col in zip(QUANTILES, QUANTILE_COLUMNS)]
    columns += [(q, f"{col}_raw") for q, col in zip(QUANTILES, QUANTILE_COLUMNS) if f"{col}_raw" in known.columns]
    for q, col in columns:
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
    nothing_predicted: bool
    coverage_raw_q10: float = float("nan")  # the model's own q10/q90 before recalibration, same rows
    coverage_raw_q90: float = float("nan")


def coverage_check(summary: dict[str, float], tolerance: float, nothing_predicted: bool = False) -> CoverageCheck:
    """The recalibrated q10/q90 coverage within its bounds. ``nothing_predicted`` (no prediction
    and no live model, e.g. pools too short for a first fold): nothing is claimed, nothing to
    check, and no signal can come from it. Predictions without a known label cannot be verified: fail."""
    n = int(summary["oos_rows"])
    lo10, hi10 = coverage_bounds(0.1, n, tolerance)
    lo90, hi90 = coverage_bounds(0.9, n, tolerance)
    ok = nothing_predicted or (n > 0 and lo10 <= summary["coverage_q10"] <= hi10
                               and lo90 <= summary["coverage_q90"] <= hi90)
    return CoverageCheck(bool(ok), float(summary["coverage_q10"]), float(summary["coverage_q90"]), (lo10, hi10),
                         (lo90, hi90), n, nothing_predicted,
                         float(summary.get("coverage_q10_raw", float("nan"))),
                         float(summary.get("coverage_q90_raw", float("nan"))))


def model_step(store: FeatureStore, settings: Settings, run_id: str,
               collector: CollectorSource | None = None) -> TrainedQ50Model:
    """Train on every pool in the store (the pools the feature stage let through) that the collector
    still has bars of (``collector``; None: every pool in the store), recalibration included, and
    weigh the out-of-sample evidence (``trained.evidence``, None without labels)."""
    config = ModelConfig.of(settings)
    in_collector = collector.pools_with_bars(settings.timeframe) if collector is not None else None
    trained, labels = train(store, config, run_id, in_collector)
    started = time.perf_counter()
    trained.evidence = evidence(trained, labels, config)
    trained.evidence_seconds = round(time.perf_counter() - started, 2)
    return trained
