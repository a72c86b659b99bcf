"""Lineage stage 3a - the Q50 model: walk-forward LightGBM quantile regression (q10/q50/q90)
on features pooled across every pool in the QLib store.

Glue only: the stage is :mod:`q50_assets.stages.model` (walk-forward logic in
:mod:`q50_assets.research.q50_model`). Every prediction comes from a model trained on labels fully
known before the prediction time.
"""

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    MetadataValue,
    Output,
    asset,
)

from q50_assets.assets.features import FEATURES_ASSET
from q50_assets.resources.lineage import LineageConfig
from q50_assets.resources.qlib_store import QlibStore
from q50_assets.stages.model import STAGE, TrainedQ50Model, coverage_check, oos_summary, train, unordered_predictions

MODEL_ASSET = STAGE


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


def model_step(store: QlibStore, lineage: LineageConfig, run_id: str) -> TrainedQ50Model:
    """Train on every pool in the store (the pools the feature stage let through)."""
    return train(store, lineage.training_config(), run_id)


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
def q50_model(context: AssetExecutionContext, qlib_store: QlibStore, lineage: LineageConfig):
    trained = model_step(qlib_store, lineage, context.run.run_id)
    result, live = trained.result, trained.live
    preds = result.predictions
    bad_rows = unordered_predictions(preds)
    summary = oos_summary(result)
    coverage = coverage_check(summary, lineage.model.coverage_tolerance)
    trained_folds = result.folds[~result.folds["skipped"]]

    yield Output(
        trained,
        metadata={
            "live_model_trained_until": MetadataValue.text(str(live.trained_until) if live else "none"),
            "live_model_train_rows": live.train_rows if live else 0,
            **trained.panel_counts,
            "folds": len(trained_folds),
            "folds_skipped": int(result.folds["skipped"].sum()),
            "predictions": len(preds),
            "rows_without_prediction": result.rows_without_prediction,
            "crossed_repaired": result.crossed_repaired,
            **{k: MetadataValue.float(float(v)) for k, v in summary.items() if k != "oos_rows"},
            "oos_labelled_rows": coverage.oos_labelled_rows,
            "seconds": trained.seconds,
            "folds_table": MetadataValue.md(_folds_markdown(result.folds)),
        },
    )
    yield AssetCheckResult(
        check_name="quantiles_ordered",
        passed=not bool(bad_rows.any()),
        severity=AssetCheckSeverity.ERROR,
        metadata={"predictions": len(preds), "crossed_repaired": result.crossed_repaired,
                  "bad_rows": int(bad_rows.sum()),
                  "first_bad": MetadataValue.json([str(i) for i in preds.index[bad_rows][:10]])},
    )
    yield AssetCheckResult(
        check_name="oos_coverage",
        passed=coverage.passed,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "coverage_q10": MetadataValue.float(coverage.coverage_q10),
            "coverage_q90": MetadataValue.float(coverage.coverage_q90),
            "accepted_q10": MetadataValue.text(f"[{coverage.accepted_q10[0]:.3f}, {coverage.accepted_q10[1]:.3f}]"),
            "accepted_q90": MetadataValue.text(f"[{coverage.accepted_q90[0]:.3f}, {coverage.accepted_q90[1]:.3f}]"),
            "oos_labelled_rows": coverage.oos_labelled_rows,
        },
    )
