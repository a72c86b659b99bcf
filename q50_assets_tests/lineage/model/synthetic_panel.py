"""A small seeded synthetic panel for the model's tests, and the same panel as a database holding
bars only up to a given time would give it (the incremental path's earlier state)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from q50_assets.lineage.model.walk_forward import WalkForwardConfig, make_labels

BAR = pd.Timedelta(hours=1)
START = pd.Timestamp("2025-03-01", tz="UTC")

# Small and quick, but enough trees to fit a linear signal.
FAST = WalkForwardConfig(initial_train_bars=96, retrain_every_bars=48, min_train_rows=100,
                         num_boost_round=40, learning_rate=0.1, min_data_in_leaf=20)


def panel_index(pools, n_bars, start=START) -> pd.MultiIndex:
    opens = pd.date_range(start, periods=n_bars, freq="h", tz="UTC", unit="us")
    return pd.MultiIndex.from_product([list(pools), opens], names=["pool_id", "open_time"])


def synthetic_panel(n_pools=4, n_bars=300, seed=0, horizon=1, start=START):
    """Closes whose next-bar return is 0.005*x1 + noise; features x1 (signal), x2 (noise), x3 (NaNs).

    Returns (features, close, labels) on a full hourly grid with a few missing closes.
    """
    rs = np.random.RandomState(seed)
    index = panel_index([f"pool{i}" for i in range(n_pools)], n_bars, start)
    x1 = rs.normal(size=(n_pools, n_bars))
    ret = 0.005 * x1 + 0.01 * rs.normal(size=(n_pools, n_bars))
    close = 100.0 * np.cumprod(np.concatenate([np.ones((n_pools, 1)), 1 + ret[:, :-1]], axis=1), axis=1)
    close = close.ravel()
    close[rs.rand(close.size) < 0.02] = np.nan  # missing bars
    features = pd.DataFrame({"x1": x1.ravel(), "x2": rs.normal(size=close.size),
                             "x3": rs.normal(size=close.size)}, index=index)
    features.loc[rs.rand(close.size) < 0.1, "x3"] = np.nan
    close_s = pd.Series(close, index=index, name="close")
    return features, close_s, make_labels(close_s, horizon, 3600)


def as_of(features: pd.DataFrame, labels: pd.DataFrame, last_open: pd.Timestamp,
          bar: pd.Timedelta = BAR) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(features, labels) as a database whose newest bar opened at ``last_open`` gives them: later
    rows absent, and every label not yet known at that bar's close unknown (NaN). Features must
    be past-only (they are, here and in the feature stage), so the rows kept are unchanged."""
    keep = features.index.get_level_values("open_time") <= last_open
    kept = features[keep]
    known = labels.loc[kept.index].copy()
    known.loc[pd.DatetimeIndex(known["label_known_at"]) > last_open + bar, "label"] = np.nan
    return kept, known
