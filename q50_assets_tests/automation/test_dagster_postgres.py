"""Dagster's own history in PostgreSQL: deploy/dagster.postgres.yaml, credentials from the
environment, a real materialization stored in the suite's PostgreSQL server - with Dagster's own
event log (the file as shipped) and opted in to the one that keeps its connection."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, DagsterInstance
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage
from sqlalchemy import create_engine, event, text

from q50_assets.lineage.common.partitions import POOLS_PARTITION_NAME
from q50_assets.automation.runs import range_tags
from q50_assets.storage.dagster_instance import PooledPostgresEventLogStorage, with_kept_connections
from q50_assets.definitions import build_definitions
from q50_assets_tests.conftest import create_pg_database, drop_pg_database, settings_for

REPO = Path(__file__).resolve().parents[2]
POOL = "solana_4qs2R1Gsj2Lpy4ewV9hfVerNk2h4Qx3ZEkmJyKLywvb3"
OTHER = "solana_Q2sPHPdUWFMg7M7wwrQKLrn619cAucfRsmhVJffodSp"


@pytest.mark.parametrize("kept_connections", [False, True], ids=["dagsters_event_log", "kept_connections"])
@pytest.mark.parametrize("backend", ["postgresql"])
def test_materialization_on_a_postgresql_backed_instance(collector_url, postgres_url, tmp_path, monkeypatch, backend,
                                                         kept_connections):
    dagster_url = create_pg_database(postgres_url)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.postgres.yaml", home / "dagster.yaml")
    assert "postgresql" not in (home / "dagster.yaml").read_text().split("# The collector")[1]  # no URL in the file
    if kept_connections:  # as the file's comment tells a user to do
        config = with_kept_connections(yaml.safe_load((home / "dagster.yaml").read_text()))
        (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_PG_URL", dagster_url.replace("postgresql://", "postgresql+psycopg2://"))
    try:
        with DagsterInstance.get() as instance:
            assert isinstance(instance.run_storage, PostgresRunStorage)
            assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
            assert isinstance(instance.event_log_storage, PooledPostgresEventLogStorage) == kept_connections
            connects = []
            event.listen(instance.event_log_storage._engine, "connect", lambda *_: connects.append(1))
            assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
            queue = instance.get_concurrency_config().run_queue_config
            assert queue.max_concurrent_runs == 10  # Dagster's default: the file leaves it to the machine
            assert queue.tag_concurrency_limits == [
                {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}]

            instance.add_dynamic_partitions(POOLS_PARTITION_NAME, [POOL, OTHER])
            defs = build_definitions(settings_for(collector_url, tmp_path / "data"))
            result = defs.resolve_job_def("refresh_pools").execute_in_process(  # both pools in one run
                instance=instance, tags=range_tags([POOL, OTHER]),
                asset_selection=[AssetKey("ohlcv_bars"), AssetKey("qlib_features"), AssetKey("regime_labels")])
            assert result.success
            latest = instance.get_latest_materialization_event(AssetKey("regime_labels"))
            assert latest is not None and latest.run_id == result.run_id
            # ~100 events, 32 of them check results (three statement groups each), over one kept
            # connection: Dagster's own event log would have connected for every one of them.
            if kept_connections:
                assert 1 <= len(connects) <= 1 + PooledPostgresEventLogStorage.OVERFLOW
                instance.event_log_storage.dispose_connections()  # as before forking run processes
            else:
                assert len(connects) > 32  # at least one per check result
            assert instance.get_latest_materialization_event(AssetKey("regime_labels")).run_id == result.run_id

        # What the instance said is really in PostgreSQL, read back with plain SQL.
        engine = create_engine(dagster_url.replace("postgresql://", "postgresql+psycopg2://"))
        with engine.connect() as conn:
            runs = conn.execute(text("SELECT run_id, status FROM runs")).all()
            materialized = conn.execute(text(
                "SELECT asset_key FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' "
                "AND partition = :pool ORDER BY id"), {"pool": POOL}).scalars().all()
            checks = conn.execute(text(
                "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_CHECK_EVALUATION'")).scalar()
            check_partitions = dict(conn.execute(text(
                "SELECT partition, count(*) FROM asset_check_executions WHERE execution_status = 'SUCCEEDED' "
                "GROUP BY partition")).all())
            partitions = conn.execute(text("SELECT partition FROM dynamic_partitions")).scalars().all()
            schedule_tables = conn.execute(text(
                "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('instigators', 'job_ticks')")).scalar()
        engine.dispose()
        assert runs == [(result.run_id, "SUCCESS")]
        assert [k.strip('[]"') for k in materialized] == ["ohlcv_bars", "qlib_features", "regime_labels"]
        assert checks == 2 * 16  # every OHLCV rule, both feature checks, both regime checks, per pool
        assert check_partitions == {POOL: 16, OTHER: 16}  # each recorded on its pool's partition
        assert partitions == [POOL, OTHER]
        assert schedule_tables == 2
    finally:
        drop_pg_database(postgres_url, dagster_url)
