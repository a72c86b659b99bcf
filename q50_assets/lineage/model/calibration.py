"""Past-only recalibration of the model's outer quantiles (conformalised quantile regression).

Pure pandas/numpy (no Dagster, no LightGBM). The walk-forward model's q10/q90 come out too narrow
out of sample on hourly memecoin returns (more than 10 % of labels fall below q10, fewer than 90 %
below q90). prob_up, the threshold and Kelly sizing read those quantiles, so they are shifted by
offsets learnt from the model's own recent out-of-sample errors:

* **Evidence at time T** = out-of-sample predictions whose label is KNOWN at T
  (``label_known_at <= T``) and became known within the last ``window_bars`` bars
  (``label_known_at > T - window_bars * bar``): the most recent errors, as drift makes old ones
  stale. When that window holds fewer than ``min_rows`` labels (few pools), the ``min_rows``
  most recently known labels instead (ties in ``label_known_at`` broken by index order).
  Predictions are the model's raw quantiles, never recalibrated ones.
* **Offsets** (one-sided conformalised quantile regression, additive): with n evidence rows,
  ``offset_q10`` = the k-th smallest ``label - q10_raw``, k = floor(0.1 (n + 1)), and
  ``offset_q90`` = the k-th smallest ``label - q90_raw``, k = ceil(0.9 (n + 1)). Under
  exchangeability of the errors, ``P(label <= q10_raw + offset_q10) <= 0.1`` and
  ``P(label <= q90_raw + offset_q90) >= 0.9``: each tail errs on the side of a wider interval.
  Fewer than ``min_rows`` evidence rows: no offsets (None).
* **Applied**: ``q10 = min(q10_raw + offset_q10, q50)``, ``q90 = max(q90_raw + offset_q90, q50)``;
  q50 is unchanged (its sign is the trade direction and its own coverage is close to 0.5). The
  raw values stay beside them as ``q10_raw`` / ``q90_raw``.

Additive offsets, not offsets scaled by each row's predicted width: on the bundled sample the
scaled form over-corrected as the window grew (the model's widths drift between folds), while
the additive one stayed within 0.01 of nominal for windows of 3 to 30 days.

Walk-forward: fold k (boundary T_k) is calibrated with the evidence at T_k, i.e. earlier folds'
predictions whose labels were known by then. The first fold has no such evidence and is not
calibrated; its rows are left out of the calibrated predictions and counted. The live model is
calibrated with the evidence at its ``trained_until``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from q50_assets.lineage.common.bar_length import BarLength
from q50_assets.settings import CalibrationSettings, Settings

LOWER, UPPER = 0.1, 0.9

CALIBRATION_TABLE_COLUMNS = (
    "fold", "boundary", "calibrated", "evidence_rows", "evidence_from", "offset_q10", "offset_q90",
    "test_labelled_rows", "coverage_raw_q10", "coverage_q10", "coverage_raw_q90", "coverage_q90",
)


class CalibrationConfig(CalibrationSettings, BarLength):
    """The recalibration: the settings' calibration keys at the configured bar length. At least
    10 rows (a 10 % quantile of fewer rows is meaningless) and 24 bars are the settings' bounds."""

    @classmethod
    def of(cls, settings: Settings) -> "CalibrationConfig":
        return cls(**settings.model.model_dump(include=set(CalibrationSettings.model_fields)),
                   bar_seconds=settings.bar_seconds)


@dataclass(frozen=True)
class QuantileOffsets:
    """Offsets added to raw q10 / q90, fitted on labels known at ``fitted_at``."""

    fitted_at: pd.Timestamp
    evidence_rows: int
    evidence_from: pd.Timestamp  # earliest label_known_at among the evidence
    q10: float
    q90: float

    def apply(self, frame: pd.DataFrame) -> pd.DataFrame:
        """A copy of ``frame`` (q10, q50, q90 = raw model output) with q10/q90 recalibrated and the
        raw values in ``q10_raw`` / ``q90_raw``; ordering q10 <= q50 <= q90 kept."""
        missing = [c for c in ("q10", "q50", "q90") if c not in frame.columns]
        if missing:
            raise KeyError(f"frame lacks columns {missing}")
        out = frame.copy()
        out["q10_raw"] = frame["q10"].astype("float64")
        out["q90_raw"] = frame["q90"].astype("float64")
        q50 = frame["q50"].to_numpy(dtype=np.float64)
        out["q10"] = np.minimum(out["q10_raw"].to_numpy() + self.q10, q50)
        out["q90"] = np.maximum(out["q90_raw"].to_numpy() + self.q90, q50)
        return out


def _raw(frame: pd.DataFrame, column: str) -> np.ndarray:
    """The model's raw quantile: ``q10_raw`` when the frame was calibrated already."""
    name = f"{column}_raw" if f"{column}_raw" in frame.columns else column
    return frame[name].to_numpy(dtype=np.float64)


