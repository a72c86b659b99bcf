"""Feature stage on the real sample: QLib binary store, QLib expressions, persisted vectors."""

import numpy as np
import pandas as pd
import pytest
from dagster import DagsterInstance, materialize
from sqlalchemy import delete, func, select

from q50_assets.lineage.features.asset import qlib_features
from q50_assets.lineage.ohlcv.asset import ohlcv_bars
from q50_assets.lineage.common.partitions import POOLS_PARTITION_NAME
from q50_assets.automation.runs import range_tags
from q50_assets.db.collector_models import ohlcv_data
from q50_assets.db.engine import get_engine
from q50_assets.db.q50_models import q50_feature_vectors
from q50_assets.definitions import build_resources
from q50_assets.storage.qlib_store import instrument_name
from q50_assets.lineage.common.gate import Blocked
from q50_assets_tests.conftest import settings_for

MAIN_POOL = "solana_F5vAiFCP82RQetoxK7ax4dNQCwqk2yez6aisAbFPenJ2"
OTHER_POOL = "solana_2Zya4XnGCrzAXBXw8ZpfNAifwH3xsCoLo1RB3FFdaRMj"


def _materialize(settings, pool_ids):
    """The pools' bars and features in one run over their partition range; per pool, the frame and its checks."""
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(POOLS_PARTITION_NAME, pool_ids)
        result = materialize([ohlcv_bars, qlib_features], resources=build_resources(settings), instance=instance,
                             tags=range_tags(pool_ids))
        assert result.success
        frames = result.output_for_node("qlib_features")
        checks = {}
        for e in result.get_asset_check_evaluations():
            if e.asset_key.to_user_string() == "qlib_features":
                checks.setdefault(e.partition, {})[e.check_name] = e
        return {p: (frames[p], checks[p]) for p in pool_ids}


@pytest.fixture
def settings(collector_url, tmp_path):
    return settings_for(collector_url, tmp_path)


def test_features_are_stored_in_qlib_format_and_persisted(settings, collector_url):
    results = _materialize(settings, [MAIN_POOL, OTHER_POOL])
    frame, evaluations = results[MAIN_POOL]
    assert evaluations["no_nan_after_warmup"].passed and evaluations["instrument_mapping_roundtrip"].passed

    # QLib's binary layout on disk, instrument lower-case-safe and mapped back to the pool.
    root = settings.database_dir / "qlib"
    inst = instrument_name(MAIN_POOL)
    assert inst == inst.lower()
    assert (root / "calendars" / "60min.txt").exists()
    raw = np.fromfile(root / "features" / inst / "close.60min.bin", dtype="<f4")
    assert len(raw) - 1 == len(frame)
    real_close = frame.loc[~frame["is_filled"], "close"]
    assert np.allclose(raw[1:][~frame["is_filled"].to_numpy()], real_close.to_numpy(dtype="float32"))
    all_txt = (root / "instruments" / "all.txt").read_text().split("\n")
    assert any(line.startswith(inst + "\t2025-09-25 08:00:00\t") for line in all_txt)

    # Hourly grid: one row per hour, known at the bar close; warm-up marked, not filled in.
    assert (frame.index.to_series().diff().dropna() == pd.Timedelta(hours=1)).all()
    assert (frame["known_at"] == frame.index + pd.Timedelta(hours=1)).all()
    assert frame["is_warmup"].sum() == 35
    assert frame["mom_25"].iloc[:25].isna().all()

    # Vectors: one per real bar, pointing back at the pool and version.
    with get_engine(collector_url).connect() as conn:
        count = conn.execute(select(func.count()).select_from(q50_feature_vectors)
                             .where(q50_feature_vectors.c.pool_id == MAIN_POOL)).scalar()
    assert count == int((~frame["is_filled"]).sum()) == 240
    assert frame.loc[~frame["is_filled"], "feature_vector_id"].notna().all()


def test_rerun_keeps_vector_ids_stable(settings):
    first = _materialize(settings, [MAIN_POOL])[MAIN_POOL][0]
    second = _materialize(settings, [MAIN_POOL])[MAIN_POOL][0]
    pd.testing.assert_series_equal(first["feature_vector_id"], second["feature_vector_id"])


