"""Apply the project's Alembic migrations to a database (PostgreSQL or SQLite)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

from q50_assets.db.collector_models import COLLECTOR_TABLE_NAMES

# Not Alembic's default `alembic_version`: the collector may run Alembic on the same database.
VERSION_TABLE = "q50_alembic_version"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


class CollectorSchemaMissing(RuntimeError):
    """The database lacks collector tables our tables reference."""


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Bring the project's tables to ``revision``; returns the revision reached.

    Refuses to run where the collector's ``pools`` table is missing: our tables reference it,
    and creating it would mean writing the collector's schema.
    """
    if "pools" not in inspect(engine).get_table_names():
        raise CollectorSchemaMissing(
            f"no collector table 'pools' in {engine.url.render_as_string(hide_password=True)}: "
            "point Q50_DATABASE_URL at the collector database (or run `q50 load-sample` to "
            "create the embedded sample)"
        )
    config = _alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    reached = current_revision(engine)
    assert reached is not None
    return reached


__all__ = ["COLLECTOR_TABLE_NAMES", "VERSION_TABLE", "upgrade", "current_revision", "head_revision"]
