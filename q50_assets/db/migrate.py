"""Apply the project's Alembic migrations to a database (PostgreSQL or SQLite).

Before any migration runs, :func:`upgrade` compares the database with what the pending
migrations expect: a table they would create that already exists, or a ``pool_feature_vectors``
that is neither the project's (installs before revision 0005) nor the collector's, stops the
upgrade with ONE line naming the table and what differs (:class:`MigrationError`). Nothing is
changed then: on SQLite, DDL is not transactional, so finding out halfway would leave half a schema.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect
from sqlalchemy.exc import DBAPIError

from q50_assets.db.collector_models import COLLECTOR_TABLE_NAMES, COLLECTOR_VECTOR_KEY_COLUMNS

# Not Alembic's default `alembic_version`: the collector may run Alembic on the same database.
VERSION_TABLE = "q50_alembic_version"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# The tables each revision creates (checked against the migrations by the tests).
TABLES_CREATED = {
    "0001": ("q50_feature_vectors", "q50_trading_history"),
    "0002": ("q50_signals",),
    "0003": ("q50_regime_labels",),
    "0004": ("q50_backtest_results",),
    "0005": (),
    "0006": (),
    "0007": (),
    "0008": ("q50_trials",),
}

LEGACY_FEATURE_VECTORS = "pool_feature_vectors"
FEATURE_VECTORS = "q50_feature_vectors"
# The columns revisions 0001-0004 gave the project's feature vectors, under the old name.
LEGACY_FEATURE_VECTOR_COLUMNS = frozenset(
    {"id", "pool_id", "timeframe", "timestamp", "known_at", "feature_set_version", "is_warmup",
     "feature_values", "created_at"})
_OURS_ONLY = frozenset({"timeframe", "known_at", "is_warmup", "feature_values"})


class CollectorSchemaMissing(RuntimeError):
    """The database lacks collector tables our tables reference."""


class SchemaConflict(RuntimeError):
    """A table the migrations meet is not what they expect; the message is one line naming it."""


class MigrationError(RuntimeError):
    """``q50 migrate`` could not bring the project's tables up to date; one line, no traceback needed."""


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def revisions_in_order() -> list[str]:
    """Every revision id, oldest first."""
    return [r.revision for r in reversed(list(ScriptDirectory.from_config(_alembic_config()).walk_revisions()))]


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def classify_pool_feature_vectors(columns: set[str]) -> str:
    """Whose ``pool_feature_vectors`` this is, from its columns: ``"project"`` (created by
    revisions 0001-0004, to be renamed by 0005) or ``"collector"`` (its enhanced-history
    migration's: left alone). Anything else raises :class:`SchemaConflict`."""
    columns = set(columns)
    if columns == LEGACY_FEATURE_VECTOR_COLUMNS:
        return "project"
    key = set(COLLECTOR_VECTOR_KEY_COLUMNS)
    if key <= columns and not (columns & _OURS_ONLY):
        return "collector"
    if columns & _OURS_ONLY:
        missing = sorted(LEGACY_FEATURE_VECTOR_COLUMNS - columns)
        extra = sorted(columns - LEGACY_FEATURE_VECTOR_COLUMNS)
        raise SchemaConflict(
            f"table {LEGACY_FEATURE_VECTORS}: looks like the project's feature vectors from before revision 0005 "
            f"but its columns differ (missing {missing or 'none'}, unexpected {extra or 'none'}); "
            "fix or drop it by hand, the migration will not rename a table it does not recognise")
    raise SchemaConflict(
        f"table {LEGACY_FEATURE_VECTORS}: neither the project's feature vectors nor the collector's "
        f"(the collector's has {sorted(key)}; this one lacks {sorted(key - columns)}); "
        "the project will not read or rename it")


def preflight(connection: Connection, current: str | None, revisions: list[str] | None = None) -> None:
    """Raise :class:`SchemaConflict` if the migrations pending after ``current`` would meet a table
    they do not expect. Runs before any of them, so a refusal leaves the database untouched."""
    revisions = revisions or revisions_in_order()
    if current is not None and current not in revisions:
        raise SchemaConflict(f"table {VERSION_TABLE}: revision {current!r} is not one of this project's "
                             f"migrations ({revisions[0]}..{revisions[-1]}); is the code older than the database?")
    pending = revisions[revisions.index(current) + 1:] if current is not None else revisions
    insp = inspect(connection)
    tables = set(insp.get_table_names())
    for revision in pending:
        for name in TABLES_CREATED.get(revision, ()):
            if name in tables:
                columns = sorted(c["name"] for c in insp.get_columns(name))
                raise SchemaConflict(
                    f"table {name}: already exists (columns {columns}) but revision {revision}, which creates it, "
                    f"has not run here ({VERSION_TABLE} is at {current or 'none'}); it is not the project's to alter")
    if "0005" in pending and LEGACY_FEATURE_VECTORS in tables:
        owner = classify_pool_feature_vectors({c["name"] for c in insp.get_columns(LEGACY_FEATURE_VECTORS)})
        if owner == "project" and (FEATURE_VECTORS in tables or "0001" in pending):
            raise SchemaConflict(
                f"table {LEGACY_FEATURE_VECTORS}: has the project's pre-0005 columns, but this database "
                + (f"already has {FEATURE_VECTORS}" if FEATURE_VECTORS in tables else "never ran revision 0001")
                + "; the migration will not guess which feature vectors are the project's")


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Bring the project's tables to ``revision``; returns the revision reached.

    Refuses to run where the collector's ``pools`` table is missing: our tables reference it,
    and creating it would mean writing the collector's schema. Raises :class:`MigrationError`
    (one line) for a table the migrations do not expect or a database error on the way.
    """
    if "pools" not in inspect(engine).get_table_names():
        raise CollectorSchemaMissing(
            f"no collector table 'pools' in {engine.url.render_as_string(hide_password=True)}: "
            "point Q50_DATABASE_URL at the collector database (or run `q50 load-sample` to "
            "create the embedded sample)"
        )
    config = _alembic_config()
    where = engine.url.render_as_string(hide_password=True)
    try:
        with engine.begin() as connection:
            context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
            preflight(connection, context.get_current_revision())
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    except SchemaConflict as exc:
        raise MigrationError(f"{where}: {exc}") from None
    except DBAPIError as exc:
        first_line = (str(exc.orig).strip().splitlines() or [""])[0]
        raise MigrationError(f"{where}: migration failed ({type(exc.orig).__name__}: {first_line})") from exc
    reached = current_revision(engine)
    assert reached is not None
    return reached


__all__ = [
    "COLLECTOR_TABLE_NAMES", "VERSION_TABLE", "upgrade", "current_revision", "head_revision", "MigrationError",
    "SchemaConflict", "classify_pool_feature_vectors",
]
