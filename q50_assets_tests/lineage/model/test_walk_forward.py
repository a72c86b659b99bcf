"""Walk-forward Q50 model: labels, the no-look-ahead guarantee, determinism, quantile repair,
calibration, fold skipping and input validation. Synthetic seeded panels only; small LightGBM
configs keep the file fast."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from q50_assets.lineage.model.calibration import CalibrationConfig
from q50_assets.lineage.model.walk_forward import (
    CALIBRATED_PREDICTION_COLUMNS,
    QUANTILE_COLUMNS,
    QUANTILES,
    WalkForwardConfig,
    calibrate_live_model,
    calibrate_walk_forward,
    live_model,
    make_labels,
    pinball_loss,
    repair_crossings,
    walk_forward,
)
from q50_assets_tests.lineage.model.synthetic_panel import BAR, FAST, START
from q50_assets_tests.lineage.model.synthetic_panel import panel_index as _index
from q50_assets_tests.lineage.model.synthetic_panel import synthetic_panel as _panel


# ---------------------------------------------------------------- make_labels

def test_make_labels_shifts_within_each_pool_only():
    index = _index(["A", "B"], 5)
    close = pd.Series([1, 2, 4, 8, 16, 10, 20, np.nan, 40, 80], index=index, dtype=float)

    h1 = make_labels(close, 1, 3600)
    assert h1.index.equals(index)
    # A's last bar does not borrow B's first close; B's missing bar poisons both labels touching it.
    np.testing.assert_array_equal(h1["label"].to_numpy(), [1, 1, 1, 1, np.nan, 1, np.nan, np.nan, 1, np.nan])
    opens = index.get_level_values("open_time")
    assert (pd.DatetimeIndex(h1["label_known_at"]) == opens + 2 * BAR).all()
    assert str(h1["label_known_at"].dt.tz) == "UTC"

    h2 = make_labels(close, 2, 3600)
    np.testing.assert_array_equal(h2["label"].to_numpy(),
                                  [3, 3, 3, np.nan, np.nan, np.nan, 1, np.nan, np.nan, np.nan])
    assert (pd.DatetimeIndex(h2["label_known_at"]) == opens + 3 * BAR).all()


def test_make_labels_offset_starts_the_label_after_the_fill_latency():
    # L = 1: the label of bar t is close(t+2)/close(t+1) - 1, known at open + (1+1+1) bars.
    index = _index(["A", "B"], 5)
    close = pd.Series([1, 2, 4, 8, 16, 10, 20, np.nan, 40, 80], index=index, dtype=float)
    l1 = make_labels(close, 1, 3600, offset_bars=1)
    np.testing.assert_array_equal(l1["label"].to_numpy(),
                                  [1, 1, 1, np.nan, np.nan, np.nan, np.nan, 1, np.nan, np.nan])
    opens = index.get_level_values("open_time")
    assert (pd.DatetimeIndex(l1["label_known_at"]) == opens + 3 * BAR).all()
    # It is the plain label of the bar L later, made known L bars later.
    plain = make_labels(close, 1, 3600)
    assert l1["label"].iloc[0] == plain["label"].iloc[1]
    with pytest.raises(ValueError):
        make_labels(close, 1, 3600, offset_bars=-1)


def test_walk_forward_embargo_covers_the_label_offset():
    features, close, _ = _panel(n_bars=300)
    labels = make_labels(close, 1, 3600, offset_bars=2)
    config = WalkForwardConfig(**{**FAST.__dict__, "label_offset_bars": 2})
    res = walk_forward(features, labels, config, record_training_index=True)
    for fold in res.folds.itertuples():
        known = labels.loc[res.training_index[fold.fold], "label_known_at"]
        assert (known <= fold.boundary).all()
    # open + (L+h+1) bars <= boundary: the newest training row opened >= 4 bars before it.
    assert (res.folds["train_last_open"] <= res.folds["boundary"] - 4 * BAR).all()
    # Labels made without the offset claim to be known too early for this config.
    with pytest.raises(ValueError, match="label_known_at"):
        walk_forward(features, make_labels(close, 1, 3600), config)


def test_make_labels_absent_bar_gives_nan_not_a_longer_shift():
    # A bar missing from the index entirely (not a NaN row) must not make the label span 2 bars.
    index = _index(["A"], 4).delete(2)
    close = pd.Series([1.0, 2.0, 8.0], index=index)
    np.testing.assert_array_equal(make_labels(close, 1, 3600)["label"].to_numpy(), [1.0, np.nan, np.nan])


# ---------------------------------------------------------------- pinball / repair

def test_pinball_loss_values():
    y = np.array([1.0, 2.0, 3.0])
    q = np.array([2.0, 2.0, 2.0])
    # under-prediction costs alpha, over-prediction costs 1 - alpha
    assert pinball_loss(y, q, 0.9) == pytest.approx((0.1 * 1 + 0 + 0.9 * 1) / 3)
    assert pinball_loss(y, q, 0.5) == pytest.approx(1.0 / 3)
    assert np.isnan(pinball_loss(np.array([]), np.array([]), 0.5))


def test_repair_crossings_sorts_rows_and_flags_them():
    raw = np.array([[1.0, 2.0, 3.0], [2.0, 1.0, 3.0], [3.0, 2.0, 1.0], [np.nan, np.nan, np.nan]])
    fixed, crossed = repair_crossings(raw)
    np.testing.assert_array_equal(fixed[:3], [[1, 2, 3]] * 3)
    assert np.isnan(fixed[3]).all()
    assert crossed.tolist() == [False, True, True, False]


# ---------------------------------------------------------------- fold layout / no look-ahead

def test_fold_boundaries_and_windows():
    features, _, labels = _panel(n_bars=300)
    res = walk_forward(features, labels, FAST)
    first_pred = START + BAR
    last_pred = START + 300 * BAR
    step = FAST.retrain_every_bars * BAR
    # T_0: the first multiple of step since the epoch at or after first_pred + initial_train_bars.
    earliest_ns = (first_pred + FAST.initial_train_bars * BAR).value
    t0 = pd.Timestamp(-(-earliest_ns // step.value) * step.value, tz="UTC")
    assert t0 - step < first_pred + FAST.initial_train_bars * BAR <= t0
    expected = [t0 + k * step for k in range(int((last_pred - t0) // step) + 1)]
    assert list(res.folds["boundary"]) == expected
    assert all(b.value % step.value == 0 for b in expected)  # on the calendar grid
    assert expected[-1] <= last_pred < expected[-1] + step
    # Each fold's test window is one step from its boundary, the last one's included.
    assert (res.folds["test_end"] == res.folds["boundary"] + step).all()

    p = res.predictions
    assert (p["trained_until"] <= p["predicted_at"]).all()
    assert (p["predicted_at"] == p.index.get_level_values("open_time") + BAR).all()
    assert (p["predicted_at"] < p["trained_until"] + step).all()
    # every row predicted at or after T_0 is predicted (no fold skipped here); the rest are counted
    assert not res.folds["skipped"].any()
    n_before = int((features.index.get_level_values("open_time") + BAR < t0).sum())
    assert n_before > len(features.index.unique("pool_id")) * FAST.initial_train_bars  # T_0 rounded up
    assert res.rows_without_prediction == n_before
    assert len(p) + res.rows_without_prediction == len(features)
    assert list(p.columns) == [*QUANTILE_COLUMNS, "fold", "predicted_at", "trained_until", "label", "crossed"]
    assert res.feature_columns == ["x1", "x2", "x3"]


def test_no_look_ahead_training_rows_known_before_boundary():
    features, _, labels = _panel(n_bars=300, horizon=3)
    config = WalkForwardConfig(**{**FAST.__dict__, "horizon_bars": 3})
    res = walk_forward(features, labels, config, record_training_index=True)
    assert res.training_index is not None
    labelled = labels.loc[labels["label"].notna()]
    previous = None
    for fold in res.folds.itertuples():
        train_idx = res.training_index[fold.fold]
        known = labels.loc[train_idx, "label_known_at"]
        assert (known <= fold.boundary).all()
        assert labels.loc[train_idx, "label"].notna().all()
        # ...and the embargo is not over-strict: exactly the labels known at the boundary.
        assert train_idx.sort_values().equals(labelled.index[labelled["label_known_at"] <= fold.boundary].sort_values())
        assert fold.train_rows == len(train_idx)
        if previous is not None:  # expanding window
            assert previous.isin(train_idx).all()
        previous = train_idx

    # Per predicted row: every training row of its fold was known by trained_until <= predicted_at.
    p = res.predictions
    max_known = {k: labels.loc[idx, "label_known_at"].max() for k, idx in res.training_index.items()}
    row_max_known = p["fold"].map(max_known)
    assert (row_max_known <= p["trained_until"]).all()
    assert (p["trained_until"] <= p["predicted_at"]).all()
    # h=3: the last training label of a fold opened at least 4 bars before the boundary
    assert (res.folds["train_last_open"] <= res.folds["boundary"] - 4 * BAR).all()


@pytest.mark.parametrize("bars_after_boundary", [0, 1, 22])
def test_perturbing_the_future_leaves_past_predictions_bit_identical(bars_after_boundary):
    features, close, labels = _panel(n_bars=320, seed=3, horizon=2)
    config = WalkForwardConfig(**{**FAST.__dict__, "horizon_bars": 2})
    base = walk_forward(features, labels, config)

    # t on a fold boundary, just after one, and mid-fold: a leak of even one bar across a
    # boundary shows up in the first two.
    t = base.folds["boundary"].iloc[2] + bars_after_boundary * BAR
    # Everything not yet known at t is scrambled: every bar that closes after t (open_time >= t,
    # which includes all open_time > t), features and closes, and so every label resolving after t.
    rs = np.random.RandomState(99)
    future = features.index.get_level_values("open_time") >= t
    features2 = features.copy()
    features2.loc[future] = features2.loc[future] * rs.lognormal(0, 1, size=(future.sum(), 3)) + 1.0
    close2 = close.copy()
    close2[future] = close2[future] * rs.lognormal(0, 0.5, size=future.sum())
    labels2 = make_labels(close2, 2, 3600)
    pert = walk_forward(features2, labels2, config)

    past = base.predictions["predicted_at"] <= t
    assert past.sum() > 100
    # Labels of past rows may change (they resolve after t); their predictions must not.
    pd.testing.assert_frame_equal(base.predictions[past].drop(columns="label"),
                                  pert.predictions[pert.predictions["predicted_at"] <= t].drop(columns="label"),
                                  check_exact=True)
    # The perturbation really reached the later predictions, so the check above has teeth.
    later = ~past
    assert not np.array_equal(base.predictions.loc[later, "q50"].to_numpy(),
                              pert.predictions.loc[later, "q50"].to_numpy())
    # Folds trained by t saw the same rows.
    early = base.folds["boundary"] <= t
    cols = ["fold", "boundary", "train_rows", "train_first_open", "train_last_open"]
    pd.testing.assert_frame_equal(base.folds.loc[early, cols], pert.folds.loc[early, cols])


def test_labels_known_too_early_are_rejected():
    features, _, labels = _panel(n_bars=200)
    config = WalkForwardConfig(**{**FAST.__dict__, "horizon_bars": 3})  # labels are only h=1
    with pytest.raises(ValueError, match="label_known_at"):
        walk_forward(features, labels, config)


# ---------------------------------------------------------------- determinism

def test_deterministic_across_runs_row_order_and_threads():
    features, _, labels = _panel(n_bars=250, seed=1)
    a = walk_forward(features, labels, FAST, n_jobs=1)
    b = walk_forward(features, labels, FAST, n_jobs=1)
    shuffled = features.sample(frac=1.0, random_state=5)
    c = walk_forward(shuffled, labels.sample(frac=1.0, random_state=6), FAST, n_jobs=3)
    for other in (b, c):
        pd.testing.assert_frame_equal(a.predictions, other.predictions, check_exact=True)
        pd.testing.assert_frame_equal(a.folds, other.folds, check_exact=True)
        assert a.crossed_repaired == other.crossed_repaired
        assert a.rows_without_prediction == other.rows_without_prediction


# ---------------------------------------------------------------- quantiles

def test_quantiles_ordered_and_crossed_count_consistent():
    # Pure noise, tiny leaves, aggressive learning rate: independent quantile models overfit
    # and cross on some rows, which exercises the repair.
    rs = np.random.RandomState(7)
    index = _index(["a", "b", "c"], 200)
    features = pd.DataFrame(rs.normal(size=(len(index), 4)), index=index, columns=list("abcd"))
    labels = pd.DataFrame({"label": rs.normal(size=len(index)),
                           "label_known_at": index.get_level_values("open_time") + 2 * BAR}, index=index)
    config = WalkForwardConfig(initial_train_bars=60, retrain_every_bars=40, min_train_rows=50,
                               num_boost_round=60, learning_rate=0.5, num_leaves=31, min_data_in_leaf=2)
    res = walk_forward(features, labels, config)
    p = res.predictions
    assert res.crossed_repaired > 0
    assert res.crossed_repaired == int(p["crossed"].sum())
    assert p["crossed"].dtype == bool
    assert (p["q10"] <= p["q50"]).all() and (p["q50"] <= p["q90"]).all()


def test_coverage_is_calibrated_out_of_sample():
    rs = np.random.RandomState(11)
    index = _index([f"p{i}" for i in range(5)], 600)
    x = rs.normal(size=len(index))
    features = pd.DataFrame({"x": x, "junk": rs.normal(size=len(index))}, index=index)
    labels = pd.DataFrame({"label": 0.5 * x + rs.normal(size=len(index)),
                           "label_known_at": index.get_level_values("open_time") + 2 * BAR}, index=index)
    config = WalkForwardConfig(initial_train_bars=150, retrain_every_bars=150, min_train_rows=200,
                               num_boost_round=60, learning_rate=0.1)
    res = walk_forward(features, labels, config)
    p = res.predictions.dropna(subset=["label"])
    assert len(p) > 2000
    cov = {c: float((p["label"] <= p[c]).mean()) for c in QUANTILE_COLUMNS}
    assert 0.03 <= cov["q10"] <= 0.2
    assert 0.35 <= cov["q50"] <= 0.65
    assert 0.8 <= cov["q90"] <= 0.97
    # the model learned the signal: q50 tracks 0.5*x
    assert np.corrcoef(p["q50"], features.loc[p.index, "x"])[0, 1] > 0.8

    # fold metrics are computed on each fold's own labelled test rows
    for fold in res.folds.itertuples():
        rows = p[p["fold"] == fold.fold]
        assert fold.test_labelled_rows == len(rows)
        for alpha, col in zip(QUANTILES, QUANTILE_COLUMNS):
            assert getattr(fold, f"coverage_{col}") == pytest.approx((rows["label"] <= rows[col]).mean())
            assert getattr(fold, f"pinball_{col}") == pytest.approx(
                pinball_loss(rows["label"].to_numpy(), rows[col].to_numpy(), alpha))


# ---------------------------------------------------------------- skipping / validation

def test_folds_with_too_few_training_rows_are_skipped_and_counted():
    features, _, labels = _panel(n_pools=3, n_bars=300)
    # 3 pools: T_0 is the first 48-bar grid point after 96 bars (2025-03-07 00:00, 143 bars after
    # the first close), so fold 0 has < 3*143 labelled rows and fold 1 about 3*190; require 450.
    config = WalkForwardConfig(**{**FAST.__dict__, "min_train_rows": 450})
    res = walk_forward(features, labels, config)
    f = res.folds
    assert f["boundary"].iloc[0] == pd.Timestamp("2025-03-07", tz="UTC")
    assert f["skipped"].iloc[0] and not f["skipped"].iloc[-1]
    assert (f.loc[f["skipped"], "train_rows"] < 450).all()
    assert f.loc[f["skipped"], "skip_reason"].str.contains("min_train_rows").all()
    assert (f.loc[~f["skipped"], "skip_reason"] == "").all()
    assert f.loc[f["skipped"], "pinball_q50"].isna().all()

    skipped_folds = set(f.loc[f["skipped"], "fold"])
    assert not res.predictions["fold"].isin(skipped_folds).any()
    t0 = f["boundary"].iloc[0]
    predicted_at = features.index.get_level_values("open_time") + BAR
    n_before = int((predicted_at < t0).sum())
    n_skipped = int(f.loc[f["skipped"], "test_rows"].sum())
    assert n_skipped > 0
    assert res.rows_without_prediction == n_before + n_skipped
    assert len(res.predictions) + res.rows_without_prediction == len(features)


def test_history_shorter_than_initial_window_gives_no_folds():
    features, _, labels = _panel(n_bars=50)
    res = walk_forward(features, labels, FAST)
    assert res.folds.empty and res.predictions.empty
    assert res.rows_without_prediction == len(features)


def test_feature_rows_missing_from_labels_are_an_error():
    features, _, labels = _panel(n_bars=120)
    dropped = labels.index[[5, 130]]
    with pytest.raises(KeyError, match="2 feature rows") as err:
        walk_forward(features, labels.drop(dropped), FAST)
    assert "pool0" in str(err.value) and "pool1" in str(err.value)


# ---------------------------------------------------------------- live model

def test_live_model_is_the_last_fold_trained_on_labels_known_at_its_boundary():
    features, _, labels = _panel(n_pools=3, n_bars=200)
    res = walk_forward(features, labels, FAST, record_training_index=True)
    live = live_model(res, FAST)
    last = res.folds.iloc[-1]
    step = FAST.retrain_every_bars * BAR
    assert live.fold == last["fold"] == len(res.folds) - 1
    assert live.trained_until == last["boundary"] and live.valid_until == last["boundary"] + step
    last_pred = features.index.get_level_values(1).max() + BAR
    assert live.trained_until <= last_pred < live.valid_until
    # Fold m's training rows: the labels known at T_m, not at the panel's last close.
    assert live.train_rows == last["train_rows"] == len(res.training_index[live.fold])
    assert live.train_rows == int((labels["label"].notna() & (labels["label_known_at"] <= live.trained_until)).sum())
    assert live.model_strings == res.last_fold_models and len(live.model_strings) == len(QUANTILES)

    # Scrambling every label not yet known at trained_until leaves the boosters bit-identical.
    tampered = labels.copy()
    unknown = tampered["label_known_at"] > live.trained_until
    assert unknown.sum() > 3
    tampered.loc[unknown, "label"] = 1e6
    assert live_model(walk_forward(features, tampered, FAST), FAST).model_strings == live.model_strings
    # ...while changing a known label does change them (the test can fail).
    tampered.loc[tampered.index[10], "label"] = 1e6
    assert live_model(walk_forward(features, tampered, FAST), FAST).model_strings != live.model_strings


def test_live_model_predicts_its_fold_window_only_and_learns_the_signal():
    features, _, labels = _panel(n_pools=3, n_bars=300)
    live = live_model(walk_forward(features, labels, FAST), FAST)
    rs = np.random.RandomState(5)
    # Every open whose predicted_at (open + 1 bar) lies in [trained_until, valid_until).
    new_opens = pd.date_range(live.trained_until - BAR, live.valid_until - 2 * BAR, freq="h", tz="UTC")
    n = len(new_opens)
    assert n == FAST.retrain_every_bars
    new = pd.DataFrame({"x1": rs.normal(size=n), "x2": rs.normal(size=n), "x3": rs.normal(size=n)},
                       index=pd.DatetimeIndex(new_opens, name="open_time"))
    preds = live.predict(new)
    assert list(preds.columns) == [*QUANTILE_COLUMNS, "crossed"]
    assert (preds["q10"] <= preds["q50"]).all() and (preds["q50"] <= preds["q90"]).all()
    # The panel's next-bar return is 0.005 * x1: the median rises with x1.
    assert np.corrcoef(new["x1"], preds["q50"])[0, 1] > 0.8

    # A row predicted before trained_until may have been trained on: refused, naming it.
    seen = pd.DataFrame({"x1": [0.0], "x2": [0.0], "x3": [0.0]},
                        index=pd.DatetimeIndex([live.trained_until - 2 * BAR], name="open_time"))
    with pytest.raises(ValueError, match="in-sample") as err:
        live.predict(seen)
    assert str(live.trained_until - 2 * BAR) in str(err.value)
    # A row predicted at valid_until belongs to the next fold: refused, naming it.
    late = pd.DataFrame({"x1": [0.0, 0.0], "x2": [0.0, 0.0], "x3": [0.0, 0.0]},
                        index=pd.MultiIndex.from_tuples([("pool0", live.valid_until - 2 * BAR),
                                                         ("pool1", live.valid_until - BAR)],
                                                        names=["pool_id", "open_time"]))
    with pytest.raises(ValueError, match="valid_until") as err:
        live.predict(late)
    assert "1 rows" in str(err.value) and "pool1" in str(err.value) and "pool0" not in str(err.value)


def test_no_live_model_without_a_fold_or_when_the_last_fold_is_skipped():
    features, _, labels = _panel(n_pools=1, n_bars=60)
    assert live_model(walk_forward(features, labels, FAST), FAST) is None  # no boundary at all
    features, _, labels = _panel(n_pools=3, n_bars=300)
    res = walk_forward(features, labels, WalkForwardConfig(**{**FAST.__dict__, "min_train_rows": 10**6}))
    assert res.folds["skipped"].all() and res.last_fold_models is None
    assert live_model(res, FAST) is None


# ---------------------------------------------------------------- calibration hooks

CAL = CalibrationConfig(calibration_window_bars=96, calibration_min_rows=100)


def test_calibrated_walk_forward_accounts_for_every_row():
    features, _, labels = _panel(n_pools=4, n_bars=400)
    raw = walk_forward(features, labels, FAST)
    cal = calibrate_walk_forward(raw, labels, CAL)
    p = cal.predictions
    assert list(p.columns) == list(CALIBRATED_PREDICTION_COLUMNS)
    # The first fold has no earlier out-of-sample labels: its rows are left out and counted.
    assert cal.rows_uncalibrated == int((raw.predictions["fold"] == 0).sum()) > 0
    assert len(p) + cal.rows_without_prediction + cal.rows_uncalibrated == len(features)
    assert list(cal.calibration["fold"]) == list(raw.folds["fold"])
    np.testing.assert_array_equal(p["q10_raw"], raw.predictions.loc[p.index, "q10"])
    np.testing.assert_array_equal(p["q50"], raw.predictions.loc[p.index, "q50"])
    offsets = cal.calibration.set_index("fold")
    for fold, rows in p.groupby("fold"):
        expected = np.minimum(rows["q10_raw"] + offsets.loc[fold, "offset_q10"], rows["q50"])
        np.testing.assert_allclose(rows["q10"], expected)
    assert ((p["q10"] <= p["q50"]) & (p["q50"] <= p["q90"])).all()
    assert (pd.DatetimeIndex(p["label_known_at"]) == p.index.get_level_values("open_time") + 2 * BAR).all()


def test_live_model_carries_offsets_fitted_on_labels_known_at_trained_until():
    features, _, labels = _panel(n_pools=3, n_bars=300)
    raw = walk_forward(features, labels, FAST)
    live = calibrate_live_model(live_model(raw, FAST), raw.predictions, labels, CAL)
    assert live.calibration is not None and live.calibration.fitted_at == live.trained_until
    known = labels.loc[raw.predictions.index, "label_known_at"]
    in_window = (known <= live.trained_until) & (known > live.trained_until - 96 * BAR) & raw.predictions["label"].notna()
    assert live.calibration.evidence_rows == int(in_window.sum())
    # They are the last fold's own offsets, exactly.
    table = calibrate_walk_forward(raw, labels, CAL).calibration.set_index("fold")
    assert table.loc[live.fold, "calibrated"]
    assert (live.calibration.q10, live.calibration.q90) == (table.loc[live.fold, "offset_q10"],
                                                            table.loc[live.fold, "offset_q90"])
    assert live.calibration.evidence_rows == table.loc[live.fold, "evidence_rows"]

    new_opens = pd.date_range(live.trained_until, periods=5, freq="h", tz="UTC")
    new = pd.DataFrame(np.random.RandomState(2).normal(size=(5, 3)), columns=["x1", "x2", "x3"],
                       index=pd.DatetimeIndex(new_opens, name="open_time"))
    preds = live.predict(new)
    np.testing.assert_allclose(preds["q10"], np.minimum(preds["q10_raw"] + live.calibration.q10, preds["q50"]))
    np.testing.assert_allclose(preds["q90"], np.maximum(preds["q90_raw"] + live.calibration.q90, preds["q50"]))

    # Labels not yet known at trained_until cannot move the offsets; a known one can.
    tampered = raw.predictions.copy()
    tampered.loc[(known > live.trained_until).to_numpy(), "label"] = 9.0
    again = calibrate_live_model(live_model(raw, FAST), tampered, labels, CAL)
    assert again.calibration == live.calibration
    tampered.loc[in_window.to_numpy(), "label"] = 9.0
    assert calibrate_live_model(live_model(raw, FAST), tampered, labels, CAL).calibration != live.calibration

    # Too little evidence: no live model is published rather than an uncalibrated one.
    assert calibrate_live_model(live, raw.predictions, labels, CalibrationConfig(calibration_min_rows=10**6)) is None
