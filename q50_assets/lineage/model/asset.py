"""Lineage stage 3a - the Q50 model: walk-forward LightGBM quantile regression (q10/q50/q90)
on features pooled across every pool in the QLib store, q10/q90 recalibrated past-only, and the
evidence a researcher needs to trust it (skill over a naive forecaster, rank IC, coverage before
and after recalibration, reliability).

Glue only: the stage is :mod:`q50_assets.lineage.model.step` (walk-forward logic in
:mod:`q50_assets.lineage.model.walk_forward`, recalibration :mod:`q50_assets.lineage.model.calibration`,
evidence :mod:`q50_assets.lineage.model.evaluation`). Every prediction comes from a model trained on
labels fully known before the prediction time.
"""

import base64

import pandas as pd
from dagster import (
    AllPartitionMapping,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    ResourceParam,
    MetadataValue,
    Output,
    asset,
)

from q50_assets.lineage.common.conditions import after_nightly_refresh
from q50_assets.lineage.common.ports import CollectorSource, FeatureStore
from q50_assets.lineage.features.asset import FEATURES_ASSET
from q50_assets.lineage.model.evaluation import ModelEvidence
from q50_assets.lineage.portfolio.report import reliability_png, skill_display
from q50_assets.lineage.model.step import (
    STAGE,
    ModelBlockedError,
    TrainedQ50Model,
    coverage_check,
    oos_summary,
    unordered_predictions,
)
from q50_assets.lineage.common.provenance import model_folds_label, provenance
from q50_assets.settings import Settings
from q50_assets.lineage.model.step import model_step

MODEL_ASSET = STAGE

__all__ = ["MODEL_ASSET", "ModelBlockedError", "TrainedQ50Model", "model_step", "q50_model"]


def _table_markdown(table: pd.DataFrame) -> str:
    head = [table.index.name or ""] + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for idx, row in table.iterrows():
        cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join([str(idx), *cells]) + " |")
    return "\n".join(lines)


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
    # Every pool's features, as the feature stage left them in the QLib store: the input is the store
    # itself (it holds every pool the stage let through), loaded by the qlib_store_input manager.
    ins={"qlib_features": AssetIn(FEATURES_ASSET, partition_mapping=AllPartitionMapping(),
                                  input_manager_key="qlib_store_input")},
    group_name="model",
    kinds={"lightgbm"},
    automation_condition=after_nightly_refresh(),
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
    "pools; expanding window, retrained every model.retrain_every_bars (fold boundaries on that step's "
    "calendar grid since the epoch, UTC), labels embargoed by the horizon; q10/q90 recalibrated on the "
    "out-of-sample labels known at each fold boundary. Output: out-of-sample predictions per pool and bar, "
    "and the live model (the last fold's, valid until live_valid_until). Metadata: pinball skill over a "
    "naive forecaster with intervals, rank IC, coverage before/after recalibration, reliability picture, "
    "per-fold table.",
)
def q50_model(context: AssetExecutionContext, qlib_features, collector: ResourceParam[CollectorSource],
              settings: ResourceParam[Settings]):
    store: FeatureStore = qlib_features
    # Pools gone from the collector leave training (named in the metadata); their outputs stay.
    trained = model_step(store, settings, context.run.run_id, collector)
    result, live = trained.result, trained.live
    preds = result.predictions
    bad_rows = unordered_predictions(preds)
    ordered = not bool(bad_rows.any())
    summary = oos_summary(result)
    coverage = coverage_check(summary, settings.model.coverage_tolerance,
                              nothing_predicted=len(preds) == 0 and live is None)
    fitted_folds = result.folds[~result.folds["skipped"]]
    failed = [name for name, ok in (("quantiles_ordered", ordered), ("oos_coverage", coverage.passed)) if not ok]
    # A later run (a sensor's refresh) loads this output even when a blocking check failed:
    # the model itself says it may not be used (TrainedQ50Model.require_usable).
    trained.blocked_reason = ", ".join(failed)

    evidence_meta: dict = {}
    if trained.evidence is not None:
        evidence_meta = evidence_metadata(trained.evidence)
        evidence_meta["evidence_seconds"] = trained.evidence_seconds
    offsets = live.calibration if live is not None else None
    yield Output(
        trained,
        metadata={
            **{f"made_from_{k}": v for k, v in provenance(
                settings, model_folds=model_folds_label(trained), run_id=context.run.run_id,
                window=((lambda t: (t.min(), t.max()))(preds.index.get_level_values("open_time"))
                        if len(preds) else None)).items()},
            "live_model_trained_until": MetadataValue.text(str(live.trained_until) if live else "none"),
            # The live model is fold live_fold's; bars predicted at or after live_valid_until need a retrain.
            "live_fold": live.fold if live else -1,
            "live_valid_until": MetadataValue.text(live.valid_until.isoformat() if live else "none"),
            "live_model_train_rows": live.train_rows if live else 0,
            "live_offset_q10": MetadataValue.float(float(offsets.q10) if offsets else float("nan")),
            "live_offset_q90": MetadataValue.float(float(offsets.q90) if offsets else float("nan")),
            **{k: (MetadataValue.json(v) if isinstance(v, (dict, list)) else v) for k, v in trained.panel_counts.items()},
            "folds": len(fitted_folds),
            "folds_skipped": int(result.folds["skipped"].sum()),
            "predictions": len(preds),
            "rows_without_prediction": result.rows_without_prediction,
            "rows_uncalibrated": result.rows_uncalibrated,
            "crossed_repaired": result.crossed_repaired,
            **{k: MetadataValue.float(float(v)) for k, v in summary.items() if k != "oos_rows"},
            "oos_labelled_rows": coverage.oos_labelled_rows,
            "seconds": trained.seconds,
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
        passed=coverage.passed,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "coverage_q10": MetadataValue.float(coverage.coverage_q10),
            "coverage_q90": MetadataValue.float(coverage.coverage_q90),
            "coverage_raw_q10": MetadataValue.float(coverage.coverage_raw_q10),
            "coverage_raw_q90": MetadataValue.float(coverage.coverage_raw_q90),
            "accepted_q10": MetadataValue.text(f"[{coverage.accepted_q10[0]:.3f}, {coverage.accepted_q10[1]:.3f}]"),
            "accepted_q90": MetadataValue.text(f"[{coverage.accepted_q90[0]:.3f}, {coverage.accepted_q90[1]:.3f}]"),
            "oos_labelled_rows": coverage.oos_labelled_rows,
            "rows_uncalibrated": result.rows_uncalibrated,
            "nothing_predicted": coverage.nothing_predicted,
        },
    )
