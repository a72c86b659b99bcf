"""Signals from the live model are the signals a from-scratch run would write: the live model is
the walk-forward's last fold (m), its rows carry fold m, and bars reaching the next fold get no
signal until the model retrains, counted per pool, never dropped silently.

A synthetic seeded panel: the model trained on a database as of one time, the pools' feature
frames as the collector has them later (some bars in fold m, some past it)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from q50_assets.lineage.model.calibration import CalibrationConfig
from q50_assets.lineage.model.step import TrainedQ50Model
from q50_assets.lineage.model.walk_forward import (
    calibrate_live_model,
    calibrate_walk_forward,
    fold_boundaries,
    live_model,
    walk_forward,
)
from q50_assets.lineage.signals.rules import SignalConfig
from q50_assets.lineage.signals.step import pool_predictions, pool_row_counts, signals_for_pools
from q50_assets_tests.lineage.model.synthetic_panel import BAR, FAST, START, as_of, synthetic_panel

CAL = CalibrationConfig(calibration_window_bars=96, calibration_min_rows=100)
COLUMNS = ["q10", "q50", "q90", "predicted_at", "fold"]


def _model(features: pd.DataFrame, labels: pd.DataFrame, run_id: str) -> TrainedQ50Model:
    """The model stage's output on this panel (walk-forward, recalibration, calibrated live model)."""
    raw = walk_forward(features, labels, FAST)
    live = live_model(raw, FAST)
    live = calibrate_live_model(live, raw.predictions, labels, CAL) if live is not None else None
    return TrainedQ50Model(run_id=run_id, result=calibrate_walk_forward(raw, labels, CAL), live=live)


def _frames(features: pd.DataFrame, filled: pd.MultiIndex) -> dict[str, pd.DataFrame]:
    """Per pool, the feature stage's frame: features, is_filled (``filled`` rows), no warm-up left
    in this panel, a vol_risk and a feature_vector_id."""
    frames = {}
    for pool_id, frame in features.groupby(level="pool_id"):
        frame = frame.droplevel("pool_id").copy()
        frame["is_filled"] = frame.index.isin(filled.get_level_values("open_time")[filled.get_level_values(0) == pool_id])
        frame["is_warmup"] = False
        frame["vol_risk"] = 1e-4 * (1.0 + frame["x2"].abs())
        frame["feature_vector_id"] = np.arange(len(frame), dtype=np.int64)
        frames[pool_id] = frame
    return frames


@pytest.fixture(scope="module")
def setting():
    features, _, labels = synthetic_panel(n_pools=3, n_bars=420, seed=8)
    boundary = fold_boundaries(START + BAR, START + 420 * BAR, FAST)[3]
    step = FAST.retrain_every_bars * BAR
    # The model ran when the newest bar closed 5 bars after boundary T_m ...
    trained = _model(*as_of(features, labels, boundary + 4 * BAR), run_id="then")
    assert trained.live.trained_until == boundary and trained.live.valid_until == boundary + step
    # ... the collector now holds bars to 7 bars past the next boundary; one new bar of pool1 is a
    # filled (no trade) bar, which neither path ever predicts.
    now_f, now_l = as_of(features, labels, boundary + step + 6 * BAR)
    filled = pd.MultiIndex.from_tuples([("pool1", boundary + 20 * BAR)], names=now_f.index.names)
    real_f, real_l = now_f.drop(filled), now_l.drop(filled)
    # A from-scratch run on the database when the last bar of fold m had closed (real bars only,
    # as the model stage trains on them).
    scratch = _model(*as_of(real_f, real_l, boundary + step - 2 * BAR), run_id="scratch")
    return {"trained": trained, "scratch": scratch, "frames": _frames(now_f, filled), "filled": filled,
            "valid_until": boundary + step}


def test_live_rows_are_the_from_scratch_runs_fold_m_rows(setting):
    trained, scratch, frames = setting["trained"], setting["scratch"], setting["frames"]
    m = trained.live.fold
    got = pool_predictions(trained, frames, BAR)
    expected = pool_predictions(scratch, {p: f[f.index + BAR < setting["valid_until"]] for p, f in frames.items()}, BAR)
    assert scratch.live.fold == m  # the later run's last fold is the same fold
    for pool_id, frame in frames.items():
        rows = got[pool_id]
        assert (rows["predicted_at"] < setting["valid_until"]).all()
        # Every real bar of fold m's window is predicted, with fold m; the filled bar is not.
        window = frame.index[(frame.index + BAR >= trained.live.trained_until) & ~frame["is_filled"]
                             & (frame.index + BAR < setting["valid_until"])]
        assert rows.index[rows["fold"] == m].equals(window)
        # Identical to what the from-scratch run writes: same rows, bit-identical values.
        pd.testing.assert_frame_equal(rows[COLUMNS], expected[pool_id][COLUMNS], check_exact=True, check_freq=False)

    # And so are the signals themselves (the model run's id aside).
    config = SignalConfig()
    now = signals_for_pools(trained, frames, config, BAR, dict.fromkeys(frames))
    then = signals_for_pools(scratch, frames, config, BAR, dict.fromkeys(frames))
    for pool_id in frames:
        a, b = now[pool_id], then[pool_id]
        assert (b.index + BAR < setting["valid_until"]).all()  # the later run's live model stops there too
        pd.testing.assert_frame_equal(a.drop(columns="model_run"), b.drop(columns="model_run"),
                                      check_exact=True, check_freq=False)


def test_bars_of_the_next_fold_wait_for_a_retrain_and_are_counted(setting):
    trained, frames = setting["trained"], setting["frames"]
    got = pool_predictions(trained, frames, BAR)
    live_rows = 0
    for pool_id, frame in frames.items():
        counts = pool_row_counts(trained, pool_id, frame, BAR)
        late = frame.index[(frame.index + BAR >= setting["valid_until"]) & ~frame["is_filled"]]
        assert counts["rows_awaiting_next_fold"] == len(late) == 8  # predicted at valid_until + 0..7 bars
        assert not got[pool_id].index.isin(late).any()
        new = ~got[pool_id].index.isin(trained.result.predictions.xs(pool_id, level="pool_id").index)
        assert counts["live_model_signals"] == int(new.sum()) > 0
        assert (got[pool_id].loc[new, "fold"] == trained.live.fold).all()
        live_rows += counts["live_model_signals"]
    # 3 pools x (fold m's 48 bars - the 6 the run saw, predicted at T_m + 0..5 bars) - the filled bar.
    assert live_rows == 3 * (FAST.retrain_every_bars - 6) - 1
    # The live model itself refuses them rather than predicting a fold it was not trained for.
    late = frames["pool0"][frames["pool0"].index + BAR >= setting["valid_until"]]
    with pytest.raises(ValueError, match="valid_until"):
        trained.live.predict(late[trained.live.feature_columns])


def test_no_live_model_means_no_new_rows_and_nothing_counted(setting):
    trained, frames = setting["trained"], setting["frames"]
    bare = TrainedQ50Model(run_id="bare", result=trained.result, live=None)
    got = pool_predictions(bare, frames, BAR)
    for pool_id, frame in frames.items():
        assert got[pool_id].index.equals(trained.result.predictions.xs(pool_id, level="pool_id").index)
        assert pool_row_counts(bare, pool_id, frame, BAR) == {"live_model_signals": 0, "rows_awaiting_next_fold": 0}
