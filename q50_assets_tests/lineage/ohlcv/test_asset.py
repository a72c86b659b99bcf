"""Materialize the OHLCV stage on the real sample, against SQLite and a real PostgreSQL."""

import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, asset, materialize
from sqlalchemy import func, insert, select, update

from q50_assets.lineage.ohlcv.asset import ohlcv_bars
from q50_assets.lineage.common.partitions import POOLS_PARTITION_NAME, pool_partitions
from q50_assets.automation.runs import range_tags
from q50_assets.cli import register_pools
from q50_assets.db.collector_models import ohlcv_data, pools
from q50_assets.db.engine import get_engine
from q50_assets.definitions import build_definitions, build_resources
from q50_assets.lineage.ohlcv.rules import BAR_RULES, require_safe
from q50_assets_tests.conftest import settings_for

MAIN_POOL = "solana_F5vAiFCP82RQetoxK7ax4dNQCwqk2yez6aisAbFPenJ2"
SHORT_POOLS = {  # fewer than 48 complete 1h bars in the real sample
    "solana_2Ausg8ScDHmATwzUVavkQC5fmp59CdvXeHgSTFi4gTQL",
    "solana_4WK1aeRrGGM88hknsrJjkELujpJPtA4Ad5E33tD9panw",
    "solana_FcgExnc1FEvmESEYZMNVRevvbmH6aSbuY23mc7ugaQ9W",
    "solana_FiovVNHBghiTJ5oZudRDZM4Ci5rEEUGUa9DS3cVAXsdd",
    "solana_Gmsra1w2AY9BPFoFHtRsBf1QDQHbUV7ay4QgiFPrwCYW",
}


@asset(partitions_def=pool_partitions)
def downstream_stage(context, ohlcv_bars):
    """Stands in for the features stage: consumes only safe bars (per pool, the gate in the data)."""
    return {p: len(require_safe(v)) for p, v in ohlcv_bars.items()}


def _run(settings, pool_id, instance, assets=(ohlcv_bars,)):
    return materialize(
        list(assets),
        partition_key=pool_id,
        resources=build_resources(settings),
        instance=instance,
        raise_on_error=False,
    )


@pytest.fixture
def settings(collector_url, tmp_path):
    return settings_for(collector_url, tmp_path)


@pytest.fixture
def instance(settings):
    with DagsterInstance.ephemeral() as inst:
        yield inst


def test_every_sample_pool_materializes_and_every_row_is_accounted_for(settings, instance, collector_url):
    pool_ids = register_pools(settings, instance)
    assert len(pool_ids) == 62
    assert instance.get_dynamic_partitions(POOLS_PARTITION_NAME) == pool_ids

    # Every pool in one run (a range of partitions): blocked pools do not fail it.
    job = build_definitions(settings).resolve_job_def("refresh_pools")
    result = job.execute_in_process(instance=instance, asset_selection=[AssetKey("ohlcv_bars")],
                                    tags=range_tags(pool_ids))
    assert result.success
    materializations = {m.partition: m for m in result.asset_materializations_for_node("ohlcv_bars")}
    assert set(materializations) == set(pool_ids)
    evaluations: dict[str, dict] = {}
    for e in result.get_asset_check_evaluations():
        evaluations.setdefault(e.partition, {})[e.check_name] = e
    assert set(evaluations) == set(pool_ids)  # every check recorded on its pool's partition

    rows_read = 0
    blocked = set()
    for pool_id in pool_ids:
        md = {k: v.value for k, v in materializations[pool_id].metadata.items()}
        assert md["pool_id"] == pool_id
        assert md["rows_read"] == md["complete_bars"] + md["partial_bars_held_back"]
        rows_read += md["rows_read"]
        checks = evaluations[pool_id]
        assert set(checks) == {r.name for r in BAR_RULES}
        assert all(e.metadata["pool_id"].value == pool_id for e in checks.values())
        failing_blocking = {n for n, e in checks.items() if not e.passed and e.severity.value == "ERROR"}
        assert md["safe_for_downstream"] == (not failing_blocking), pool_id
        if not md["safe_for_downstream"]:
            blocked.add(pool_id)
            assert failing_blocking == {"enough_bars"}

    with get_engine(collector_url).connect() as conn:
        total = conn.execute(select(func.count()).select_from(ohlcv_data).where(ohlcv_data.c.timeframe == "1h")).scalar()
    assert rows_read == total == 19_499
    assert blocked == SHORT_POOLS