@pytest.mark.parametrize("backend", ["sqlite"])
def test_no_look_ahead_changing_or_deleting_later_bars_leaves_earlier_features_unchanged(settings, collector_url):
    """Change bars after t and delete some: every feature at or before t must be identical."""
    before = _materialize(settings, [MAIN_POOL])[MAIN_POOL][0]
    t = pd.Timestamp("2025-10-01 00:00", tz="UTC")
    t_epoch = int(t.timestamp())
    engine = get_engine(collector_url)
    with engine.begin() as conn:  # the test plays the collector revising history after t
        later = (ohlcv_data.c.pool_id == MAIN_POOL) & (ohlcv_data.c.timeframe == "1h") & (ohlcv_data.c.timestamp > t_epoch)
        conn.execute(ohlcv_data.update().where(later).values(
            close_price=ohlcv_data.c.close_price * 3, high_price=ohlcv_data.c.high_price * 3,
            volume_usd=ohlcv_data.c.volume_usd + 1))
        conn.execute(delete(ohlcv_data).where(later & (ohlcv_data.c.timestamp < t_epoch + 20 * 3600)))
    after = _materialize(settings, [MAIN_POOL])[MAIN_POOL][0]

    columns = [c for c in before.columns if c not in ("feature_vector_id",)]
    head_before, head_after = before.loc[:t, columns], after.loc[:t, columns]
    assert len(head_before) > 100
    pd.testing.assert_frame_equal(head_before, head_after)
    # ...and the change did reach the later rows (the test would see a peek).
    assert not before.loc[t + pd.Timedelta(hours=30):, "close"].equals(after.loc[t + pd.Timedelta(hours=30):, "close"])


SHORT_POOL = "solana_2Ausg8ScDHmATwzUVavkQC5fmp59CdvXeHgSTFi4gTQL"  # fewer than 48 complete bars: blocked


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_blocked_pool_is_skipped_in_its_batch_and_the_others_go_on(settings, collector_url):
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(POOLS_PARTITION_NAME, [MAIN_POOL, SHORT_POOL, OTHER_POOL])
        result = materialize([ohlcv_bars, qlib_features], resources=build_resources(settings), instance=instance,
                             tags=range_tags([MAIN_POOL, OTHER_POOL]))  # the range holds all three
    assert result.success
    frames = result.output_for_node("qlib_features")
    assert set(frames) == {MAIN_POOL, SHORT_POOL, OTHER_POOL}
    blocked = frames[SHORT_POOL]
    assert isinstance(blocked, Blocked) and blocked.stage == "ohlcv_bars" and "enough_bars" in blocked.reason
    assert isinstance(frames[MAIN_POOL], pd.DataFrame) and isinstance(frames[OTHER_POOL], pd.DataFrame)
    # The skipped pool says why on its own partition; its feature checks are not evaluated.
    metadata = {m.partition: {k: v.value for k, v in m.metadata.items()}
                for m in result.asset_materializations_for_node("qlib_features")}
    assert metadata[SHORT_POOL]["status"] == "blocked" and metadata[SHORT_POOL]["blocked_by"] == "ohlcv_bars"
    assert metadata[MAIN_POOL]["status"] == "ok"
    evaluated = {e.partition for e in result.get_asset_check_evaluations() if e.asset_key.to_user_string() == "qlib_features"}
    assert evaluated == {MAIN_POOL, OTHER_POOL}
    # Nothing of it in the store or the vectors table.
    assert not (settings.database_dir / "qlib" / "features" / instrument_name(SHORT_POOL)).exists()
    with get_engine(collector_url).connect() as conn:
        assert conn.execute(select(func.count()).select_from(q50_feature_vectors)
                            .where(q50_feature_vectors.c.pool_id == SHORT_POOL)).scalar() == 0


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_pool_that_becomes_blocked_leaves_the_qlib_store(settings, collector_url):
    """Its old series must not keep feeding the pooled model."""
    store = build_resources(settings)["qlib_store"]
    _materialize(settings, [MAIN_POOL, OTHER_POOL])
    assert instrument_name(MAIN_POOL) in store.mapping()
    with get_engine(collector_url).begin() as conn:  # the collector writes a zero price
        first = (select(ohlcv_data.c.id).where(ohlcv_data.c.pool_id == MAIN_POOL, ohlcv_data.c.timeframe == "1h")
                 .order_by(ohlcv_data.c.timestamp).limit(1))
        conn.execute(ohlcv_data.update().where(ohlcv_data.c.id == first.scalar_subquery()).values(low_price=0))
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(POOLS_PARTITION_NAME, [MAIN_POOL, OTHER_POOL])
        result = materialize([ohlcv_bars, qlib_features], resources=build_resources(settings), instance=instance,
                             tags=range_tags([MAIN_POOL, OTHER_POOL]))
    assert isinstance(result.output_for_node("qlib_features")[MAIN_POOL], Blocked)
    mapping = store.mapping()
    assert instrument_name(MAIN_POOL) not in mapping and instrument_name(OTHER_POOL) in mapping
    assert not (settings.database_dir / "qlib" / "features" / instrument_name(MAIN_POOL)).exists()
    assert instrument_name(MAIN_POOL) not in (settings.database_dir / "qlib" / "instruments" / "all.txt").read_text()
