import numpy as np
import pandas as pd

from q50_assets.research.features import (
    STORE_FIELDS,
    feature_expressions,
    feature_set_version,
    mark_warmup,
    to_bar_grid,
    warmup_bars,
)


def _bars(opens_hours, closes):
    index = pd.DatetimeIndex([pd.Timestamp("2025-09-01", tz="UTC") + pd.Timedelta(hours=h) for h in opens_hours],
                             name="open_time")
    c = np.asarray(closes, dtype=float)
    return pd.DataFrame({"open": c, "high": c * 1.1, "low": c * 0.9, "close": c, "volume": 100.0,
                         "ohlcv_id": np.arange(len(c))}, index=index)


def test_missing_hours_become_flat_zero_volume_bars_flagged_filled():
    grid = to_bar_grid(_bars([0, 1, 4], [1.0, 2.0, 3.0]), 3600)
    assert list(grid.columns) == list(STORE_FIELDS)
    assert len(grid) == 5 and grid.index.freq is not None or len(grid) == 5
    assert grid["filled"].tolist() == [0, 0, 1, 1, 0]
    assert grid.loc[grid["filled"] == 1, ["open", "high", "low", "close"]].eq(2.0).all().all()
    assert grid.loc[grid["filled"] == 1, "volume"].eq(0).all()
    assert grid["vwap"].iloc[0] == (1.1 + 0.9 + 1.0) / 3


def test_warmup_marks_the_first_bars_of_the_pool():
    index = pd.date_range("2025-09-01", periods=40, freq="h", tz="UTC")
    marks = mark_warmup(index, index[0], 3600, warmup_bars(26))
    assert marks.sum() == 35 and marks[:35].all() and not marks[35:].any()


def test_feature_set_version_follows_the_formulas():
    a = feature_expressions(14, 12, 26)
    b = feature_expressions(21, 12, 26)
    assert feature_set_version(a, 35) == feature_set_version(dict(a), 35)
    assert feature_set_version(a, 35) != feature_set_version(b, 35)
    assert {"vol_raw", "vol_risk", "vol_rel", "mom_5", "mom_10", "mom_25", "OPEN1", "VOLUME1", "RSV1", "RSV2",
            "RSV3", "rsi_14", "macd", "macd_signal", "macd_hist", "boll_pos"} <= set(a)
    assert "rsi_21" in b