def test_main_pool_bars_are_utc_float_sorted_and_the_partial_bar_is_held_back(settings, instance):
    instance.add_dynamic_partitions(POOLS_PARTITION_NAME, [MAIN_POOL])
    result = _run(settings, MAIN_POOL, instance)
    stored = result.asset_value("ohlcv_bars")  # loaded back through the IO manager
    validated = stored[MAIN_POOL]
    bars = validated.bars
    assert validated.safe and len(bars) == 240
    assert str(bars.index.tz) == "UTC" and bars.index.is_monotonic_increasing
    assert bars.index[0] == pd.Timestamp("2025-09-25 08:00", tz="UTC")
    assert validated.partial_bar.index[0] == pd.Timestamp("2025-10-05 12:00", tz="UTC")
    assert bars.dtypes[["open", "high", "low", "close", "volume"]].eq("float64").all()


def test_a_blocking_failure_names_pool_and_bar_and_stops_downstream(settings, instance, collector_url):
    engine = get_engine(collector_url)
    with engine.begin() as conn:  # the test plays a misbehaving collector
        bad_id = conn.execute(
            select(ohlcv_data.c.id)
            .where(ohlcv_data.c.pool_id == MAIN_POOL, ohlcv_data.c.timeframe == "1h")
            .order_by(ohlcv_data.c.timestamp)
            .offset(100)
            .limit(1)
        ).scalar_one()
        conn.execute(update(ohlcv_data).where(ohlcv_data.c.id == bad_id).values(low_price=0))
    instance.add_dynamic_partitions(POOLS_PARTITION_NAME, [MAIN_POOL])

    result = _run(settings, MAIN_POOL, instance, assets=(ohlcv_bars, downstream_stage))
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    failed = evaluations["positive_prices"]
    assert not failed.passed and failed.severity.value == "ERROR" and failed.partition == MAIN_POOL
    assert failed.metadata["pool_id"].value == MAIN_POOL
    listed = failed.metadata["offending_bars_listed"].value
    assert listed[0]["ohlcv_id"] == bad_id and listed[0]["reason"] == "low_price <= 0"
    # The gate is in the data: the run goes on, and a stage handed the bars refuses them by name.
    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert failure.step_key == "downstream_stage"
    assert "UnsafeBarsError" in failure.step_failure_data.error.to_string()
    assert "positive_prices" in failure.step_failure_data.error.to_string()


def test_a_safe_pool_feeds_downstream(settings, instance):
    instance.add_dynamic_partitions(POOLS_PARTITION_NAME, [MAIN_POOL])
    result = _run(settings, MAIN_POOL, instance, assets=(ohlcv_bars, downstream_stage))
    assert result.success
    assert result.output_for_node("downstream_stage") == {MAIN_POOL: 240}


def test_pool_ids_colliding_on_lower_case_are_blocked(settings, instance, collector_url):
    twin = MAIN_POOL.lower()
    with get_engine(collector_url).begin() as conn:
        conn.execute(insert(pools).values(id=twin, address=twin.removeprefix("solana_"), dex_id="solana_unknown"))
    instance.add_dynamic_partitions(POOLS_PARTITION_NAME, [MAIN_POOL])
    result = _run(settings, MAIN_POOL, instance)
    evaluation = next(e for e in result.get_asset_check_evaluations() if e.check_name == "pool_id_unique_lowercase")
    assert not evaluation.passed
    assert evaluation.metadata["colliding_pool_ids"].value == [twin]


def test_a_pool_without_bars_of_the_timeframe_is_blocked_not_crashed(settings, instance):
    instance.add_dynamic_partitions(POOLS_PARTITION_NAME, ["solana_unknown_pool"])
    result = _run(settings, "solana_unknown_pool", instance)
    (mat,) = result.asset_materializations_for_node("ohlcv_bars")
    assert mat.metadata["rows_read"].value == 0
    assert not mat.metadata["safe_for_downstream"].value


@pytest.mark.parametrize("backend", ["sqlite"])
def test_definitions_list_the_ohlcv_asset_and_every_check(settings):
    defs = build_definitions(settings)
    graph = defs.resolve_asset_graph()
    checks = {key.name for key in graph.asset_check_keys if key.asset_key == AssetKey("ohlcv_bars")}
    assert checks == {r.name for r in BAR_RULES}
    assert defs.resolve_job_def("refresh_pools") is not None


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_stage_setting_reaches_the_stage_from_the_settings(settings, instance):
    """A stage's knobs are its section of the one settings model (config.yaml or Q50__ variables):
    the value reaches the stage's own config object."""
    instance.add_dynamic_partitions(POOLS_PARTITION_NAME, [MAIN_POOL])
    strict = settings.model_copy(update={"ohlcv": settings.ohlcv.model_copy(update={"min_bars": 1000})})
    job = build_definitions(strict).resolve_job_def("refresh_pools")
    result = job.execute_in_process(
        instance=instance, partition_key=MAIN_POOL, asset_selection=[AssetKey("ohlcv_bars")])
    (check,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "enough_bars"]
    assert not check.passed and check.metadata["min_bars"].value == 1000
    assert not result.output_for_node("ohlcv_bars")[MAIN_POOL].safe