def calibration_evidence(predictions: pd.DataFrame, label_known_at: pd.Series, at: pd.Timestamp,
                         config: CalibrationConfig) -> pd.DataFrame:
    """Rows of ``predictions`` (with ``label``) whose label is known at ``at``: those that became
    known within the last ``window_bars`` bars, or the ``min_rows`` most recently known when the
    window holds fewer. ``label_known_at`` is aligned on the same index and added as a column."""
    known = pd.DatetimeIndex(label_known_at.reindex(predictions.index))
    if known.tz is None:
        raise ValueError("label_known_at must be tz-aware (UTC)")
    start = at - config.calibration_window_bars * pd.Timedelta(seconds=config.bar_seconds)
    label = predictions["label"].to_numpy(dtype=np.float64)
    eligible = np.isfinite(label) & np.asarray(known <= at)
    mask = eligible & np.asarray(known > start)
    if mask.sum() < config.calibration_min_rows:
        rows = np.flatnonzero(eligible)
        newest = rows[np.argsort(known.asi8[rows], kind="stable")][-config.calibration_min_rows:]
        mask = np.zeros(len(predictions), dtype=bool)
        mask[newest] = True
    return predictions[mask].assign(label_known_at=known[mask])


def _kth_smallest(values: np.ndarray, k: int) -> float:
    return float(np.partition(values, k - 1)[k - 1])


def fit_offsets(evidence: pd.DataFrame, at: pd.Timestamp, config: CalibrationConfig) -> QuantileOffsets | None:
    """Conformal offsets from ``evidence`` (rows of :func:`calibration_evidence`); None when it
    has fewer than ``min_rows`` rows."""
    y = evidence["label"].to_numpy(dtype=np.float64)
    n = len(y)
    if n < config.calibration_min_rows:
        return None
    lower = y - _raw(evidence, "q10")
    upper = y - _raw(evidence, "q90")
    k_low = min(n, max(1, math.floor(LOWER * (n + 1))))
    k_high = min(n, max(1, math.ceil(UPPER * (n + 1))))
    start = pd.Timestamp(evidence["label_known_at"].min()) if "label_known_at" in evidence.columns else pd.NaT
    return QuantileOffsets(fitted_at=at, evidence_rows=n, evidence_from=start,
                           q10=_kth_smallest(lower, k_low), q90=_kth_smallest(upper, k_high))


def calibrate_folds(predictions: pd.DataFrame, label_known_at: pd.Series, boundaries: pd.Series,
                    config: CalibrationConfig) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Recalibrate each fold's predictions with the evidence known at its boundary.

    ``predictions``: walk-forward output (q10, q50, q90, fold, label, ...); ``label_known_at``:
    aligned on its index; ``boundaries``: fold -> boundary time. Returns (calibrated predictions of
    the folds that could be calibrated, with ``q10_raw``, ``q90_raw`` and ``label_known_at``;
    one row per fold of :data:`CALIBRATION_TABLE_COLUMNS`; rows left out for lack of evidence).
    """
    for col in ("q10", "q50", "q90", "fold", "label"):
        if col not in predictions.columns:
            raise KeyError(f"predictions lack column {col!r}")
    known = label_known_at.reindex(predictions.index)
    if known.isna().any():
        missing = predictions.index[known.isna().to_numpy()]
        raise KeyError(f"{len(missing)} predictions have no label_known_at, e.g. {list(missing[:5])}")
    parts, rows, left_out = [], [], 0
    folds = predictions["fold"].to_numpy()
    for fold in sorted(pd.unique(folds)):
        if fold not in boundaries.index:
            raise KeyError(f"fold {fold} has predictions but no boundary")
        boundary = boundaries[fold]
        test = predictions[folds == fold]
        evidence = calibration_evidence(predictions, known, boundary, config)
        offsets = fit_offsets(evidence, boundary, config)
        y = test["label"].to_numpy(dtype=np.float64)
        labelled = np.isfinite(y)
        row = {"fold": int(fold), "boundary": boundary, "calibrated": offsets is not None,
               "evidence_rows": len(evidence),
               "evidence_from": evidence["label_known_at"].min() if len(evidence) else pd.NaT,
               "offset_q10": offsets.q10 if offsets else np.nan, "offset_q90": offsets.q90 if offsets else np.nan,
               "test_labelled_rows": int(labelled.sum()),
               "coverage_raw_q10": _coverage(y, _raw(test, "q10")), "coverage_raw_q90": _coverage(y, _raw(test, "q90")),
               "coverage_q10": np.nan, "coverage_q90": np.nan}
        if offsets is None:
            left_out += len(test)
        else:
            calibrated = offsets.apply(test)
            calibrated["label_known_at"] = known[folds == fold]
            row["coverage_q10"] = _coverage(y, calibrated["q10"].to_numpy())
            row["coverage_q90"] = _coverage(y, calibrated["q90"].to_numpy())
            parts.append(calibrated)
        rows.append(row)
    table = pd.DataFrame(rows, columns=list(CALIBRATION_TABLE_COLUMNS))
    if parts:
        out = pd.concat(parts).sort_index()
    else:
        out = predictions.iloc[0:0].assign(q10_raw=pd.Series(dtype="float64"), q90_raw=pd.Series(dtype="float64"),
                                           label_known_at=pd.Series(dtype=known.dtype))
    return out, table, left_out


def _coverage(y: np.ndarray, q: np.ndarray) -> float:
    """Share of known labels at or below the quantile; NaN without labels."""
    known = np.isfinite(y)
    return float(np.mean(y[known] <= q[known])) if known.any() else float("nan")


__all__ = [
    "CALIBRATION_TABLE_COLUMNS",
    "CalibrationConfig",
    "QuantileOffsets",
    "calibrate_folds",
    "calibration_evidence",
    "fit_offsets",
]
