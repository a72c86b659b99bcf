"""Walk-forward Q50 quantile model: LightGBM quantile regressions, out-of-sample by construction.

Pure pandas/numpy/LightGBM (no Dagster, no QLib, no files written), so it can be tested and
reasoned about on its own.

Timing conventions (all timestamps tz-aware UTC, ``bar`` = ``bar_seconds``):

* A feature row for pool p at bar-open time t is known at the bar's close, ``t + bar``; that is
  the row's *prediction time* (``predicted_at``).
* Its label is the forward return over ``h = horizon_bars`` bars that a strategy filling
  ``L = label_offset_bars`` bars after the decision can capture: ``close(t + (L+h)*bar) /
  close(t + L*bar) - 1`` (L = 0: from the bar's own close), fully known at ``t + (L+h+1)*bar``
  (``label_known_at``). L is the backtest's fill latency: a signal acted on at a bar's close is
  filled L bars later, so that is the return it should predict.

Walk-forward scheme:

* Fold boundaries lie on a calendar grid: with ``step = retrain_every_bars*bar``, the multiples of
  ``step`` since the Unix epoch (UTC). ``T_0`` is the first grid point at or after
  ``min(predicted_at) + initial_train_bars*bar``, and ``T_k = T_0 + k*step`` while
  ``T_k <= max(predicted_at)``. With 1h bars and 24 bars per fold the boundaries are UTC
  midnights. Where the data starts only decides which grid point comes first; adding bars never
  moves a boundary, so a run on a longer history has the same folds for the rows both runs hold.
* Fold k fits one LightGBM model per quantile on every row whose label is known at the boundary
  (``label_known_at <= T_k``; the horizon embargo, expanding window), and predicts every row with
  ``T_k <= predicted_at < T_k + step`` (its test window). A model is therefore only ever used
  after its boundary, on rows whose labels it could not have seen.
* Rows predicted before ``T_0``, or falling in a fold skipped for lack of training rows, get no
  prediction; they are counted in ``rows_without_prediction``, never silently dropped.

Recalibration (:mod:`q50_assets.lineage.model.calibration`): :func:`calibrate_walk_forward` shifts
each fold's q10/q90 by offsets fitted on the out-of-sample labels known at the fold's boundary
(earlier folds' predictions), keeping the raw values as ``q10_raw``/``q90_raw``; folds without
enough such labels (the first) are left out and counted. :func:`calibrate_live_model` gives the
live model the offsets of the evidence at its ``trained_until``: those of its fold.

The live model (:class:`LiveQ50Model`, :func:`live_model`) IS the last fold's model: fold m's
boosters (boundary ``T_m``), used for the bars the collector writes after the run whose
``predicted_at`` still falls in fold m's test window ``[T_m, T_m + step)``. A later run on the
longer history puts those bars in fold m too, trains fold m on the same rows and so gives them
the same quantiles. Bars at or after ``T_m + step`` belong to the next fold: no model exists for
them until the walk-forward runs again.

Everything is deterministic: rows are processed in index order, LightGBM runs single-threaded
with ``deterministic=True`` and a fixed seed, so the same input gives bit-identical output.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import lightgbm as lgb
import numpy as np
import pandas as pd
from pydantic import Field

from q50_assets.lineage.common.bar_length import BarLength
from q50_assets.settings import Settings, WalkForwardSettings
from q50_assets.lineage.model.calibration import CalibrationConfig, QuantileOffsets, calibrate_folds, calibration_evidence, fit_offsets

QUANTILES: tuple[float, ...] = (0.1, 0.5, 0.9)
QUANTILE_COLUMNS = ("q10", "q50", "q90")

PREDICTION_COLUMNS = (*QUANTILE_COLUMNS, "fold", "predicted_at", "trained_until", "label", "crossed")
FOLD_COLUMNS = (
    "fold", "boundary", "train_rows", "train_first_open", "train_last_open",
    "test_start", "test_end", "test_rows", "test_labelled_rows",
    "pinball_q10", "pinball_q50", "pinball_q90",
    "coverage_q10", "coverage_q50", "coverage_q90",
    "skipped", "skip_reason",
)
# After calibrate_walk_forward: q10/q90 recalibrated, the model's own values kept beside them.
CALIBRATED_PREDICTION_COLUMNS = (*PREDICTION_COLUMNS, "q10_raw", "q90_raw", "label_known_at")


class WalkForwardConfig(WalkForwardSettings, BarLength):
    """The walk-forward: the settings' model schedule at the configured bar length, the label's
    offset (the backtest's fill latency) and LightGBM's tree parameters."""

    label_offset_bars: int = Field(default=0, ge=0, description="L of make_labels: the label starts L bars after "
                                   "the bar's close (the settings' fill_latency_bars).")
    learning_rate: float = 0.05
    num_leaves: int = 15
    min_data_in_leaf: int = 40
    feature_fraction: float = 0.9
    # 63 histogram bins instead of LightGBM's 255: ~20% faster per fit and ample resolution for
    # noisy hourly-return features. Bins are always built from the fold's training rows only.
    max_bin: int = 63

    @classmethod
    def of(cls, settings: Settings) -> "WalkForwardConfig":
        return cls(**settings.model.model_dump(include=set(WalkForwardSettings.model_fields)),
                   bar_seconds=settings.bar_seconds,
                   label_offset_bars=settings.nautilus_trader.backtest.fill_latency_bars)


@dataclass
class WalkForwardResult:
    predictions: pd.DataFrame      # index (pool_id, open_time); see PREDICTION_COLUMNS
    folds: pd.DataFrame            # one row per fold; see FOLD_COLUMNS
    crossed_repaired: int          # prediction rows whose raw q10/q50/q90 were not monotone
    rows_without_prediction: int   # rows before T_0 or in skipped folds
    feature_columns: list[str]
    # fold -> index of the rows that fold trained on (only with record_training_index=True);
    # lets callers audit the embargo instead of trusting it.
    training_index: dict[int, pd.MultiIndex] | None = None
    # Set by calibrate_walk_forward: one row per fold (research.calibration.CALIBRATION_TABLE_COLUMNS),
    # and the predictions of folds that had no evidence to calibrate them (left out, counted).
    calibration: pd.DataFrame | None = None
    rows_uncalibrated: int = 0
    # The last fold's boosters (LightGBM model strings, QUANTILES order): the live model reuses
    # them (live_model). None without a boundary or when the last fold was skipped.
    last_fold_models: tuple[str, ...] | None = None


EPOCH = pd.Timestamp(0, tz="UTC")


def fold_boundaries(first_predicted_at: pd.Timestamp, last_predicted_at: pd.Timestamp,
                    config: "WalkForwardConfig") -> list[pd.Timestamp]:
    """The fold boundaries ``T_0 < T_1 < ...`` for prediction times spanning [first, last]: the
    multiples of ``step = retrain_every_bars*bar`` since the Unix epoch (UTC) from the first one at
    or after ``first + initial_train_bars*bar`` up to ``last`` (module docstring). Empty when that
    first grid point is after ``last``."""
    bar = pd.Timedelta(seconds=config.bar_seconds)
    step = config.retrain_every_bars * bar
    if step <= pd.Timedelta(0):
        raise ValueError("retrain_every_bars must be >= 1")
    earliest = first_predicted_at + config.initial_train_bars * bar
    # Ceiling of (earliest - epoch) / step in whole steps: exact integer arithmetic on Timedeltas.
    t0 = EPOCH + (-((EPOCH - earliest) // step)) * step
    if t0 > last_predicted_at:
        return []
    return [t0 + k * step for k in range((last_predicted_at - t0) // step + 1)]


def _check_panel_index(index: pd.Index, what: str) -> None:
    """A (pool_id, open_time) MultiIndex with a tz-aware open_time level, no duplicates."""
    if not isinstance(index, pd.MultiIndex) or index.nlevels != 2:
        raise ValueError(f"{what} must be indexed by a (pool_id, open_time) MultiIndex")
    times = index.get_level_values(1)
    if not isinstance(times, pd.DatetimeIndex) or times.tz is None:
        raise ValueError(f"{what}: open_time level must be tz-aware (UTC) datetimes")
    if index.has_duplicates:
        dups = index[index.duplicated()].unique()
        raise ValueError(f"{what} has {len(dups)} duplicated (pool_id, open_time) rows, e.g. {list(dups[:5])}")


def make_labels(close: pd.Series, horizon_bars: int, bar_seconds: int, offset_bars: int = 0) -> pd.DataFrame:
    """Forward returns over ``horizon_bars`` bars, starting ``offset_bars`` bars after each bar's close.

    ``close``: float Series indexed by (pool_id, open_time[UTC, tz-aware]) on a full hourly grid
    per pool (missing bars are NaN rows). Returns a DataFrame on the same index with ``label`` =
    close(t + (L+h)*bar) / close(t + L*bar) - 1 (NaN when either close is missing or the horizon
    runs past the pool's end) and ``label_known_at`` (``open_time + (L+h+1)*bar``).
    """
    if horizon_bars < 1:
        raise ValueError(f"horizon_bars must be >= 1, got {horizon_bars}")
    if offset_bars < 0:
        raise ValueError(f"offset_bars must be >= 0, got {offset_bars}")
    _check_panel_index(close.index, "close")
    bar = pd.Timedelta(seconds=bar_seconds)
    pools = close.index.get_level_values(0)
    opens = close.index.get_level_values(1)
    # Look the future close up by (same pool, open_time + h*bar) rather than shifting by
    # position: equivalent to a per-pool shift on a full grid, never crosses pools, and stays
    # correct (NaN) if a bar is absent from the grid instead of silently shifting further.
    future_index = pd.MultiIndex.from_arrays([pools, opens + (offset_bars + horizon_bars) * bar],
                                             names=close.index.names)
    future = close.reindex(future_index).to_numpy(dtype=np.float64, copy=True)
    if offset_bars:
        start_index = pd.MultiIndex.from_arrays([pools, opens + offset_bars * bar], names=close.index.names)
        now = close.reindex(start_index).to_numpy(dtype=np.float64, copy=True)
    else:
        now = close.to_numpy(dtype=np.float64, copy=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        label = future / now - 1.0
    # A zero/negative-free close series should never produce inf, but a bad tick (close 0)
    # would; an infinite target would poison the quantile fit, so treat it as unknown.
    label[~np.isfinite(label)] = np.nan
    return pd.DataFrame(
        {"label": label, "label_known_at": opens + (offset_bars + horizon_bars + 1) * bar},
        index=close.index,
    )


def pinball_loss(y: np.ndarray, q_pred: np.ndarray, alpha: float) -> float:
    """Mean pinball (quantile) loss of predictions ``q_pred`` for quantile ``alpha``; NaN if empty."""
    y = np.asarray(y, dtype=np.float64)
    q_pred = np.asarray(q_pred, dtype=np.float64)
    if y.shape != q_pred.shape:
        raise ValueError(f"shape mismatch: y {y.shape} vs q_pred {q_pred.shape}")
    if y.size == 0:
        return float("nan")
    diff = y - q_pred
    return float(np.mean(np.maximum(alpha * diff, (alpha - 1.0) * diff)))


def _lgb_params(config: WalkForwardConfig, alpha: float) -> dict:
    # Single thread + deterministic + row-wise histograms: bit-identical results run to run.
    return {
        "objective": "quantile",
        "alpha": alpha,
        "learning_rate": config.learning_rate,
        "num_leaves": config.num_leaves,
        "min_data_in_leaf": config.min_data_in_leaf,
        "feature_fraction": config.feature_fraction,
        "max_bin": config.max_bin,
        "seed": config.seed,
        "deterministic": True,
        "num_threads": 1,
        "force_row_wise": True,
        "verbose": -1,
    }


def repair_crossings(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row of (n, 3) quantile predictions ascending; return (sorted, crossed mask).

    Independent per-quantile models can cross. Sorting each row is the minimal repair that
    keeps the set of predicted values; the mask keeps the repair visible. All-NaN rows (no
    prediction) stay NaN and are not counted as crossed.
    """
    raw = np.asarray(raw, dtype=np.float64)
    crossed = np.any(np.diff(raw, axis=1) < 0, axis=1)
    return np.sort(raw, axis=1), crossed


def _fit(x_train: np.ndarray, y_train: np.ndarray, config: WalkForwardConfig) -> tuple[str, ...]:
    """One booster per quantile (QUANTILES order), as LightGBM model strings."""
    # One Dataset per fold, shared by the three quantile fits: binning depends only on the
    # training rows (never on test or future rows), and objective/alpha are booster-level.
    data = lgb.Dataset(x_train, label=y_train, params=_lgb_params(config, QUANTILES[0]), free_raw_data=True)
    return tuple(lgb.train(_lgb_params(config, alpha), data, num_boost_round=config.num_boost_round).model_to_string()
                 for alpha in QUANTILES)


def _predict_raw(model_strings: tuple[str, ...], x: np.ndarray) -> np.ndarray:
    """Raw (unsorted) predictions, one column per quantile, of boosters given as model strings.

    The walk-forward and the live model both predict through here, from the same strings: a
    row's value depends only on its own features and the trees, never on the other rows of the
    call, so fold m's rows and the live model's rows of fold m are computed identically.
    """
    out = np.empty((x.shape[0], len(model_strings)), dtype=np.float64)
    for j, model in enumerate(model_strings):
        out[:, j] = lgb.Booster(model_str=model).predict(x, num_threads=1)
    return out


def walk_forward(features: pd.DataFrame, labels: pd.DataFrame, config: WalkForwardConfig,
                 *, record_training_index: bool = False, n_jobs: int | None = None) -> WalkForwardResult:
    """Fit and apply the walk-forward Q50 model (see the module docstring for the scheme).

    ``features``: (pool_id, open_time)-indexed numeric columns, NaN allowed. ``labels``: output
    of :func:`make_labels` (at least covering every feature row). With
    ``record_training_index=True`` the result carries each fold's training-row index.
    ``n_jobs``: folds fitted in parallel threads (default min(4, cpu count)); results do not
    depend on it.
    """
    _check_panel_index(features.index, "features")
    _check_panel_index(labels.index, "labels")
    for col in ("label", "label_known_at"):
        if col not in labels.columns:
            raise ValueError(f"labels is missing column {col!r}")
    missing_mask = ~features.index.isin(labels.index)
    if missing_mask.any():
        missing = features.index[missing_mask]
        raise KeyError(f"{len(missing)} feature rows have no label row, e.g. {list(missing[:5])}")
    feature_columns = [str(c) for c in features.columns]
    non_numeric = [c for c in features.columns
                   if not (pd.api.types.is_numeric_dtype(features[c]) or pd.api.types.is_bool_dtype(features[c]))]
    if non_numeric:
        raise ValueError(f"non-numeric feature columns: {non_numeric}")
    if not feature_columns:
        raise ValueError("features has no columns")

    # Index order, not input order, drives everything downstream (determinism under shuffles).
    features = features.sort_index()
    aligned = labels.reindex(features.index)
    index = features.index
    n = len(index)

    bar = pd.Timedelta(seconds=config.bar_seconds)
    x = features.to_numpy(dtype=np.float64, copy=True)
    y = aligned["label"].to_numpy(dtype=np.float64, copy=True)
    known_at = pd.DatetimeIndex(aligned["label_known_at"])
    if known_at.tz is None:
        raise ValueError("labels.label_known_at must be tz-aware (UTC)")
    opens = index.get_level_values(1)
    predicted_at = opens + bar
    labelled = ~np.isnan(y)

    # Guard against leakage from a mismatched horizon: a label claiming to be known before
    # its horizon has elapsed would let a fold train on the future of its own test rows.
    horizon_end = predicted_at + (config.label_offset_bars + config.horizon_bars) * bar
    too_early = labelled & ~np.asarray(known_at >= horizon_end)
    if too_early.any():
        bad = index[too_early]
        raise ValueError(
            f"{int(too_early.sum())} labelled rows have label_known_at (or NaT) earlier than "
            f"open_time + (label_offset_bars+horizon_bars+1)*bar, e.g. {list(bad[:5])}"
        )

    # Fold boundaries on the calendar grid, independent of how many rows exist.
    step = config.retrain_every_bars * bar
    boundaries = fold_boundaries(predicted_at.min(), predicted_at.max(), config) if n else []
    boundary_index = pd.DatetimeIndex(boundaries, dtype=predicted_at.dtype)
    # fold of each row by prediction time: -1 = before T_0. Every row is before the last
    # boundary + step (T_{m+1} > max(predicted_at)), so each fold's rows lie in [T_k, T_k + step).
    fold_of_row = (boundary_index.searchsorted(predicted_at, side="right") - 1).astype(np.int64)

    raw = np.full((n, len(QUANTILES)), np.nan)
    predicted = np.zeros(n, dtype=bool)
    fold_rows: list[dict] = []
    training_index: dict[int, pd.MultiIndex] | None = {} if record_training_index else None
    jobs: list[tuple[int, np.ndarray, np.ndarray]] = []  # (fold, train mask, test mask)

    for k, boundary in enumerate(boundaries):
        # The embargo: only labels fully known at the boundary (expanding window).
        train = labelled & np.asarray(known_at <= boundary)
        test = fold_of_row == k
        train_rows, test_rows = int(train.sum()), int(test.sum())
        test_end = boundary + step
        if training_index is not None:
            training_index[k] = index[train]
        skip_reason = ""
        if train_rows < config.min_train_rows:
            skip_reason = f"train_rows {train_rows} < min_train_rows {config.min_train_rows}"
        elif test_rows == 0:
            skip_reason = "no test rows"  # e.g. a gap in the data; fitting would be wasted
        else:
            jobs.append((k, train, test))
        train_opens = opens[train]
        fold_rows.append({
            "fold": k,
            "boundary": boundary,
            "train_rows": train_rows,
            "train_first_open": train_opens.min() if train_rows else pd.NaT,
            "train_last_open": train_opens.max() if train_rows else pd.NaT,
            "test_start": boundary,
            "test_end": test_end,  # exclusive bound on predicted_at
            "test_rows": test_rows,
            "test_labelled_rows": int((test & labelled).sum()),
            "skipped": bool(skip_reason),
            "skip_reason": skip_reason,
        })

    # Folds are independent once their row sets are fixed, so they run in parallel threads
    # (LightGBM releases the GIL). Each fit is single-threaded and seeded, and results are
    # written back by fold, so the output does not depend on n_jobs or scheduling order.
    last_fold = len(boundaries) - 1

    def run(job: tuple[int, np.ndarray, np.ndarray]) -> tuple[tuple[str, ...] | None, np.ndarray]:
        k, train, test = job
        models = _fit(x[train], y[train], config)
        # Only the last fold's boosters are kept (the live model's); the others are dropped here.
        return (models if k == last_fold else None), _predict_raw(models, x[test])

    workers = max(1, min(n_jobs if n_jobs is not None else min(4, os.cpu_count() or 1), len(jobs)))
    # Largest (latest) folds first: better load balance across workers.
    ordered = sorted(jobs, key=lambda job: -job[0])
    if workers == 1:
        outputs = [run(job) for job in ordered]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            outputs = list(pool.map(run, ordered))
    last_fold_models = None
    for (_, _, test), (models, out) in zip(ordered, outputs):
        raw[test] = out
        predicted[test] = True
        if models is not None:
            last_fold_models = models

    preds, crossed = repair_crossings(raw)

    # Fold metrics on each fold's own labelled test rows, using the published (repaired) values.
    for row in fold_rows:
        mask = (fold_of_row == row["fold"]) & labelled & predicted
        for j, (alpha, col) in enumerate(zip(QUANTILES, QUANTILE_COLUMNS)):
            q = preds[mask, j]
            row[f"pinball_{col}"] = pinball_loss(y[mask], q, alpha)
            row[f"coverage_{col}"] = float(np.mean(y[mask] <= q)) if mask.any() else float("nan")

    folds = pd.DataFrame(fold_rows, columns=list(FOLD_COLUMNS))
    folds["fold"] = folds["fold"].astype(np.int64)
    folds["train_rows"] = folds["train_rows"].astype(np.int64)
    folds["test_rows"] = folds["test_rows"].astype(np.int64)
    folds["test_labelled_rows"] = folds["test_labelled_rows"].astype(np.int64)
    folds["skipped"] = folds["skipped"].astype(bool)
    folds["skip_reason"] = folds["skip_reason"].astype(object)
    for col in ("boundary", "train_first_open", "train_last_open", "test_start", "test_end"):
        folds[col] = pd.to_datetime(folds[col], utc=True)

    pred_folds = fold_of_row[predicted]
    predictions = pd.DataFrame(
        {
            **{col: preds[predicted, j] for j, col in enumerate(QUANTILE_COLUMNS)},
            "fold": pred_folds,
            "predicted_at": predicted_at[predicted],
            "trained_until": boundary_index.take(pred_folds),
            "label": y[predicted],
            "crossed": crossed[predicted],
        },
        index=index[predicted],
        columns=list(PREDICTION_COLUMNS),
    )

    return WalkForwardResult(
        predictions=predictions,
        folds=folds,
        crossed_repaired=int(crossed.sum()),
        rows_without_prediction=int(n - predicted.sum()),
        feature_columns=feature_columns,
        training_index=training_index,
        last_fold_models=last_fold_models,
    )


@dataclass
class LiveQ50Model:
    """The last fold's model, for the bars the collector writes after the training run.

    It is fold ``fold`` (m, the last boundary ``T_m``) of the walk-forward: the same boosters,
    trained on every label known at ``trained_until`` = T_m, valid for rows whose ``predicted_at``
    (open + bar) lies in fold m's test window ``[trained_until, valid_until)``, ``valid_until`` =
    T_m + step. Inside that window a from-scratch walk-forward on a later database assigns the row
    to fold m, trains fold m on the same rows and gives it the same quantiles, so a live signal
    is the signal that run would write. A row at or after ``valid_until`` belongs to the next
    fold, which needs a retrain.

    Boosters are kept as LightGBM model strings so the object pickles (Dagster's IO manager).
    """

    fold: int
    trained_until: pd.Timestamp
    valid_until: pd.Timestamp  # exclusive bound on predicted_at
    train_rows: int
    feature_columns: list[str]
    model_strings: tuple[str, ...]  # one per quantile, QUANTILES order
    bar_seconds: int
    # Fold m's q10/q90 offsets: fitted on out-of-sample labels known at trained_until (calibrate_live_model).
    calibration: QuantileOffsets | None = None

    def predict(self, features: pd.DataFrame) -> pd.DataFrame:
        """q10/q50/q90 (repaired, recalibrated when the model carries offsets) and ``crossed`` for
        each row of ``features`` (same index; its last level is the bar's open time).

        Raises, naming rows, for a row outside fold m's window: before ``trained_until`` its label
        may have been trained on (in-sample); at or after ``valid_until`` it belongs to a later
        fold, whose model has not been trained yet.
        """
        missing = [c for c in self.feature_columns if c not in features.columns]
        if missing:
            raise KeyError(f"features lack the live model's columns {missing}")
        if len(features) == 0:
            return pd.DataFrame({**{c: pd.Series(dtype="float64") for c in QUANTILE_COLUMNS},
                                 "crossed": pd.Series(dtype=bool)}, index=features.index)
        opens = features.index.get_level_values(-1)
        predicted_at = pd.DatetimeIndex(opens) + pd.Timedelta(seconds=self.bar_seconds)
        early = np.asarray(predicted_at < self.trained_until)
        if early.any():
            raise ValueError(f"{int(early.sum())} rows are predicted before the live model's trained_until "
                             f"{self.trained_until} (fold {self.fold}): predicting them would be in-sample, "
                             f"e.g. {_rows_label(features.index[early])}")
        late = np.asarray(predicted_at >= self.valid_until)
        if late.any():
            raise ValueError(f"{int(late.sum())} rows are predicted at or after the live model's valid_until "
                             f"{self.valid_until}: they belong to a fold after {self.fold}, which needs a retrain, "
                             f"e.g. {_rows_label(features.index[late])}")
        x = features[self.feature_columns].to_numpy(dtype=np.float64, copy=True)
        preds, crossed = repair_crossings(_predict_raw(self.model_strings, x))
        out = pd.DataFrame(preds, index=features.index, columns=list(QUANTILE_COLUMNS))
        out["crossed"] = crossed
        if self.calibration is not None:  # q10/q90 recalibrated; q10_raw/q90_raw keep the boosters' values
            out = self.calibration.apply(out)
        return out


def _rows_label(index: pd.Index, limit: int = 3) -> str:
    """The first rows of an index as text: 'pool open_time' (or 'open_time'), comma-separated."""
    return ", ".join(" ".join(map(str, i)) if isinstance(i, tuple) else str(i) for i in index[:limit])


def live_model(result: WalkForwardResult, config: WalkForwardConfig) -> LiveQ50Model | None:
    """The live model of a walk-forward result: its last fold's boosters (reused, not fitted
    again), valid from that fold's boundary for one ``retrain_every_bars`` step. None without a
    boundary or when the last fold was skipped (too few training rows)."""
    folds = result.folds
    if result.last_fold_models is None or folds.empty:
        return None
    last = folds.iloc[-1]
    if bool(last["skipped"]):
        return None
    return LiveQ50Model(fold=int(last["fold"]), trained_until=pd.Timestamp(last["boundary"]),
                        valid_until=pd.Timestamp(last["test_end"]), train_rows=int(last["train_rows"]),
                        feature_columns=list(result.feature_columns), model_strings=result.last_fold_models,
                        bar_seconds=config.bar_seconds)


def calibrate_walk_forward(result: WalkForwardResult, labels: pd.DataFrame, config: CalibrationConfig) -> WalkForwardResult:
    """The walk-forward result with each fold's q10/q90 recalibrated on the out-of-sample labels
    known at its boundary (:mod:`q50_assets.lineage.model.calibration`).

    Predictions of folds without enough evidence (always the first) are left out and counted in
    ``rows_uncalibrated``: their intervals are known to be unreliable and nothing known at the time
    could correct them. ``labels``: output of :func:`make_labels` covering every prediction.
    """
    boundaries = result.folds.set_index("fold")["boundary"]
    calibrated, table, left_out = calibrate_folds(result.predictions, labels["label_known_at"], boundaries, config)
    calibrated = calibrated[list(CALIBRATED_PREDICTION_COLUMNS)]
    return replace(result, predictions=calibrated, calibration=table, rows_uncalibrated=left_out)


def calibrate_live_model(live: LiveQ50Model, raw_predictions: pd.DataFrame, labels: pd.DataFrame,
                         config: CalibrationConfig) -> LiveQ50Model | None:
    """The live model with q10/q90 offsets fitted on the walk-forward's raw out-of-sample
    predictions whose labels are known at its ``trained_until`` = T_m: the evidence, and so the
    offsets, of fold m in :func:`calibrate_walk_forward`. None when there are too few (fold m is
    then left out uncalibrated too, and a live model whose intervals cannot be calibrated is not
    published)."""
    evidence = calibration_evidence(raw_predictions, labels["label_known_at"], live.trained_until, config)
    offsets = fit_offsets(evidence, live.trained_until, config)
    return None if offsets is None else replace(live, calibration=offsets)
