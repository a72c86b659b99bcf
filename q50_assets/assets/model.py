"""Lineage stage 3a - the Q50 model: walk-forward LightGBM quantile regression (q10/q50/q90)
on features pooled across every pool in the QLib store, q10/q90 recalibrated past-only, and the
evidence a researcher needs to trust it (skill over a naive forecaster, rank IC, coverage before
and after recalibration, reliability).

Glue only: the walk-forward logic is :mod:`q50_assets.research.q50_model`, the recalibration
:mod:`q50_assets.research.calibration`, the evidence :mod:`q50_assets.research.evaluation`. Every
prediction comes from a model trained on labels fully known before the prediction time.
"""

import base64
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
from q50_assets.research.calibration import CalibrationConfig
from q50_assets.research.evaluation import ModelEvidence, NaiveConfig, model_evidence
from q50_assets.research.features import may_be_missing, warmup_bars
from q50_assets.research.q50_model import (
    QUANTILE_COLUMNS,
    QUANTILES,
    LiveQ50Model,
    WalkForwardConfig,
    WalkForwardResult,
    calibrate_live_model,
    calibrate_walk_forward,
    fit_live_model,
    make_labels,
    pinball_loss,
    walk_forward,
)
from q50_assets.research.report import reliability_png, skill_display
from q50_assets.research.uncertainty import BootstrapConfig
from q50_assets.resources.qlib_store import QlibStore
from q50_assets.settings import Settings

MODEL_ASSET = "q50_model"


class ModelBlockedError(RuntimeError):
    """The model run failed a blocking check: nothing downstream may use its quantiles."""


@dataclass
class TrainedQ50Model:
    """The model stage's output: the walk-forward result (q10/q90 recalibrated), the live model
    for bars that close after the training run, and the run that produced both.

    ``blocked_reason`` is set when a blocking check of the run failed. Dagster stops the run's
    downstream steps, but a later run (a sensor's refresh) would still load this output, so
    consumers call :meth:`require_usable` first.
    """

    run_id: str
    result: WalkForwardResult
    live: LiveQ50Model | None = None
    blocked_reason: str = ""

    def require_usable(self) -> None:
        if self.blocked_reason:
            raise ModelBlockedError(f"q50_model run {self.run_id} failed a blocking check ({self.blocked_reason}); "
                                    "no signals are produced from it: retrain after fixing the cause")


def walk_forward_config(settings: Settings) -> WalkForwardConfig:
    m = settings.model
    return WalkForwardConfig(
        horizon_bars=m.horizon_bars,
        # The label starts where a delayed strategy's fill does (research/q50_model.py make_labels).
        label_offset_bars=settings.nautilus_trader.backtest.fill_latency_bars,
        bar_seconds=TIMEFRAME_SECONDS[settings.timeframe],
        initial_train_bars=m.initial_train_bars,
        retrain_every_bars=m.retrain_every_bars,
        min_train_rows=m.min_train_rows,
        seed=m.seed,
        num_boost_round=m.num_boost_round,
    )


def calibration_config(settings: Settings) -> CalibrationConfig:
    return CalibrationConfig(window_bars=settings.model.calibration_window_bars,
                             min_rows=settings.model.calibration_min_rows,
                             bar_seconds=TIMEFRAME_SECONDS[settings.timeframe])


def evaluation_configs(settings: Settings) -> tuple[NaiveConfig, BootstrapConfig]:
    e = settings.evaluation
    naive = NaiveConfig(min_pool_labels=e.naive_min_pool_labels, window_bars=e.naive_window_bars,
                        bar_seconds=TIMEFRAME_SECONDS[settings.timeframe])
    bootstrap = BootstrapConfig(samples=e.bootstrap_samples, block=pd.Timedelta(days=e.bootstrap_block_days),
                                seed=e.bootstrap_seed)
    return naive, bootstrap


