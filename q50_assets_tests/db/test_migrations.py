import json
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, func, inspect, select, text
from sqlalchemy.exc import IntegrityError, ProgrammingError

from q50_assets.db import migrate
from q50_assets.db.collector_models import (
    COLLECTOR_TABLE_NAMES,
    collector_feature_vectors,
    collector_metadata,
    ohlcv_data,
)
from q50_assets.db.engine import get_engine
from q50_assets.db.q50_models import Q50_TABLE_NAMES, q50_trading_history
from q50_assets.storage.collector import CollectorReader
from q50_assets.storage.project_tables import ProjectTables
from q50_assets_tests.collector_schema import create_collector_vectors_table


def _collector_schema(engine) -> dict:
    insp = inspect(engine)
    return {
        name: (
            [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(name)],
            sorted(i["name"] or "" for i in insp.get_indexes(name)),
            sorted(str(u["column_names"]) for u in insp.get_unique_constraints(name)),
        )
        for name in COLLECTOR_TABLE_NAMES
    }


def _counts(engine) -> dict:
    with engine.connect() as conn:
        return {n: conn.execute(text(f'SELECT count(*) FROM "{n}"')).scalar() for n in COLLECTOR_TABLE_NAMES}


def test_migrations_on_an_existing_collector_database_touch_only_our_tables(collector_url):
    engine = get_engine(collector_url)
    with engine.begin() as conn:  # a collector that runs Alembic itself
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('collector_rev_42')"))
    schema_before, counts_before = _collector_schema(engine), _counts(engine)

    assert migrate.upgrade(engine) == migrate.head_revision()
    assert migrate.upgrade(engine) == migrate.head_revision()  # idempotent

    tables = set(inspect(engine).get_table_names())
    assert set(Q50_TABLE_NAMES) <= tables
    assert _collector_schema(engine) == schema_before
    assert _counts(engine) == counts_before
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "collector_rev_42"
        assert conn.execute(text("SELECT version_num FROM q50_alembic_version")).scalar() == migrate.head_revision()
    fks = {fk["referred_table"] for fk in inspect(engine).get_foreign_keys("q50_trading_history")}
    assert fks == {"pools", "q50_feature_vectors"}


def test_migrations_refuse_a_database_without_the_collector_schema(empty_db_url):
    with pytest.raises(migrate.CollectorSchemaMissing, match="no collector table 'pools'"):
        migrate.upgrade(get_engine(empty_db_url))
    assert inspect(get_engine(empty_db_url)).get_table_names() == []


@pytest.mark.parametrize("backend", ["postgresql"])
def test_project_runs_with_a_role_that_cannot_write_the_collector_tables(collector_url):
    """The collector owns its tables; our role may SELECT (and REFERENCES pools) and owns q50 tables."""
    admin = get_engine(collector_url)
    # Roles are cluster-wide: a unique name never touches a real role on a shared server
    # (Q50_TEST_POSTGRES_URL) nor a concurrent run's.
    role = f"q50_test_reader_{uuid.uuid4().hex[:12]}"
    with admin.begin() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN"))
        conn.execute(text(f"GRANT CREATE, USAGE ON SCHEMA public TO {role}"))
        conn.execute(text(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"))
        conn.execute(text(f"GRANT REFERENCES ON pools TO {role}"))
    reader_url = collector_url.replace("postgresql://postgres@", f"postgresql://{role}@")
    reader = get_engine(reader_url)
    try:
        assert migrate.upgrade(reader) == migrate.head_revision()
        with reader.connect() as conn:
            assert conn.execute(select(ohlcv_data.c.id).limit(1)).scalar() is not None
        with pytest.raises(ProgrammingError, match="permission denied"):
            with reader.begin() as conn:
                conn.execute(ohlcv_data.delete().where(ohlcv_data.c.id == -1))
    finally:
        reader.dispose()
        with admin.begin() as conn:
            conn.execute(text(f"REASSIGN OWNED BY {role} TO postgres"))
            conn.execute(text(f"DROP OWNED BY {role}"))
            conn.execute(text(f"DROP ROLE {role}"))


# --- revision 0005: the q50_ prefix, a collector's own pool_feature_vectors -------------------------

LEGACY_MIGRATIONS = Path(__file__).resolve().parent / "legacy_migrations"
POOL = "solana_F5vAiFCP82RQetoxK7ax4dNQCwqk2yez6aisAbFPenJ2"
T0 = datetime(2025, 10, 1, tzinfo=timezone.utc)


def _legacy_install(engine) -> None:
    """An install made before revision 0005: the released migrations 0001-0004, unchanged."""
    config = Config()
    config.set_main_option("script_location", str(LEGACY_MIGRATIONS))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0004")


def _rows(engine, name: str, order: str = "id") -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(f'SELECT * FROM "{name}" ORDER BY "{order}"'))]


