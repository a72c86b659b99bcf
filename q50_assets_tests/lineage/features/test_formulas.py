import numpy as np
import pandas as pd
import pytest

from q50_assets.lineage.features.formulas import (
    COLLECTOR_VECTOR_FEATURES,
    COLLECTOR_VECTOR_TARGETS,
    FLOW_FEATURES,
    STORE_FIELDS,
    CollectorTargetLeak,
    asof_collector_features,
    feature_expressions,
    feature_set_version,
    mark_warmup,
    may_be_missing,
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


T0 = pd.Timestamp("2025-09-01", tz="UTC")
H = pd.Timedelta(hours=1)


def test_optional_feature_groups_only_when_switched_on():
    base = feature_expressions()
    full = feature_expressions(flow_features=True, collector_features=True)
    assert not any(may_be_missing(name) for name in base)
    extra = set(full) - set(base)
    assert extra == set(FLOW_FEATURES) | {f"cfv_{c}" for c in COLLECTOR_VECTOR_FEATURES}
    assert all(may_be_missing(name) for name in extra)
    assert feature_set_version(full, 35) != feature_set_version(base, 35)


def test_collector_targets_never_become_features():
    text = " ".join(f"{k}={v}" for k, v in feature_expressions(flow_features=True, collector_features=True).items())
    for target in COLLECTOR_VECTOR_TARGETS:
        assert target not in text
    grid = pd.date_range(T0, periods=4, freq="h", name="open_time")
    vectors = pd.DataFrame({"timestamp": [int(T0.timestamp())], "created_at": [T0], "rsi_14": [0.5],
                            "price_return_1h": [0.2]})
    with pytest.raises(CollectorTargetLeak, match="price_return_1h"):
        asof_collector_features(grid, 3600, vectors)
    with pytest.raises(CollectorTargetLeak, match="feature_vector_json"):
        asof_collector_features(grid, 3600, vectors.drop(columns="price_return_1h").assign(feature_vector_json="{}"))


def test_a_collector_vector_is_known_only_from_its_created_at():
    """Bar t is predicted at its close t + 1h: it may use a vector only if created_at <= t + 1h."""
    grid = pd.date_range(T0, periods=6, freq="h", name="open_time")
    vectors = pd.DataFrame({
        "timestamp": [int((T0 + k * H).timestamp()) for k in (0, 1, 1, 5)],
        "created_at": [T0 + H,                               # exactly bar 0's close: usable from bar 0
                       T0 + 2 * H + pd.Timedelta(seconds=1),  # a second after bar 1's close: from bar 2
                       pd.NaT,                                # never placed in time: never used
                       T0 + 10 * H],                          # after every bar here: never used
        "rsi_14": [1.0, 2.0, 9.0, 4.0],
        "hour_of_day": [0, 1, 1, 5],
    })
    out = asof_collector_features(grid, 3600, vectors)
    assert list(out.columns) == [f"cfv_{c}" for c in COLLECTOR_VECTOR_FEATURES]
    assert out["cfv_rsi_14"].tolist() == [1.0, 1.0, 2.0, 2.0, 2.0, 2.0]
    assert out["cfv_hour_of_day"].tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert out["cfv_liquidity_stability"].isna().all()  # a column the collector did not send: missing
    early = asof_collector_features(pd.date_range(T0 - 3 * H, periods=2, freq="h"), 3600, vectors)
    assert early["cfv_rsi_14"].isna().all()  # before any vector was written
