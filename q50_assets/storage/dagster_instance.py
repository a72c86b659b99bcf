"""The ``dagster.yaml`` ``q50`` writes for the embedded default, and two OPTIONAL event log storages
that change private internals of Dagster's own. Only this module touches Dagster's internals.

Upstream issues these storages work around (remove them once both are fixed):

* https://github.com/dagster-io/dagster/issues/33935 - the PostgreSQL storages' connection pool is
  not configurable: outside the webserver the event log opens a new server connection for every
  statement group (three per check result: the event, the "has the checks table" question, the
  check row); with a result per pool and check that was a third of Dagster's time in a nightly.
* https://github.com/dagster-io/dagster/issues/34058 - ``has_table`` runs on the per-event path
  (``supports_asset_checks`` before every check event), uncached, through a connection of its own
  (on SQLite an engine per call too).

Both are opt-in: by default the instance uses Dagster's own storages. To use them, name them in
the instance's ``dagster.yaml`` (``event_log_storage: module: q50_assets.storage.dagster_instance``
with ``class: NormalSyncSqliteEventLogStorage`` or ``PooledPostgresEventLogStorage``): the file
``q50`` writes and ``deploy/dagster.postgres.yaml`` carry the block, commented out.

* :class:`NormalSyncSqliteEventLogStorage`: Dagster writes every event in its own transactions
  through a new engine and connection, and SQLite syncs the disk at every commit by default: with
  one event per pool and check that dominated ``q50 demo``. This one keeps its connections open
  and commits at ``synchronous=NORMAL``, which SQLite documents as safe from corruption in WAL mode
  (a power cut may lose the last transactions, never the file).
* :class:`PooledPostgresEventLogStorage` keeps one connection per process, as Dagster's own
  webserver does.

What they rely on of Dagster's internals is :data:`PRIVATE_INTERNALS`;
``q50_assets_tests/storage/test_dagster_instance.py`` checks it against the installed Dagster and
fails, naming the attribute, when an upgrade removes or changes one.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster_postgres.event_log.event_log import PostgresEventLogStorage
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.pool import NullPool

from q50_assets.machine import usable_cores

# Dagster's private names the storages below use, per class they come from: attribute -> the
# parameters of a method (None: an instance attribute set in the parent's __init__).
PRIVATE_INTERNALS: dict[type, dict[str, tuple[str, ...] | None]] = {
    SqliteEventLogStorage: {
        "__init__": ("self", "base_dir", "inst_data"),
        "_connect": ("self", "shard"),  # replaced (its body is Dagster's, with a kept engine)
        "_initdb": ("self", "engine", "for_index_shard"),
        "conn_string_for_shard": ("self", "shard_name"),
        "has_table": ("self", "table_name"),
        "wipe": ("self",),
        "dispose": ("self",),
        "_db_lock": None,
        "_initialized_dbs": None,
    },
    PostgresEventLogStorage: {
        "__init__": ("self", "postgres_url", "should_autocreate_tables", "inst_data", "token_provider"),
        "has_table": ("self", "table_name"),
        "wipe": ("self",),
        "_engine": None,  # replaced after the parent's __init__
        "_token_provider": None,
        "postgres_url": None,
    },
}

EVENT_LOG_OPT_IN = """# Event log: with the block below, q50's SQLite event log, which keeps its connections open and
# commits at synchronous=NORMAL (no disk sync per event; safe from corruption in WAL mode): q50 demo
# took 67 s with it against 113 s with Dagster's own. It relies on Dagster internals that
# q50_assets/storage/dagster_instance.py lists (a test pins them to the installed Dagster). Comment
# the block out for Dagster's own SQLite storage in the same folder (the history is kept).
"""

SQLITE_EVENT_LOG = """event_log_storage:
  module: q50_assets.storage.dagster_instance
  class: NormalSyncSqliteEventLogStorage
  config:
    base_dir: {event_log_dir}
"""

DAGSTER_YAML = """# Written by `q50` for the embedded default: runs and events in SQLite under this folder.
# For PostgreSQL run storage use deploy/dagster.postgres.yaml (README, "Dagster on PostgreSQL").
{event_log}concurrency:
  runs:
    # Sensor, nightly and backfill runs at once: one per core of the machine that wrote this file
    # (each batch run keeps about one core busy).
    max_concurrent_runs: {max_concurrent_runs}
    tag_concurrency_limits:
      - key: dagster/partition      # never two single-pool runs of the same pool at once
        value:
          applyLimitPerUniqueValue: true
        limit: 1