def _schema(engine, name: str) -> tuple:
    insp = inspect(engine)
    return (
        [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(name)],
        sorted(i["name"] or "" for i in insp.get_indexes(name)),
        sorted((u["name"] or "", str(u["column_names"])) for u in insp.get_unique_constraints(name)),
        insp.get_pk_constraint(name)["constrained_columns"],
    )


def test_upgrade_of_an_existing_install_keeps_every_id(collector_url):
    engine = get_engine(collector_url)
    _legacy_install(engine)
    assert "pool_feature_vectors" in inspect(engine).get_table_names()
    with engine.begin() as conn:
        for i in range(5):
            conn.execute(text(
                "INSERT INTO pool_feature_vectors (pool_id, timeframe, timestamp, known_at, feature_set_version, "
                "is_warmup, feature_values) VALUES (:p, '1h', :t, :k, 'v1', :w, :f)"),
                {"p": POOL, "t": T0 + timedelta(hours=i), "k": T0 + timedelta(hours=i + 1), "w": i == 0,
                 "f": json.dumps({"ret_1": 0.01 * i})})
        conn.execute(text("DELETE FROM pool_feature_vectors WHERE id = 2"))  # ids need not be contiguous
        vector_ids = [r[0] for r in conn.execute(text("SELECT id FROM pool_feature_vectors ORDER BY id"))]
        for vid in vector_ids[1:]:
            conn.execute(text(
                "INSERT INTO q50_signals (pool_id, timeframe, timestamp, known_at, model_run, fold, q10, q50, q90, "
                "spread, abs_q50, prob_up, tradeable, side, signal_tier, feature_vector_id) "
                "SELECT pool_id, timeframe, timestamp, known_at, 'run', 0, -0.01, 0.0, 0.01, 0.02, 0.0, 0.5, :f, "
                "'hold', 'D', id FROM pool_feature_vectors WHERE id = :v"), {"v": vid, "f": False})
            conn.execute(text(
                "INSERT INTO q50_trading_history (pool_id, timestamp, execution_status, feature_vector_id, "
                "backtest_run_id, side) VALUES (:p, :t, 'FILLED', :v, 'bt-1', 'BUY')"),
                {"p": POOL, "t": T0 + timedelta(hours=vid), "v": vid})
    signals_before = _rows(engine, "q50_signals")
    history_before = _rows(engine, "q50_trading_history")
    vectors_before = _rows(engine, "pool_feature_vectors")
    assert len(vectors_before) == 4 and len(history_before) == 3

    assert migrate.upgrade(engine) == migrate.head_revision() == "0008"

    tables = set(inspect(engine).get_table_names())
    assert "pool_feature_vectors" not in tables and "q50_feature_vectors" in tables
    assert _rows(engine, "q50_feature_vectors") == vectors_before  # every row, every id
    # Later revisions add columns (NULL on old rows): the columns the install had are unchanged.
    assert [tuple(r[:len(signals_before[0])]) for r in _rows(engine, "q50_signals")] == signals_before
    with engine.connect() as conn:
        history = pd.DataFrame(conn.execute(select(q50_trading_history).order_by(q50_trading_history.c.id)).mappings().all())
    assert [tuple(r[:len(history_before[0])]) for r in _rows(engine, "q50_trading_history")] == history_before
    assert list(history["feature_vector_id"]) == list(history["q50_feature_vector_id"]) == vector_ids[1:]
    assert set(history["feature_vector_table"]) == {"q50_feature_vectors"}

    # Foreign keys keep working, now against q50_feature_vectors; feature_vector_id has none (it may hold
    # a collector id), q50_feature_vector_id has one.
    fk_targets = {(tuple(fk["constrained_columns"]), fk["referred_table"])
                  for name in ("q50_signals", "q50_trading_history") for fk in inspect(engine).get_foreign_keys(name)}
    assert (("feature_vector_id",), "q50_feature_vectors") in fk_targets  # from q50_signals
    assert (("q50_feature_vector_id",), "q50_feature_vectors") in fk_targets
    history_fks = {tuple(fk["constrained_columns"]) for fk in inspect(engine).get_foreign_keys("q50_trading_history")}
    assert ("feature_vector_id",) not in history_fks
    base = {"pool_id": POOL, "timestamp": T0, "execution_status": "FILLED", "backtest_run_id": "bt-2"}
    with pytest.raises(IntegrityError):
        with engine.begin() as conn:
            conn.execute(q50_trading_history.insert().values(**base, q50_feature_vector_id=999_999))
    with pytest.raises(IntegrityError):
        with engine.begin() as conn:
            conn.execute(text("UPDATE q50_signals SET feature_vector_id = 999999 WHERE id = (SELECT min(id) FROM q50_signals)"))
    with engine.begin() as conn:  # a collector's vector id is not ours: allowed, labelled by feature_vector_table
        conn.execute(q50_trading_history.insert().values(**base, feature_vector_id=999_999,
                                                         feature_vector_table="pool_feature_vectors"))

    # New vectors continue the same id sequence (PostgreSQL: the renamed sequence).
    db = ProjectTables(url=collector_url)
    frame = pd.DataFrame({"known_at": [T0 + timedelta(hours=11)], "is_warmup": [False], "ret_1": [0.5]},
                         index=pd.DatetimeIndex([T0 + timedelta(hours=10)], name="open_time"))
    new_ids, _ = db.upsert_feature_vectors_many("1h", "v1", {POOL: frame}, ["ret_1"])[POOL]
    assert int(new_ids.iloc[0]) > max(vector_ids)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            assert conn.execute(select(func.pg_get_serial_sequence("q50_feature_vectors", "id"))).scalar() \
                == "public.q50_feature_vectors_id_seq"
            names = set(conn.execute(text("SELECT relname FROM pg_class WHERE relname LIKE 'pool_feature_vectors%'"))
                        .scalars())
            constraints = set(conn.execute(text(
                "SELECT conname FROM pg_constraint WHERE conrelid = 'q50_feature_vectors'::regclass")).scalars())
        assert names == set()  # no sequence, index or constraint left under the collector's name
        assert {"q50_feature_vectors_pkey", "uq_q50_feature_vectors_key"} <= constraints


