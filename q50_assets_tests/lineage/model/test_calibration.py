"""Past-only recalibration of q10/q90: the conformal ranks, past-only evidence, the first fold left
out and counted, coverage back to nominal on synthetic too-narrow intervals and on the real sample."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from q50_assets.lineage.model.calibration import (
    CalibrationConfig,
    QuantileOffsets,
    calibrate_folds,
    calibration_evidence,
    fit_offsets,
)
from q50_assets.lineage.model.walk_forward import calibrate_walk_forward
from q50_assets_tests.lineage.real_sample import real_walk_forward

T0 = pd.Timestamp("2025-05-01", tz="UTC")
H = pd.Timedelta(hours=1)
Z90 = 1.2815515655446004  # standard normal 0.9 quantile


def _narrow_predictions(n_pools=10, n_bars=24 * 30, fold_bars=24, shrink=0.7, seed=0):
    """Labels N(mu_t, sd_t) with a known mean and a sd that varies across pools; the 'model' knows
    both but states q10/q90 at ``shrink`` x the true distance: too narrow, like the real one."""
    rng = np.random.default_rng(seed)
    opens = pd.date_range(T0, periods=n_bars, freq="h")
    index = pd.MultiIndex.from_product([[f"p{i}" for i in range(n_pools)], opens], names=["pool_id", "open_time"])
    mu = 0.002 * rng.normal(size=len(index))
    sd = np.repeat(np.linspace(0.01, 0.03, n_pools), n_bars)
    label = mu + sd * rng.normal(size=len(index))
    open_time = index.get_level_values("open_time")
    predictions = pd.DataFrame({
        "q10": mu - shrink * Z90 * sd, "q50": mu, "q90": mu + shrink * Z90 * sd,
        "fold": ((open_time - T0) // (fold_bars * H)).astype(np.int64),
        "predicted_at": open_time + H, "label": label,
    }, index=index)
    known_at = pd.Series(open_time + 2 * H, index=index)
    boundaries = pd.Series([T0 + H + k * fold_bars * H for k in range(n_bars // fold_bars)])
    return predictions, known_at, boundaries


def test_offsets_are_the_conformal_order_statistics():
    ev = pd.DataFrame({"q10": np.zeros(9), "q50": np.zeros(9), "q90": np.zeros(9),
                       "label": np.arange(1.0, 10.0)})
    cfg = CalibrationConfig(calibration_min_rows=10)
    assert fit_offsets(ev, T0, cfg) is None  # 9 < min_rows
    ev20 = pd.DataFrame({"q10": np.zeros(19), "q50": np.zeros(19), "q90": np.zeros(19),
                         "label": np.arange(1.0, 20.0)})
    off = fit_offsets(ev20, T0, cfg)
    # n = 19: k_low = floor(0.1 * 20) = 2 -> 2nd smallest; k_high = ceil(0.9 * 20) = 18 -> 18th smallest.
    assert (off.q10, off.q90, off.evidence_rows) == (2.0, 18.0, 19)
    # The raw columns are used when present (evidence already carrying recalibrated quantiles).
    shifted = ev20.assign(q10_raw=ev20["q10"] - 1.0, q10=ev20["q10"] + 100.0)
    assert fit_offsets(shifted, T0, cfg).q10 == 3.0


def test_apply_keeps_order_and_raw_values():
    frame = pd.DataFrame({"q10": [-0.01, -0.001], "q50": [0.0, 0.0], "q90": [0.01, 0.001]})
    out = QuantileOffsets(T0, 100, T0 - 24 * H, q10=0.005, q90=-0.004).apply(frame)
    np.testing.assert_allclose(out["q10"], [-0.005, 0.0])   # second row clipped at q50
    np.testing.assert_allclose(out["q90"], [0.006, 0.0])
    np.testing.assert_array_equal(out["q10_raw"], frame["q10"])
    np.testing.assert_array_equal(out["q90_raw"], frame["q90"])
    assert (out["q10"] <= out["q50"]).all() and (out["q50"] <= out["q90"]).all()


def test_too_narrow_intervals_are_recalibrated_to_nominal_coverage():
    predictions, known_at, boundaries = _narrow_predictions()
    y = predictions["label"]
    raw_cov = ((y <= predictions["q10"]).mean(), (y <= predictions["q90"]).mean())
    assert raw_cov[0] > 0.15 and raw_cov[1] < 0.85  # the raw model is clearly off
    out, table, left_out = calibrate_folds(predictions, known_at, boundaries, CalibrationConfig())
    # Fold 0 has no earlier out-of-sample labels: left out and counted, never silently dropped.
    assert left_out == int((predictions["fold"] == 0).sum())
    assert not table.loc[0, "calibrated"] and table.loc[1:, "calibrated"].all()
    assert len(out) + left_out == len(predictions)
    cov10 = float((out["label"] <= out["q10"]).mean())
    cov90 = float((out["label"] <= out["q90"]).mean())
    assert abs(cov10 - 0.1) <= 0.02 and abs(cov90 - 0.9) <= 0.02
    # The table reports both coverages per fold, and they agree with the rows.
    fold5 = out[out["fold"] == 5]
    assert table.loc[5, "coverage_q10"] == pytest.approx((fold5["label"] <= fold5["q10"]).mean())
    assert table.loc[5, "coverage_raw_q10"] == pytest.approx((fold5["label"] <= fold5["q10_raw"]).mean())
    assert (out["q10"] < out["q10_raw"]).all() and (out["q90"] > out["q90_raw"]).all()  # widened
    assert (out["label_known_at"] == known_at.loc[out.index]).all()


def test_evidence_is_past_only_and_within_the_window():
    predictions, known_at, boundaries = _narrow_predictions(seed=1)
    cfg = CalibrationConfig(calibration_window_bars=48)
    at = boundaries[10]
    ev = calibration_evidence(predictions, known_at, at, cfg)
    assert (known_at.loc[ev.index] <= at).all() and (known_at.loc[ev.index] > at - 48 * H).all()
    assert len(ev) == 10 * 48

    # Scrambling every label not yet known at a boundary leaves that fold's offsets bit-identical...
    base = calibrate_folds(predictions, known_at, boundaries, cfg)[1].set_index("fold")
    tampered = predictions.copy()
    later = (known_at > at).to_numpy()
    tampered.loc[later, "label"] = 5.0
    after = calibrate_folds(tampered, known_at, boundaries, cfg)[1].set_index("fold")
    for col in ("offset_q10", "offset_q90", "evidence_rows"):
        pd.testing.assert_series_equal(base.loc[:10, col], after.loc[:10, col])
    # ...while a label known before the boundary does move them (the check can fail).
    tampered.loc[(known_at <= at).to_numpy() & (known_at > at - 48 * H).to_numpy(), "label"] = 5.0
    moved = calibrate_folds(tampered, known_at, boundaries, cfg)[1].set_index("fold")
    assert moved.loc[10, "offset_q10"] != base.loc[10, "offset_q10"]


def test_a_thin_window_reaches_back_to_the_most_recent_min_rows_labels():
    """One pool gives 24 labels a day: a 1-day window is too thin, so the evidence is the 50 most
    recently known labels (still none known after the boundary)."""
    predictions, known_at, boundaries = _narrow_predictions(n_pools=1, n_bars=24 * 10)
    cfg = CalibrationConfig(calibration_window_bars=24, calibration_min_rows=50)
    at = boundaries[5]
    ev = calibration_evidence(predictions, known_at, at, cfg)
    eligible = known_at[(known_at <= at) & predictions["label"].notna()]
    assert len(ev) == 50 and (ev["label_known_at"] <= at).all()
    assert ev["label_known_at"].min() == eligible.sort_values().iloc[-50]
    offsets = fit_offsets(ev, at, cfg)
    assert offsets.evidence_rows == 50 and offsets.evidence_from == ev["label_known_at"].min()
    _, table, left_out = calibrate_folds(predictions, known_at, boundaries, cfg)
    # At the boundaries of folds 0-2 fewer than 50 out-of-sample labels are known (0, 24, 48): left out.
    assert table["calibrated"].tolist() == [False] * 3 + [True] * 7
    assert left_out == 3 * 24


def test_bad_inputs_are_named():
    predictions, known_at, boundaries = _narrow_predictions(n_bars=96)
    with pytest.raises(KeyError, match="label_known_at"):
        calibrate_folds(predictions, known_at.iloc[5:], boundaries, CalibrationConfig())
    with pytest.raises(KeyError, match="fold 3"):
        calibrate_folds(predictions, known_at, boundaries.iloc[:3], CalibrationConfig())
    with pytest.raises(ValueError, match="min_rows"):
        CalibrationConfig(calibration_min_rows=5)


def test_real_sample_coverage_is_nominal_after_recalibration():
    raw, labels = real_walk_forward()
    before = raw.predictions.dropna(subset=["label"])
    cal = calibrate_walk_forward(raw, labels, CalibrationConfig())
    after = cal.predictions.dropna(subset=["label"])
    raw_gap = max(abs((before["label"] <= before["q10"]).mean() - 0.1), abs((before["label"] <= before["q90"]).mean() - 0.9))
    cov10 = (after["label"] <= after["q10"]).mean()
    cov90 = (after["label"] <= after["q90"]).mean()
    assert abs(cov10 - 0.1) <= 0.02 and abs(cov90 - 0.9) <= 0.02
    assert max(abs(cov10 - 0.1), abs(cov90 - 0.9)) < raw_gap
    assert cal.rows_uncalibrated > 0
    assert len(cal.predictions) + cal.rows_uncalibrated == len(raw.predictions)
    assert (cal.predictions["q50"] == raw.predictions.loc[cal.predictions.index, "q50"]).all()
