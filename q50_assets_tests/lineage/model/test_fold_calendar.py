"""Fold boundaries on the calendar, and the live model as the last fold's model: what the
incremental path (new bars every hour, a retrain now and then) needs to build exactly what a
from-scratch run on the final database builds.

* Boundaries are multiples of ``retrain_every_bars * bar`` since the epoch and do not move when
  bars are added before or after.
* Prefix invariance: a walk-forward on a panel and on the same panel a few bars later (before the
  next boundary) give the old rows bit-identical predictions, and the first run's live model gives
  the new rows exactly the later run's fold-m predictions, calibrated values included.
  Bit-identical, not merely close: fold m trains on the same rows in the same order with the
  same seed (labels unknown at T_m are never read), both runs predict through the same LightGBM
  model strings, a row's prediction depends on its own features only, and the calibration
  offsets come from the same evidence (labels known at T_m).
* Past the next boundary the later run has fold m+1 for those rows, and the live model refuses them.

Synthetic seeded panels, and the bundled real sample (a few seconds).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from q50_assets.lineage.model.calibration import CalibrationConfig
from q50_assets.lineage.model.walk_forward import (
    QUANTILE_COLUMNS,
    WalkForwardConfig,
    calibrate_live_model,
    calibrate_walk_forward,
    fold_boundaries,
    live_model,
    walk_forward,
)
from q50_assets_tests.lineage.model.synthetic_panel import BAR, FAST, START, as_of, synthetic_panel
from q50_assets_tests.lineage.real_sample import LIGHT, real_panel

CAL = CalibrationConfig(calibration_window_bars=96, calibration_min_rows=100)
STEP = FAST.retrain_every_bars * BAR
# The fold layout (the folds table's columns that do not depend on which labels are known yet).
LAYOUT = ["fold", "boundary", "train_rows", "train_first_open", "train_last_open", "test_start", "test_end",
          "test_rows", "skipped", "skip_reason"]
# The values a prediction row carries (its label may become known later: compared separately).
PREDICTED = [*QUANTILE_COLUMNS, "fold", "predicted_at", "trained_until", "crossed"]
CALIBRATED = [*PREDICTED, "q10_raw", "q90_raw"]


# ---------------------------------------------------------------- boundaries

@pytest.mark.parametrize("first_open_hour", [0, 5, 23, 24 + 7])
def test_daily_boundaries_are_utc_midnights_whatever_the_first_bar(first_open_hour):
    config = WalkForwardConfig(initial_train_bars=48, retrain_every_bars=24)
    first = START + first_open_hour * BAR + BAR  # predicted_at of the first bar
    last = first + 10 * 24 * BAR
    boundaries = fold_boundaries(first, last, config)
    assert all(b == b.normalize() for b in boundaries)  # UTC midnights
    assert boundaries[0] - 24 * BAR < first + 48 * BAR <= boundaries[0]
    assert np.all(np.diff([b.value for b in boundaries]) == 24 * BAR.value)
    assert boundaries[-1] <= last < boundaries[-1] + 24 * BAR


def test_boundaries_are_epoch_grid_points_and_never_move_when_bars_are_added():
    step_ns = STEP.value
    base = fold_boundaries(START + BAR, START + 300 * BAR, FAST)
    assert base and all(b.value % step_ns == 0 for b in base)
    for hours in range(0, 60, 7):  # prepended: earlier first bar, same calendar grid
        earlier = fold_boundaries(START + BAR - hours * BAR, START + 300 * BAR, FAST)
        assert set(base) <= set(earlier) and all(b.value % step_ns == 0 for b in earlier)
        assert set(earlier) - set(base) == {b for b in earlier if b < base[0]}
    for hours in range(0, 120, 11):  # appended: the old boundaries stay, new ones follow
        later = fold_boundaries(START + BAR, START + (300 + hours) * BAR, FAST)
        assert later[: len(base)] == base and all(b > base[-1] for b in later[len(base):])
    # The walk-forward uses exactly these, on a panel starting mid-grid and on one with rows prepended.
    features, _, labels = synthetic_panel(n_pools=2, n_bars=300, start=START + 13 * BAR)
    res = walk_forward(features, labels, FAST)
    assert list(res.folds["boundary"]) == fold_boundaries(START + 14 * BAR, START + 313 * BAR, FAST)
    more, _, more_labels = synthetic_panel(n_pools=2, n_bars=340, start=START - 27 * BAR)
    res_more = walk_forward(more, more_labels, FAST)
    assert set(res.folds["boundary"]) <= set(res_more.folds["boundary"])


# ---------------------------------------------------------------- prefix invariance

def _three_databases(features, labels, short_last_open, config=FAST, cal=CAL):
    """The walk-forward (raw, calibrated) and the calibrated live model of the database as of
    ``short_last_open``; the databases a few bars later (last row still in fold m) and past the
    next boundary, each with its (raw, calibrated) walk-forward."""
    short_f, short_l = as_of(features, labels, short_last_open)
    short = walk_forward(short_f, short_l, config)
    live = calibrate_live_model(live_model(short, config), short.predictions, short_l, cal)
    assert live is not None and live.trained_until <= short_last_open + BAR < live.valid_until
    out = {"short": (short_f, short_l, short, calibrate_walk_forward(short, short_l, cal)), "live": live}
    for name, last_open in (("mid", live.valid_until - 2 * BAR), ("long", live.valid_until + 20 * BAR)):
        f, l = as_of(features, labels, last_open)
        raw = walk_forward(f, l, config)
        out[name] = (f, l, raw, calibrate_walk_forward(raw, l, cal))
    return out


def _assert_prefix_invariant(runs, live_fold_rows_min=1):
    short_f, short_l, short, short_cal = runs["short"]
    live = runs["live"]
    mid_f, mid_l, mid, mid_cal = runs["mid"]
    m = live.fold
    assert mid.folds["fold"].iloc[-1] == m and (mid.folds["boundary"] == short.folds["boundary"]).all()

    # Old rows: bit-identical predictions, raw and calibrated; labels only filled in, never changed.
    old = short.predictions.index
    pd.testing.assert_frame_equal(short.predictions[PREDICTED], mid.predictions.loc[old, PREDICTED], check_exact=True)
    pd.testing.assert_frame_equal(short_cal.predictions[CALIBRATED],
                                  mid_cal.predictions.loc[short_cal.predictions.index, CALIBRATED], check_exact=True)
    known = short.predictions["label"].notna()
    assert (short.predictions.loc[known, "label"] == mid.predictions.loc[old[known], "label"]).all()
    pd.testing.assert_frame_equal(short.folds.loc[short.folds["fold"] < m, LAYOUT],
                                  mid.folds.loc[mid.folds["fold"] < m, LAYOUT], check_exact=True)
    # Fold m trained on the same rows: the same boosters, hence the live model's.
    assert mid.last_fold_models == short.last_fold_models == live.model_strings
    # The same offsets for fold m in both runs, and they are the live model's.
    for table in (short_cal.calibration, mid_cal.calibration):
        row = table.set_index("fold").loc[m]
        assert (row["offset_q10"], row["offset_q90"], row["evidence_rows"]) == (
            live.calibration.q10, live.calibration.q90, live.calibration.evidence_rows)

    # New rows: the first run's live model gives exactly the later run's fold-m values.
    new = mid_f.index.difference(short_f.index)
    assert len(new) >= live_fold_rows_min
    live_preds = live.predict(mid_f.loc[new])
    expected = mid_cal.predictions.loc[new]
    assert (expected["fold"] == m).all() and (expected["trained_until"] == live.trained_until).all()
    pd.testing.assert_frame_equal(live_preds[[*QUANTILE_COLUMNS, "crossed", "q10_raw", "q90_raw"]],
                                  expected[[*QUANTILE_COLUMNS, "crossed", "q10_raw", "q90_raw"]], check_exact=True)


def _assert_next_fold_refused(runs):
    live = runs["live"]
    long_f, _, long, long_cal = runs["long"]
    m = live.fold
    boundaries = list(long.folds["boundary"])
    assert boundaries[: m + 1] == list(runs["mid"][2].folds["boundary"]) and boundaries[m + 1] == live.valid_until
    late = long_f.index[long_f.index.get_level_values("open_time") + BAR >= live.valid_until]
    assert len(late) > 0
    assert (long.predictions.loc[late, "fold"] == m + 1).all()
    assert (long.predictions.loc[late, "trained_until"] == live.valid_until).all()
    with pytest.raises(ValueError, match="valid_until"):
        live.predict(long_f.loc[late])
    # Rows of fold m keep their values in the later run: fold m is unchanged by what followed.
    mid_rows = runs["mid"][3].predictions.index
    pd.testing.assert_frame_equal(long_cal.predictions.loc[mid_rows, CALIBRATED],
                                  runs["mid"][3].predictions[CALIBRATED], check_exact=True)


@pytest.mark.parametrize("bars_into_fold", [0, 1, 17])
def test_prefix_invariance_and_the_live_model_is_the_later_runs_last_fold(bars_into_fold):
    features, _, labels = synthetic_panel(n_pools=4, n_bars=420, seed=4)
    # A database whose newest bar closes bars_into_fold bars after a boundary (0: on it).
    boundary = fold_boundaries(START + BAR, START + 420 * BAR, FAST)[3]
    runs = _three_databases(features, labels, boundary - BAR + bars_into_fold * BAR)
    assert runs["live"].trained_until == boundary and runs["live"].valid_until == boundary + STEP
    _assert_prefix_invariant(runs)
    _assert_next_fold_refused(runs)


def test_prefix_invariance_on_the_real_sample():
    features, labels = real_panel()
    boundary = pd.Timestamp("2025-09-23", tz="UTC")  # a 48-bar grid point a few days before the sample ends
    assert boundary.value % (LIGHT.retrain_every_bars * BAR).value == 0
    cal = CalibrationConfig()
    runs = _three_databases(features, labels, boundary + 9 * BAR, config=LIGHT, cal=cal)
    _assert_prefix_invariant(runs, live_fold_rows_min=300)
    _assert_next_fold_refused(runs)