def _collector_vectors_table(engine) -> None:
    """The collector's enhanced-history tables as its migration creates them, with rows."""
    create_collector_vectors_table(engine)
    t = collector_feature_vectors
    with engine.begin() as conn:
        conn.execute(t.insert(), [
            {"pool_id": POOL, "timestamp": int((T0 + timedelta(hours=i)).timestamp()), "feature_set_version": "v2.0",
             "rsi_14": 0.5, "price_return_1h": 0.01 * i, "feature_vector_json": {"x": i},
             "created_at": T0 + timedelta(hours=i + 1, minutes=5)} for i in range(6)])


def test_a_collector_database_with_its_own_pool_feature_vectors_migrates_cleanly(collector_url):
    engine = get_engine(collector_url)
    _collector_vectors_table(engine)
    schema_before, rows_before = _schema(engine, "pool_feature_vectors"), _rows(engine, "pool_feature_vectors")

    assert migrate.upgrade(engine) == migrate.head_revision()
    assert migrate.upgrade(engine) == migrate.head_revision()

    assert _schema(engine, "pool_feature_vectors") == schema_before  # same columns, indexes, keys
    assert _rows(engine, "pool_feature_vectors") == rows_before      # same rows
    assert set(Q50_TABLE_NAMES) <= set(inspect(engine).get_table_names())
    assert all(name.startswith("q50_") for name in Q50_TABLE_NAMES)
    assert CollectorReader(url=collector_url).has_collector_feature_vectors()


def test_tables_created_lists_what_each_revision_creates(empty_db_url):
    """The preflight's list of tables per revision is what the migrations create."""
    engine = get_engine(empty_db_url)
    collector_metadata.create_all(engine)
    before = set(inspect(engine).get_table_names())
    for revision in migrate.revisions_in_order():
        migrate.upgrade(engine, revision)
        after = set(inspect(engine).get_table_names())
        assert after - before - {migrate.VERSION_TABLE} == set(migrate.TABLES_CREATED[revision]), revision
        before = after
    assert set(Q50_TABLE_NAMES) == {t for ts in migrate.TABLES_CREATED.values() for t in ts}


@pytest.mark.parametrize("ddl, named", [
    ("CREATE TABLE pool_feature_vectors (id INTEGER PRIMARY KEY, pool_id VARCHAR(200), score FLOAT)",
     "table pool_feature_vectors: neither the project's feature vectors nor the collector's"),
    ("CREATE TABLE pool_feature_vectors (id INTEGER PRIMARY KEY, pool_id VARCHAR(200), timeframe VARCHAR(10), "
     "known_at TIMESTAMP)", "table pool_feature_vectors: looks like the project's feature vectors"),
    ("CREATE TABLE q50_signals (id INTEGER PRIMARY KEY, note TEXT)", "table q50_signals: already exists"),
])
def test_a_table_the_migrations_do_not_expect_stops_them_with_one_line(collector_url, ddl, named):
    engine = get_engine(collector_url)
    with engine.begin() as conn:
        conn.execute(text(ddl))
    tables_before = set(inspect(engine).get_table_names())
    with pytest.raises(migrate.MigrationError) as raised:
        migrate.upgrade(engine)
    message = str(raised.value)
    assert "\n" not in message and named in message
    assert set(inspect(engine).get_table_names()) == tables_before  # nothing was created
    assert migrate.current_revision(engine) is None


@pytest.mark.parametrize("backend", ["sqlite"])
def test_q50_migrate_prints_the_one_line_and_exits_non_zero(collector_url, tmp_path):
    engine = get_engine(collector_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE pool_feature_vectors (id INTEGER PRIMARY KEY, label TEXT)"))
    env = {"PATH": "/usr/bin:/bin", "Q50_DATABASE_URL": collector_url, "Q50_DATA_DIR": str(tmp_path),
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-m", "q50_assets.cli", "migrate"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("q50 migrate: ") and "table pool_feature_vectors" in lines[0]
    assert "Traceback" not in done.stderr