def load_training_panel(store: QlibStore, settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Pooled features and labels from the QLib store: real, post-warm-up bars only."""
    pool_ids = sorted(e["pool_id"] for e in store.mapping().values())
    expressions = expressions_for(settings)
    panel = store.features(pool_ids, {**expressions, "close": "$close", "filled": "$filled"})
    bar_seconds = TIMEFRAME_SECONDS[settings.timeframe]
    labels = make_labels(panel["close"], settings.model.horizon_bars, bar_seconds,
                         offset_bars=settings.nautilus_trader.backtest.fill_latency_bars)

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


def train_q50_model(features: pd.DataFrame, labels: pd.DataFrame, settings: Settings, run_id: str) -> TrainedQ50Model:
    """The model stage's work, for the asset and for anything else that trains it (benchmarks):
    walk-forward, past-only recalibration of each fold's q10/q90, and the live model with its own
    offsets (fitted on the labels known at its trained_until; no live model when they are too few)."""
    config = walk_forward_config(settings)
    raw = walk_forward(features, labels, config)
    calibration = calibration_config(settings)
    result = calibrate_walk_forward(raw, labels, calibration)
    live = fit_live_model(features, labels, config)
    if live is not None:
        live = calibrate_live_model(live, raw.predictions, labels, calibration)
    return TrainedQ50Model(run_id=run_id, result=result, live=live)


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


def _calibration_markdown(table: pd.DataFrame | None, limit: int = 12) -> str:
    """The newest folds' recalibration: evidence rows, offsets, coverage before and after."""
    if table is None or table.empty:
        return "No fold was recalibrated."
    cols = ["fold", "boundary", "evidence_rows", "offset_q10", "offset_q90", "coverage_raw_q10", "coverage_q10",
            "coverage_raw_q90", "coverage_q90"]
    return _table_markdown(table[cols].tail(limit).set_index("fold"))


def oos_summary(result: WalkForwardResult) -> dict[str, float]:
    """Pinball loss and coverage per quantile over every OOS prediction with a known label; for a
    recalibrated result also of the model's raw q10/q90 on the same rows (``*_raw_*``)."""
    known = result.predictions.dropna(subset=["label"])
    out = {"oos_rows": float(len(known))}
    columns = [(q, col, col) for q, col in zip(QUANTILES, QUANTILE_COLUMNS)]
    columns += [(q, f"{col}_raw", f"{col}_raw") for q, col in zip(QUANTILES, QUANTILE_COLUMNS)
                if f"{col}_raw" in known.columns]
    for q, col, name in columns:
        y, p = known["label"].to_numpy(), known[col].to_numpy()
        out[f"pinball_{name}"] = pinball_loss(y, p, q) if len(known) else float("nan")
        out[f"coverage_{name}"] = float(np.mean(y <= p)) if len(known) else float("nan")
    return out


def _table_markdown(table: pd.DataFrame) -> str:
    head = [table.index.name or ""] + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for idx, row in table.iterrows():
        cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join([str(idx), *cells]) + " |")
    return "\n".join(lines)


