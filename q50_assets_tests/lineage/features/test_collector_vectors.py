"""model.collector_feature_vectors: the collector's own pool_feature_vectors feed the features (and so the
model) on both databases -- each bar only the vector written by the bar's close, never the
collector's forward-looking targets."""

import numpy as np
import pandas as pd
import pytest
from dagster import DagsterInstance, materialize
from sqlalchemy import select

from q50_assets.lineage.features.asset import qlib_features
from q50_assets.lineage.ohlcv.asset import ohlcv_bars
from q50_assets.lineage.common.partitions import POOLS_PARTITION_NAME
from q50_assets.lineage.trades.asset import pool_trades
from q50_assets.db.collector_models import collector_feature_vectors, ohlcv_data
from q50_assets.db.engine import get_engine
from q50_assets.definitions import build_resources
from q50_assets.lineage.features.formulas import COLLECTOR_VECTOR_TARGETS
from q50_assets.storage.collector import CollectorReader
from q50_assets.lineage.model.step import ModelConfig, load_training_panel
from q50_assets_tests.collector_schema import create_collector_vectors_table
from q50_assets_tests.conftest import settings_for

POOL = "solana_F5vAiFCP82RQetoxK7ax4dNQCwqk2yez6aisAbFPenJ2"
H = pd.Timedelta(hours=1)


@pytest.fixture
def settings(collector_url, tmp_path):
    return settings_for(collector_url, tmp_path, Q50__MODEL__COLLECTOR_FEATURE_VECTORS="true")


def _features(settings) -> pd.DataFrame:
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(POOLS_PARTITION_NAME, [POOL])
        result = materialize([ohlcv_bars, pool_trades, qlib_features], partition_key=POOL,
                             resources=build_resources(settings), instance=instance)
        return result.output_for_node("qlib_features")[POOL]


def test_collector_vectors_enter_as_of_created_at_and_their_targets_never(settings, collector_url):
    engine = get_engine(collector_url)
    create_collector_vectors_table(engine)
    with engine.connect() as conn:
        bars = pd.DataFrame(conn.execute(select(ohlcv_data.c.timestamp, ohlcv_data.c.close_price).where(
            ohlcv_data.c.pool_id == POOL, ohlcv_data.c.timeframe == "1h").order_by(ohlcv_data.c.timestamp)).all(),
            columns=["timestamp", "close"])
    opens = pd.to_datetime(bars["timestamp"], unit="s", utc=True)
    # The collector writes each bar's vector 30 min after its close, every third one exactly at it;
    # its target is the bar's true next return (a perfect leak if it ever became a feature).
    delay = [pd.Timedelta(0) if i % 3 == 0 else pd.Timedelta(minutes=30) for i in range(len(bars))]
    rows = pd.DataFrame({"pool_id": POOL, "timestamp": bars["timestamp"], "feature_set_version": "v1",
                         "rsi_14": np.arange(len(bars)) / 1000.0, "hour_of_day": opens.dt.hour,
                         "price_return_1h": (bars["close"].shift(-1) / bars["close"] - 1).fillna(0.0).round(6),
                         "created_at": opens + H + pd.Series(delay)})
    with engine.begin() as conn:  # the test plays the collector
        conn.execute(collector_feature_vectors.insert(), rows.astype(object).to_dict("records"))

    reader = CollectorReader(url=collector_url).collector_feature_vectors(POOL)
    assert not set(COLLECTOR_VECTOR_TARGETS) & set(reader.columns)  # the targets are never even read

    frame = _features(settings)
    # Expected independently: for the bar opening at t, the newest vector created by t + 1h.
    created = pd.DatetimeIndex(rows["created_at"])
    expected = [rows["rsi_14"][created <= t + H].iloc[-1] if (created <= t + H).any() else np.nan for t in frame.index]
    np.testing.assert_allclose(frame["cfv_rsi_14"].to_numpy(), np.asarray(expected, dtype=float), atol=1e-6)
    real = ~frame["is_filled"]
    # A bar whose own vector came 30 min late sees the previous bar's, never its own.
    late = [t for t, d in zip(opens, delay) if d > pd.Timedelta(0) and t in frame.index and real[t]]
    own = dict(zip(opens, rows["rsi_14"]))
    assert late and all(abs(frame.loc[t, "cfv_rsi_14"] - own[t]) > 1e-9 for t in late)
    assert not any(t for t in frame.columns if "return" in t and t.startswith("cfv_"))

    # Rewriting the targets changes no feature; the model's panel has no target column.
    with engine.begin() as conn:
        conn.execute(collector_feature_vectors.update().values(price_return_1h=0.5, price_return_4h=-0.5,
                                                               volume_change_1h=3.0))
    again = _features(settings)
    pd.testing.assert_frame_equal(frame.drop(columns="feature_vector_id"), again.drop(columns="feature_vector_id"))
    resources = build_resources(settings)
    panel, _, _ = load_training_panel(resources["qlib_store"], ModelConfig.of(settings))
    assert "cfv_rsi_14" in panel.columns and panel["cfv_rsi_14"].notna().any()
    assert not [c for c in panel.columns if any(t in c for t in COLLECTOR_VECTOR_TARGETS)]


def test_without_the_collectors_table_the_collector_features_are_missing(settings):
    frame = _features(settings)
    cfv = [c for c in frame.columns if c.startswith("cfv_")]
    assert cfv and frame[cfv].isna().all().all()


def test_trading_history_pointers_follow_the_setting_and_the_collectors_rows(collector_url):
    db = CollectorReader(url=collector_url)
    t0 = pd.Timestamp("2025-10-01", tz="UTC")
    opens = pd.date_range(t0, periods=3, freq="h")
    own = [11, None, 13]  # the project's vectors behind three decisions (one bar had none)

    frame, summary = db.feature_vector_pointers(POOL, opens, own, use_collector=True)
    assert not summary["collector_table"]  # no collector table: the project's vectors
    assert [None if pd.isna(v) else v for v in frame["feature_vector_table"]] == [
        "q50_feature_vectors", None, "q50_feature_vectors"]

    engine = get_engine(collector_url)
    create_collector_vectors_table(engine)
    epoch = [int(t.timestamp()) for t in opens]
    with engine.begin() as conn:  # the test plays the collector: bar 0 in two versions, bar 1 once, bar 2 none
        ids = [conn.execute(collector_feature_vectors.insert().values(
            pool_id=POOL, timestamp=e, feature_set_version=v, created_at=c)).inserted_primary_key[0]
            for e, v, c in [(epoch[0], "v2", opens[0] + 2 * H), (epoch[0], "v1", opens[0] + H),
                            (epoch[1], "v1", opens[1] + H)]]
    frame, summary = db.feature_vector_pointers(POOL, opens, own, use_collector=True)
    assert frame["feature_vector_id"].tolist() == [ids[0], ids[2], 13]  # bar 0: v2, the newest (created last)
    assert frame["feature_vector_table"].tolist() == ["pool_feature_vectors", "pool_feature_vectors",
                                                      "q50_feature_vectors"]
    assert frame["q50_feature_vector_id"].tolist() == [11, pd.NA, 13]
    assert (summary["rows_pointing_at_collector"], summary["rows_pointing_at_project"]) == (2, 1)

    frame, summary = db.feature_vector_pointers(POOL, opens, own, use_collector=False)
    assert frame["feature_vector_id"].tolist() == [11, pd.NA, 13] and summary["rows_pointing_at_collector"] == 0
