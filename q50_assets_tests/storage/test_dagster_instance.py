"""The Dagster instance configurations and the opt-in event log storages: Dagster's own storages
by default, ours only when named, and every private internal of Dagster they rely on still there
in the installed version (a Dagster upgrade that renames or changes one fails here, by name)."""

from __future__ import annotations

import hashlib
import inspect
import re
from pathlib import Path

import dagster
import dagster_postgres
import pytest
import yaml
from dagster import DagsterInstance
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster_postgres.event_log.event_log import PostgresEventLogStorage

from q50_assets.machine import usable_cores
from q50_assets.storage import dagster_instance
from q50_assets.storage.dagster_instance import (
    PRIVATE_INTERNALS,
    NormalSyncSqliteEventLogStorage,
    dagster_yaml,
    with_kept_connections,
)

DEPLOY_YAML = Path(__file__).resolve().parents[2] / "deploy" / "dagster.postgres.yaml"

# Dagster's methods whose bodies ours copy or build on, as read when the storages were written:
# a change upstream (a fix, a new option) must be read before it is shadowed.
UPSTREAM_SOURCES = {
    (SqliteEventLogStorage, "_connect"): "NormalSyncSqliteEventLogStorage._connect copies its body",
    (PostgresEventLogStorage, "__init__"): "PooledPostgresEventLogStorage.__init__ rebuilds the engine it makes",
}
UPSTREAM_DIGESTS = {
    (SqliteEventLogStorage, "_connect"): "b8435f2665689760",  # dagster 1.13.27
    (PostgresEventLogStorage, "__init__"): "647dff00b58c1222",  # dagster-postgres 0.29.27
}
VERSIONS = f"dagster {dagster.__version__}, dagster-postgres {dagster_postgres.__version__}"


def _digest(cls: type, name: str) -> str:
    return hashlib.sha256(inspect.getsource(getattr(cls, name)).encode()).hexdigest()[:16]


@pytest.mark.parametrize("cls,name", [(c, n) for c, names in PRIVATE_INTERNALS.items() for n in names],
                         ids=lambda x: x if isinstance(x, str) else x.__name__)
def test_every_private_internal_relied_on_is_still_there(cls, name, tmp_path):
    expected = PRIVATE_INTERNALS[cls][name]
    where = f"{cls.__name__}.{name} ({VERSIONS}), which q50_assets/storage/dagster_instance.py relies on"
    if expected is None:  # an instance attribute the parent's __init__ sets
        if cls is SqliteEventLogStorage:
            assert hasattr(cls(str(tmp_path / "events")), name), f"{where}, is gone"
        else:  # no server needed: the parent's __init__ must still assign it
            source = inspect.getsource(cls.__init__)
            assert re.search(rf"self\.{re.escape(name)}\s*(:[^=]+)?=", source), f"{where}, is no longer set"
        return
    assert hasattr(cls, name), f"{where}, is gone"
    found = tuple(inspect.signature(getattr(cls, name)).parameters)
    assert found == expected, f"{where}, changed its parameters: expected {expected}, found {found}"


@pytest.mark.parametrize("cls,name", list(UPSTREAM_SOURCES), ids=lambda x: x if isinstance(x, str) else x.__name__)
def test_the_upstream_code_ours_copies_is_unchanged(cls, name):
    assert _digest(cls, name) == UPSTREAM_DIGESTS[(cls, name)], (
        f"{cls.__name__}.{name} changed upstream ({VERSIONS}): {UPSTREAM_SOURCES[(cls, name)]}; read the new "
        "code against it (q50_assets/storage/dagster_instance.py), then update the digest here")


def test_the_local_instance_keeps_connections_and_can_use_dagsters_own_event_log(tmp_path):
    # The embedded default keeps connections (the demo's measured speed); commented out, Dagster's own.
    assert "class: NormalSyncSqliteEventLogStorage\n" in dagster_yaml(tmp_path)
    assert "# event_log_storage:" not in dagster_yaml(tmp_path)
    for kept, storage_class in ((False, SqliteEventLogStorage), (True, NormalSyncSqliteEventLogStorage)):
        home = tmp_path / ("kept" if kept else "default")
        home.mkdir()
        (home / "dagster.yaml").write_text(dagster_yaml(home, kept_connections=kept))
        with DagsterInstance.from_config(str(home)) as instance:
            assert type(instance.event_log_storage) is storage_class
            # Both write the same folder: opting in or out keeps the history.
            assert Path(instance.event_log_storage._base_dir) == home / "history" / "runs"
            assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == usable_cores()


def test_the_deploy_file_uses_dagsters_own_event_log_and_says_how_to_opt_in():
    text = DEPLOY_YAML.read_text()
    config = yaml.safe_load(text)
    assert config["event_log_storage"]["module"] == "dagster_postgres.event_log"
    assert config["event_log_storage"]["class"] == "PostgresEventLogStorage"
    assert "#   class: PooledPostgresEventLogStorage" in text and "#   module: q50_assets.storage.dagster_instance" in text
    opted = with_kept_connections(config)["event_log_storage"]
    assert getattr(dagster_instance, opted["class"]).__module__ == opted["module"]
    assert opted["config"] == config["event_log_storage"]["config"]
    assert "max_concurrent_runs" not in config["concurrency"]["runs"]  # the machine's to say (see its comment)