def evidence_metadata(evidence: ModelEvidence) -> dict:
    """The model's evidence as Dagster metadata: numbers (plotted over runs) and small tables/picture."""
    meta: dict = {}
    for q, row in evidence.skill.iterrows():
        for col, suffix in (("skill", ""), ("skill_low", "_low"), ("skill_high", "_high")):
            meta[f"skill_{q}{suffix}"] = MetadataValue.float(float(row[col]))
        meta[f"naive_pinball_{q}"] = MetadataValue.float(float(row["naive_loss"]))
    ic = evidence.rank_ic_summary
    for key in ("mean", "low", "high", "share_positive"):
        meta[f"rank_ic_{key}"] = MetadataValue.float(float(ic[key]))
    meta["naive_rank_ic_mean"] = MetadataValue.float(float(evidence.naive_rank_ic_summary.get("mean", float("nan"))))
    for level, row in evidence.reliability.iterrows():
        meta[f"reliability_{100 * level:02.0f}"] = MetadataValue.float(float(row["calibrated"]))
    png = reliability_png(evidence.reliability)
    meta["reliability_picture"] = MetadataValue.md(
        f"![reliability](data:image/png;base64,{base64.b64encode(png).decode()})")
    meta["reliability_table"] = MetadataValue.md(_table_markdown(evidence.reliability.drop(columns=["rows"])))
    meta["skill_table"] = MetadataValue.md(
        "Pinball skill over the naive forecaster (its pool's label quantiles known at the same time), "
        "95 % block-bootstrap intervals:\n\n" + _table_markdown(skill_display(evidence.skill)))
    meta["skill_per_pool"] = MetadataValue.md(_table_markdown(evidence.pool_skill_summary))
    meta["coverage_table"] = MetadataValue.md(_table_markdown(evidence.coverage))
    meta["naive_sources"] = MetadataValue.json(evidence.naive_sources)
    return meta


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
            blocking=True,
            description="Out-of-sample share of labels at or below the recalibrated q10 and q90 within their "
            "level +- (model.coverage_tolerance + 3 binomial standard errors); when it fails no signals are "
            "produced from this model.",
        ),
    ],
    description="Walk-forward LightGBM quantile regression at 0.1/0.5/0.9 on features pooled across "
    "pools; expanding window, retrained every model.retrain_every_bars, labels embargoed by the horizon; "
    "q10/q90 recalibrated on the out-of-sample labels known at each fold boundary. Output: out-of-sample "
    "predictions per pool and bar. Metadata: pinball skill over a naive forecaster with intervals, rank IC, "
    "coverage before/after recalibration, reliability picture, per-fold table.",
)
def q50_model(context: AssetExecutionContext, qlib_store: QlibStore, settings: ResourceParam[Settings]):
    started = time.perf_counter()
    features, labels, counts = load_training_panel(qlib_store, settings)
    trained = train_q50_model(features, labels, settings, context.run.run_id)
    result, live = trained.result, trained.live
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
    # No prediction at all (e.g. pools too short for a first fold): nothing is claimed, nothing to
    # check, and no signal can come from it. Predictions without a known label cannot be verified: fail.
    nothing_predicted = len(result.predictions) == 0 and live is None
    cov_ok = nothing_predicted or (
        n > 0 and lo10 <= summary["coverage_q10"] <= hi10 and lo90 <= summary["coverage_q90"] <= hi90)
    fitted_folds = result.folds[~result.folds["skipped"]]
    failed = [name for name, ok in (("quantiles_ordered", ordered), ("oos_coverage", cov_ok)) if not ok]

    evidence_meta: dict = {}
    if n:
        naive, bootstrap = evaluation_configs(settings)
        evidence_started = time.perf_counter()
        evidence_meta = evidence_metadata(model_evidence(preds, labels, naive=naive, bootstrap=bootstrap))
        evidence_meta["evidence_seconds"] = round(time.perf_counter() - evidence_started, 2)
    offsets = live.calibration if live is not None else None
    trained.blocked_reason = ", ".join(failed)
    yield Output(
        trained,
        metadata={
            "live_model_trained_until": MetadataValue.text(str(live.trained_until) if live else "none"),
            "live_model_train_rows": live.train_rows if live else 0,
            "live_offset_q10": MetadataValue.float(float(offsets.q10) if offsets else float("nan")),
            "live_offset_q90": MetadataValue.float(float(offsets.q90) if offsets else float("nan")),
            **counts,
            "folds": len(fitted_folds),
            "folds_skipped": int(result.folds["skipped"].sum()),
            "predictions": len(preds),
            "rows_without_prediction": result.rows_without_prediction,
            "rows_uncalibrated": result.rows_uncalibrated,
            "crossed_repaired": result.crossed_repaired,
            **{k: MetadataValue.float(float(v)) for k, v in summary.items() if k != "oos_rows"},
            "oos_labelled_rows": n,
            "seconds": round(elapsed, 2),
            "folds_table": MetadataValue.md(_folds_markdown(result.folds)),
            "calibration_table": MetadataValue.md(_calibration_markdown(result.calibration)),
            **evidence_meta,
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
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "coverage_q10": MetadataValue.float(float(summary["coverage_q10"])),
            "coverage_q90": MetadataValue.float(float(summary["coverage_q90"])),
            "coverage_raw_q10": MetadataValue.float(float(summary.get("coverage_q10_raw", float("nan")))),
            "coverage_raw_q90": MetadataValue.float(float(summary.get("coverage_q90_raw", float("nan")))),
            "accepted_q10": MetadataValue.text(f"[{lo10:.3f}, {hi10:.3f}]"),
            "accepted_q90": MetadataValue.text(f"[{lo90:.3f}, {hi90:.3f}]"),
            "oos_labelled_rows": n,
            "rows_uncalibrated": result.rows_uncalibrated,
            "nothing_predicted": nothing_predicted,
        },
    )
