import uuid

import pytest
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.exc import ProgrammingError

from q50_assets.db import migrate
from q50_assets.db.collector_models import COLLECTOR_TABLE_NAMES, ohlcv_data
from q50_assets.db.engine import get_engine
from q50_assets.db.q50_models import Q50_TABLE_NAMES


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
    assert fks == {"pools", "pool_feature_vectors"}


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
