"""One place that turns a database URL into a SQLAlchemy engine."""

from __future__ import annotations

import functools

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url


def normalize_database_url(url: str) -> str:
    """Pin PostgreSQL URLs to psycopg2, the driver installed with dagster-postgres.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg (v3), which is not installed.
    """
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg2")
    elif parsed.drivername.startswith("postgresql+") and parsed.drivername != "postgresql+psycopg2":
        raise ValueError(
            f"database URL driver {parsed.drivername!r} is not installed; use postgresql:// "
            "or postgresql+psycopg2://"
        )
    elif not parsed.drivername.startswith(("postgresql", "sqlite")):
        raise ValueError(
            f"database URL scheme {parsed.drivername!r} is not supported; use postgresql:// or sqlite://"
        )
    return parsed.render_as_string(hide_password=False)


def redact_url(url: str) -> str:
    """The URL as it may appear in logs and metadata: password hidden."""
    return make_url(url).render_as_string(hide_password=True)


@functools.cache
def get_engine(url: str) -> Engine:
    """A process-wide engine per URL (engines own connection pools: build each once)."""
    url = normalize_database_url(url)
    if url.startswith("sqlite"):
        # hide_parameters: an error names the statement, never megabytes of (possibly sensitive) values.
        engine = create_engine(url, connect_args={"timeout": 30}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # pragma: no cover - trivial
            cursor = dbapi_connection.cursor()
            # The collector's schema relies on foreign keys; SQLite enforces them only on request.
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, hide_parameters=True)
