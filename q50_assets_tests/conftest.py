"""Shared fixtures: a real PostgreSQL server started by the suite, and collector databases
(SQLite and PostgreSQL) holding the bundled real sample.

``Q50_TEST_POSTGRES_URL`` (a superuser URL, no database) uses an existing server instead.
Under CI (``CI`` set) a missing PostgreSQL fails the suite instead of skipping.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from q50_assets.db.engine import get_engine
from q50_assets.db.sample_loader import load_sample
from q50_assets.settings import Settings, load_settings


def _pg_bindir() -> Path | None:
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
        candidate = Path(out.stdout.strip())
        if (candidate / "initdb").exists():
            return candidate
    except (OSError, subprocess.CalledProcessError):
        pass
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _no_postgres(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL is required in CI: {reason}")
    pytest.skip(reason)


class PostgresServer:
    """A throwaway PostgreSQL cluster on loopback (initdb refuses root: run as `postgres`)."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        # The system's temporary directory (TMPDIR), not the test's tmp_path: the server's socket
        # path must stay short, and as root the `postgres` user must be able to reach the data dir.
        self.base = Path(tempfile.mkdtemp(prefix="q50-pg-"))
        self.port = _free_port()
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.base, "postgres", "postgres")

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, text=True)

    def start(self) -> str:
        data = self.base / "data"
        self._run("initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.base} -c fsync=off -c max_connections=200"
        self._run("pg_ctl", "-D", str(data), "-l", str(self.base / "log"), "-w", "-o", options, "start")
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.base / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """Superuser URL (no database part) of a running PostgreSQL server."""
    external = os.environ.get("Q50_TEST_POSTGRES_URL")
    if external:
        yield external.rstrip("/")
        return
    bindir = _pg_bindir()
    if bindir is None:
        _no_postgres("PostgreSQL server binaries (initdb) not found")
    server = PostgresServer(bindir)
    try:
        url = server.start()
    except subprocess.CalledProcessError as exc:
        server.stop()
        _no_postgres(f"could not start PostgreSQL: {exc.stderr}")
    yield url
    server.stop()


_db_counter = itertools.count()


def create_pg_database(server_url: str, template: str | None = None) -> str:
    name = f"q50_test_{os.getpid()}_{next(_db_counter)}"
    admin = create_engine(f"{server_url}/postgres".replace("postgresql://", "postgresql+psycopg2://"),
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        # Names are generated here, never from data: safe to place in DDL.
        conn.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    admin.dispose()
    return f"{server_url}/{name}"


def drop_pg_database(server_url: str, url: str) -> None:
    get_engine(url).dispose()
    name = url.rsplit("/", 1)[1]
    admin = create_engine(f"{server_url}/postgres".replace("postgresql://", "postgresql+psycopg2://"),
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def pg_sample_template(postgres_url) -> str:
    """A PostgreSQL database holding the loaded sample, used as CREATE DATABASE template."""
    url = create_pg_database(postgres_url)
    load_sample(get_engine(url))
    get_engine(url).dispose()  # a template must have no open connections
    return url.rsplit("/", 1)[1]


@pytest.fixture(scope="session")
def sqlite_sample_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sample") / "collector.sqlite"
    engine = get_engine(f"sqlite:///{path}")
    load_sample(engine)
    engine.dispose()
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def empty_db_url(backend, request, tmp_path) -> str:
    """An empty database of the parametrised backend."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.sqlite'}"
        return
    server = request.getfixturevalue("postgres_url")
    url = create_pg_database(server)
    yield url
    drop_pg_database(server, url)


@pytest.fixture
def collector_url(backend, request, tmp_path) -> str:
    """A fresh collector database of the parametrised backend with the sample loaded."""
    if backend == "sqlite":
        path = tmp_path / "collector.sqlite"
        shutil.copy(request.getfixturevalue("sqlite_sample_file"), path)
        url = f"sqlite:///{path}"
        yield url
        get_engine(url).dispose()
        return
    server = request.getfixturevalue("postgres_url")
    url = create_pg_database(server, template=request.getfixturevalue("pg_sample_template"))
    yield url
    drop_pg_database(server, url)


def settings_for(url: str, data_dir: Path, **env: str) -> Settings:
    """Project settings (the repo's config.yaml) pointed at a test database."""
    return load_settings(environ={"Q50_DATABASE_URL": url, "Q50_DATA_DIR": str(data_dir), **env})