run_monitoring:
  # A run whose process was killed stays "started"; after this long the run monitor marks it failed
  # and the new-bars sensor refreshes its pools again (repair_attempts).
  enabled: true
  max_runtime_seconds: 7200
telemetry:
  enabled: false
"""


class RememberedTables:
    """Event log mixin: Dagster asks whether a table exists before many event writes (the asset
    check and concurrency tables), each time through a connection of its own; a table that exists
    stays, so a "yes" is remembered (a wipe forgets). Works around
    https://github.com/dagster-io/dagster/issues/34058."""

    _tables: set[str]

    def has_table(self, table_name: str) -> bool:
        if table_name in self._tables:
            return True
        found = super().has_table(table_name)
        if found:
            self._tables.add(table_name)
        return found


class NormalSyncSqliteEventLogStorage(RememberedTables, SqliteEventLogStorage):
    """Dagster's SQLite event log with two changes, both per process:

    * each shard's connection stays open between events (Dagster opens an engine per event; a
      WAL database whose last connection closes is checkpointed and its WAL file removed, a sync
      and two file operations per event), and
    * commits run at ``synchronous=NORMAL`` (no sync per commit; WAL checkpoints still sync).

    Dagster's event writes begin with the write, so runs in parallel processes wait for the
    write lock (SQLite's busy timeout) as they do on Dagster's own storage.

    Several processes (webserver, daemon, run workers) may still share the files: SQLite's WAL
    locking is unchanged. Engines of run shards are closed after :data:`OPEN_SHARDS` others.
    """

    OPEN_SHARDS = 8

    def __init__(self, base_dir: str, inst_data=None):
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._tables: set[str] = set()
        super().__init__(base_dir, inst_data=inst_data)

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(inst_data=inst_data, **config_value)

    def _engine(self, shard: str) -> Engine:
        engine = self._engines.get(shard)
        if engine is not None:
            self._engines.move_to_end(shard)
            return engine
        engine = create_engine(self.conn_string_for_shard(shard), pool_size=1, max_overflow=0,
                               connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _normal_sync(dbapi_connection, _record):
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")

        self._engines[shard] = engine
        while len(self._engines) > self.OPEN_SHARDS:
            _, oldest = self._engines.popitem(last=False)
            oldest.dispose()
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:  # one connection per shard: callers in several threads take turns
            if shard not in self._initialized_dbs:  # as Dagster does it: a throwaway engine
                init_engine = create_engine(self.conn_string_for_shard(shard), poolclass=NullPool,
                                            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
                self._initdb(init_engine)
                init_engine.dispose()
                self._initialized_dbs.add(shard)
            engine = self._engine(shard)
            with engine.connect() as conn:
                with conn.begin():
                    yield conn

    def dispose_connections(self) -> None:
        """Close this process's connections (before forking run processes; reopened on next use)."""
        self._close_engines()

    def _close_engines(self) -> None:
        with self._db_lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()

    def wipe(self) -> None:
        self._close_engines()  # before the shard files go
        self._tables.clear()
        super().wipe()

    def dispose(self) -> None:
        self._close_engines()
        super().dispose()


class PooledPostgresEventLogStorage(RememberedTables, PostgresEventLogStorage):
    """Dagster's PostgreSQL event log with a connection kept open per process (Dagster's default
    opens one per statement group: ~3.6 ms each on loopback, three per check result) and the
    tables it asks about before most event writes remembered once they exist.

    The engine is the one Dagster builds for its webserver (``optimize_for_webserver``: one pooled
    connection, recycled hourly) plus a liveness ping at checkout, so a restarted server costs a
    reconnect, not a failed event write. Same configuration as ``PostgresEventLogStorage``.
    Works around https://github.com/dagster-io/dagster/issues/33935 (and, by the mixin, #34058).
    """

    POOL_RECYCLE_SECONDS = 3600
    OVERFLOW = 4  # threads of one process writing at once (rare: the run's steps log from one thread)

    def __init__(self, postgres_url: str, should_autocreate_tables: bool = True, inst_data=None,
                 token_provider=None):
        self._tables: set[str] = set()
        super().__init__(postgres_url, should_autocreate_tables, inst_data=inst_data, token_provider=token_provider)
        from dagster_postgres.utils import create_pg_engine

        self._engine.dispose()
        self._engine = create_pg_engine(self.postgres_url, self._token_provider, isolation_level="AUTOCOMMIT",
                                        pool_size=1, max_overflow=self.OVERFLOW,
                                        pool_recycle=self.POOL_RECYCLE_SECONDS, pool_pre_ping=True)

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config

        return cls(postgres_url=pg_url_from_config(config_value),
                   should_autocreate_tables=config_value.get("should_autocreate_tables", True),
                   inst_data=inst_data, token_provider=get_token_provider_from_config(config_value))

    def dispose_connections(self) -> None:
        """Close this process's connection (before forking run processes; reopened on next use)."""
        self._engine.dispose()

    def wipe(self) -> None:
        self._tables.clear()
        super().wipe()


def with_kept_connections(config: dict) -> dict:
    """A PostgreSQL instance configuration (``deploy/dagster.postgres.yaml`` read as a dict) opted
    in: Dagster's own event log storage replaced by :class:`PooledPostgresEventLogStorage`, as its
    comments tell a user to do by hand."""
    storage = config["event_log_storage"]
    if (storage["module"], storage["class"]) != ("dagster_postgres.event_log", "PostgresEventLogStorage"):
        raise ValueError(f"not Dagster's PostgreSQL event log: {storage['module']}.{storage['class']}")
    return {**config, "event_log_storage": {**storage, "module": __name__, "class": "PooledPostgresEventLogStorage"}}


def dagster_yaml(home: Path, kept_connections: bool = True) -> str:
    """The ``dagster.yaml`` for the embedded default: with ``kept_connections`` (the default, the
    demo's measured speed) :class:`NormalSyncSqliteEventLogStorage`, else Dagster's own (the block
    commented out). The PostgreSQL deployment (deploy/dagster.postgres.yaml) is Dagster's own unless
    a user opts in."""
    block = SQLITE_EVENT_LOG.format(event_log_dir=home / "history" / "runs")  # where Dagster's own writes
    if not kept_connections:
        block = "".join(f"# {line}" for line in block.splitlines(keepends=True))
    return DAGSTER_YAML.format(event_log=EVENT_LOG_OPT_IN + block, max_concurrent_runs=usable_cores())


def write_dagster_yaml(home: Path, kept_connections: bool = True) -> Path:
    """``home/dagster.yaml`` for the embedded default, unless one exists (a user's own is kept)."""
    path = home / "dagster.yaml"
    if not path.exists():
        path.write_text(dagster_yaml(home, kept_connections))
    return path


CLAIM_FILE = "q50_database"  # in a Dagster home: the database whose runs it keeps


def claim_home(home: Path, database: str) -> None:
    """Mark ``home`` as the run history of ``database`` (its label, never credentials), or refuse
    when it already holds another's: sensor cursors, pool partitions and materializations of two
    databases must never mix."""
    path = home / CLAIM_FILE
    if path.exists():
        claimed = path.read_text().strip()
        if claimed and claimed != database:
            raise ValueError(f"DAGSTER_HOME {home} keeps the runs of database {claimed}, not of {database}: "
                             "unset DAGSTER_HOME (each database then gets its own under its data folder) "
                             "or point it at another folder")
        return
    path.write_text(database + "\n")


def dagster_home(default_home: Path, database: str) -> Path:
    """``DAGSTER_HOME``, or ``default_home`` (made absolute, set in the environment) when unset;
    created, with its ``dagster.yaml``, and claimed for ``database``."""
    if not os.environ.get("DAGSTER_HOME"):
        default_home.mkdir(parents=True, exist_ok=True)
        os.environ["DAGSTER_HOME"] = str(default_home.resolve())
    home = Path(os.environ["DAGSTER_HOME"])
    if not home.is_absolute():
        raise ValueError(f"DAGSTER_HOME: must be an absolute path (got {home})")
    home.mkdir(parents=True, exist_ok=True)
    write_dagster_yaml(home)
    claim_home(home, database)
    return home


def local_instance(default_home: Path, database: str):
    """The instance of :func:`dagster_home`."""
    from dagster import DagsterInstance

    dagster_home(default_home, database)
    return DagsterInstance.get()
