"""Security basics: least privilege on the collector database, no SQL built from data, no
credential in any committed file."""

from __future__ import annotations

import ast
import gzip
import os
import re
import secrets
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from dagster import DagsterInstance, materialize
from sqlalchemy import Boolean, DateTime, Float, Integer, String, create_engine, delete, false, func, insert, select
from sqlalchemy import text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from q50_assets.lineage.features.asset import qlib_features
from q50_assets.lineage.ohlcv.asset import ohlcv_bars
from q50_assets.lineage.common.partitions import POOLS_PARTITION_NAME
from q50_assets.lineage.regimes.asset import regime_labels
from q50_assets.db import migrate
from q50_assets.db.collector_models import COLLECTOR_TABLE_NAMES, COLLECTOR_TABLES, ohlcv_data, pools
from q50_assets.db.engine import get_engine
from q50_assets.db.q50_models import (
    Q50_TABLE_NAMES,
    q50_feature_vectors,
    q50_backtest_results,
    q50_regime_labels,
    q50_signals,
    q50_trading_history,
)
from q50_assets.definitions import build_resources
from q50_assets.storage.project_tables import ProjectTables
from q50_assets_tests.conftest import create_pg_database, drop_pg_database, settings_for

REPO = Path(__file__).resolve().parents[2]
MAIN_POOL = "solana_F5vAiFCP82RQetoxK7ax4dNQCwqk2yez6aisAbFPenJ2"


# --- 1. a role that may only SELECT the collector tables --------------------------------------

@pytest.fixture
def readonly_role(postgres_url, pg_sample_template):
    """A database with the sample loaded and a LOGIN role with a password that may only SELECT
    the collector's tables (REFERENCES on pools for the q50 foreign keys) and CREATE in schema
    public, where it owns the tables the project's migrations create.

    Why `public` and not a dedicated schema: migrate.upgrade refuses a database whose default
    schema has no `pools` table (inspect(engine).get_table_names()), and the q50 tables' foreign
    keys name `pools` unqualified; a role whose search_path starts with its own schema would fail
    that check. README's "Your own collector database" documents the same grants.

    The suite's server runs with `-A trust`, so the password is not verified: this proves
    privileges, not authentication. The password is random per run (no literal in this file).
    Yields (admin URL of the database, URL logging in as the role, role name)."""
    admin_url = create_pg_database(postgres_url, template=pg_sample_template)
    role = f"q50_ro_{os.getpid()}_{secrets.token_hex(4)}"  # generated here, never from data
    password = secrets.token_urlsafe(18)
    admin = create_engine(make_url(admin_url).set(drivername="postgresql+psycopg2"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:  # grants are per database: given in the test database
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN PASSWORD :password'), {"password": password})
        conn.execute(text(f'GRANT USAGE, CREATE ON SCHEMA public TO "{role}"'))
        for table in COLLECTOR_TABLE_NAMES:  # the collector's tables, by their model names
            conn.execute(text(f'GRANT SELECT ON "{table}" TO "{role}"'))
        conn.execute(text(f'GRANT REFERENCES ON pools TO "{role}"'))
    role_url = make_url(admin_url).set(username=role, password=password).render_as_string(hide_password=False)
    try:
        yield admin_url, role_url, role
    finally:
        admin.dispose()
        get_engine(role_url).dispose()
        drop_pg_database(postgres_url, admin_url)  # drops what the role owns there, too
        server = create_engine(make_url(f"{postgres_url}/postgres").set(drivername="postgresql+psycopg2"),
                               isolation_level="AUTOCOMMIT")
        with server.connect() as conn:  # roles are per cluster
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        server.dispose()


def _one_row(table, open_time: pd.Timestamp, vector_id: int) -> dict:
    """A plausible row of one of the project's tables (values by column type)."""
    fixed = {"id", "pool_id", "timeframe", "backtest_run_id", "created_at"}
    row = {}
    for column in table.columns:
        if column.name in fixed:
            continue
        if column.name == "feature_vector_id":
            row[column.name] = vector_id
        elif isinstance(column.type, DateTime):
            row[column.name] = open_time + pd.Timedelta(hours=1)
        elif isinstance(column.type, Boolean):
            row[column.name] = False
        elif isinstance(column.type, Integer):
            row[column.name] = 1
        elif isinstance(column.type, Float):
            row[column.name] = 0.5
        elif isinstance(column.type, String):
            row[column.name] = "hold"[: column.type.length]
    return row


def test_the_project_runs_as_a_role_that_may_only_select_the_collector_tables(readonly_role, tmp_path):
    admin_url, role_url, role = readonly_role
    role_engine = get_engine(role_url)
    counts_before = _collector_counts(admin_url)

    # Migrations run as the role and create tables it owns (version table included).
    assert migrate.upgrade(role_engine) == migrate.head_revision()
    with get_engine(admin_url).connect() as conn:
        owners = dict(conn.execute(text("SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'")).all())
    assert {t: owners[t] for t in (*Q50_TABLE_NAMES, migrate.VERSION_TABLE)} == \
        dict.fromkeys((*Q50_TABLE_NAMES, migrate.VERSION_TABLE), role)
    assert {t: owners[t] for t in COLLECTOR_TABLE_NAMES} == dict.fromkeys(COLLECTOR_TABLE_NAMES, "postgres")

    # The stages run as the role: ohlcv -> features (QLib store + q50_feature_vectors) -> regimes.
    settings = settings_for(role_url, tmp_path)
    assert make_url(settings.database_url).username == role
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(POOLS_PARTITION_NAME, [MAIN_POOL])
        result = materialize([ohlcv_bars, qlib_features, regime_labels], partition_key=MAIN_POOL,
                             resources=build_resources(settings), instance=instance)
        assert result.success
        features = result.output_for_node("qlib_features")[MAIN_POOL]
    with role_engine.connect() as conn:
        vectors = conn.execute(select(func.count()).select_from(q50_feature_vectors)
                               .where(q50_feature_vectors.c.pool_id == MAIN_POOL)).scalar()
        labels = conn.execute(select(func.count()).select_from(q50_regime_labels)
                              .where(q50_regime_labels.c.pool_id == MAIN_POOL)).scalar()
    assert vectors == 240 and labels > 0

    # Every other write method of ProjectTables works as the role (on the project's tables).
    db = ProjectTables(url=role_url)
    real = features[~features["is_filled"]]
    open_time, vector_id = real.index[-1], int(real["feature_vector_id"].iloc[-1])
    signal = pd.DataFrame([_one_row(q50_signals, open_time, vector_id)], index=[open_time])
    assert db.replace_pool_rows_many(q50_signals, "1h", {MAIN_POOL: signal}) == {MAIN_POOL: 1}
    assert db.signal_for_timestamp(MAIN_POOL, "1h", open_time + pd.Timedelta(hours=2))["feature_vector_id"] == vector_id
    labels = pd.DataFrame([_one_row(q50_regime_labels, open_time, 0)], index=[open_time])
    assert db.replace_pool_rows_many(q50_regime_labels, "1h", {MAIN_POOL: labels}) == {MAIN_POOL: 1}
    result_row = _one_row(q50_backtest_results, open_time, vector_id) | {"variant": "q50"}
    assert db.replace_backtest_results_many("1h", {MAIN_POOL: ("run-1", pd.DataFrame([result_row]))}) == {MAIN_POOL: 1}
    assert len(db.latest_backtest_results("1h")) == 1
    fill = _one_row(q50_trading_history, open_time, vector_id) | {"timestamp": open_time}
    assert db.replace_trading_history_many({MAIN_POOL: ("run-1", pd.DataFrame([fill]))}) == {MAIN_POOL: 1}
    assert db.trading_history_many({MAIN_POOL: "run-1"})[MAIN_POOL]["feature_vector_id"].tolist() == [vector_id]

    # ...and the grant is real: every write to a collector table is refused.
    with role_engine.connect() as conn:
        bar = dict(conn.execute(select(ohlcv_data).limit(1)).mappings().one())
    attempts = [insert(ohlcv_data).values({**bar, "id": bar["id"] + 10**9, "timestamp": bar["timestamp"] + 1})]
    for table in COLLECTOR_TABLES:
        key = next(iter(table.primary_key.columns))
        attempts += [update(table).where(false()).values({key.name: key}), delete(table).where(false())]
    attempts.append(text("TRUNCATE pools CASCADE"))
    for statement in attempts:
        with pytest.raises(ProgrammingError, match="permission denied"):
            with role_engine.begin() as conn:
                conn.execute(statement)
    with pytest.raises(ProgrammingError, match="must be owner"):
        with role_engine.begin() as conn:
            conn.execute(text("ALTER TABLE ohlcv_data ADD COLUMN q50_note TEXT"))
    assert _collector_counts(admin_url) == counts_before  # nothing the role did changed a collector table


def _collector_counts(url: str) -> dict[str, int]:
    with get_engine(url).connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar() for t in COLLECTOR_TABLES}


# --- 2. no SQL built from data ------------------------------------------------------------------

# Raw SQL statements in string literals, upper-case keywords (lower-case prose such as "select a
# timeframe from ..." is common in messages; lower-case SQL handed to text()/execute() is rule (a)).
_SQL = re.compile(
    r"\b(SELECT\b.*\bFROM|INSERT\s+INTO|UPDATE\s+\S+\s+SET|DELETE\s+FROM|(CREATE|DROP|ALTER|TRUNCATE)\s+"
    r"(TABLE|INDEX|ROLE|DATABASE|SCHEMA|SEQUENCE)|GRANT\s|REVOKE\s|PRAGMA\s)",
    re.DOTALL,
)
_SQL_ENTRY_POINTS = {"text", "execute", "exec_driver_sql", "executemany", "executescript", "literal_column"}

# Exact, justified exceptions: (path, unparsed first argument). Empty: nothing needs one today.
SQL_ALLOWED: set[tuple[str, str]] = set()


def _python_sources() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "q50_assets"], cwd=REPO, capture_output=True, text=True, check=True)
    return [REPO / p for p in listed.stdout.split() if p.endswith(".py") and (REPO / p).exists()]


def _is_str(node: ast.AST) -> bool:
    return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str))


def _is_built_string(node: ast.AST) -> bool:
    """An f-string, %-formatting, + concatenation with a string, str.format(...) or "".join(...)."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.FormattedValue) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        return _is_str(node.left)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return any(_is_str(side) or _is_built_string(side) for side in (node.left, node.right))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("format", "join"):
        return _is_str(node.func.value)
    return False


def _literal_text(node: ast.AST) -> str:
    return " ".join(n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str))


def _sqlalchemy_names(tree: ast.Module) -> set[str]:
    """Local names bound to SQLAlchemy's text/literal_column (MetadataValue.text is not SQL)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
            names |= {a.asname or a.name for a in node.names if a.name in ("text", "literal_column")}
    return names


def sql_built_from_data(path: Path, root: Path = REPO) -> list[str]:
    """``path:line: code`` of every place that builds SQL from strings, minus SQL_ALLOWED."""
    tree = ast.parse(path.read_text(), filename=str(path))
    sa_text = _sqlalchemy_names(tree)
    found: dict[int, str] = {}  # one finding per line (an f-string inside a concatenation is one)
    for node in ast.walk(tree):
        # (a) text()/execute()/... handed a string assembled at run time.
        if isinstance(node, ast.Call) and node.args:
            func_node = node.func
            if isinstance(func_node, ast.Name):
                is_sql = func_node.id in sa_text
            elif isinstance(func_node, ast.Attribute):
                owner = func_node.value.id if isinstance(func_node.value, ast.Name) else ""
                is_sql = func_node.attr in _SQL_ENTRY_POINTS and (
                    func_node.attr not in ("text", "literal_column") or owner in ("sa", "sqlalchemy"))
            else:
                is_sql = False
            if is_sql and _is_built_string(node.args[0]):
                found.setdefault(node.lineno, ast.unparse(node.args[0]))
        # (b) any assembled string whose literal parts read like a SQL statement.
        if _is_built_string(node) and _SQL.search(_literal_text(node)):
            found.setdefault(node.lineno, ast.unparse(node))
    rel = path.relative_to(root).as_posix()
    return [f"{rel}:{line}: {code}" for line, code in sorted(found.items()) if (rel, code) not in SQL_ALLOWED]


def test_the_scanner_finds_sql_built_from_data(tmp_path):
    """The scanner itself: each way of building SQL from data is found, the safe forms are not."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from sqlalchemy import text\n"
        "def f(conn, pool_id, table):\n"
        "    conn.execute(text(f\"SELECT * FROM ohlcv_data WHERE pool_id = '{pool_id}'\"))\n"
        "    conn.execute(text('DELETE FROM ohlcv_data WHERE pool_id = ' + pool_id))\n"
        "    conn.exec_driver_sql('UPDATE pools SET name = %s' % pool_id)\n"
        "    sql = 'INSERT INTO {} VALUES (1)'.format(table)\n"
        "    cursor.execute(\"DROP TABLE \" + table)\n"
    )
    safe = tmp_path / "safe.py"
    safe.write_text(
        "from sqlalchemy import delete, select, text\n"
        "from dagster import MetadataValue\n"
        "def f(conn, t, pool_id, n):\n"
        "    conn.execute(select(t).where(t.c.pool_id == pool_id))\n"
        "    conn.execute(text('SELECT 1 FROM pools WHERE id = :id'), {'id': pool_id})\n"
        "    cursor.execute('PRAGMA foreign_keys=ON')\n"
        "    MetadataValue.text(f'{n} bars selected from the table')\n"
        "    conn.execute(delete(t).where(t.c.pool_id == pool_id))\n"
        "    raise ValueError(f'pool {pool_id}: select a timeframe from {n}')\n"
    )
    assert [hit.split(":")[1] for hit in sql_built_from_data(bad, root=tmp_path)] == ["3", "4", "5", "6", "7"]
    assert sql_built_from_data(safe, root=tmp_path) == []


def test_no_sql_is_built_by_string_formatting_from_data():
    sources = _python_sources()
    assert len(sources) > 30 and {"collector.py", "project_tables.py"} <= {p.name for p in sources}
    offenders = [hit for path in sources for hit in sql_built_from_data(path)]
    assert offenders == [], "SQL built from strings (use SQLAlchemy Core with bound parameters):\n" + "\n".join(offenders)


# --- 3. no credential in any committed file -------------------------------------------------------

_PRIVATE_KEY = re.compile("-" * 5 + r"BEGIN ((RSA|EC|DSA|OPENSSH|PGP|ENCRYPTED) )?PRIVATE KEY( BLOCK)?" + "-" * 5)
_AWS_KEY = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
_URL_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.\-]*://([^\s:/@'\"`]+):([^\s@/'\"`]+)@", re.IGNORECASE)
_SECRET_NAMES = r"(password|passwd|pwd|secret|secret_key|api_key|apikey|access_key|auth_token)"
# password="x", 'password': 'x', password: "x" (any file)
_QUOTED_SECRET = re.compile(_SECRET_NAMES + r"\b[\"']?\s*[:=]\s*[\"']([^\"'\s]+)[\"']", re.IGNORECASE)
# PGPASSWORD=x, export API_KEY=x (shell, env files, Makefiles, CI scripts, docs; not Python constants)
_ENV_SECRET = re.compile(r"^\s*(?:export\s+)?([A-Z0-9_]*(?:PASSWORD|SECRET|API_KEY|TOKEN))\s*=\s*([^\s#]+)", re.MULTILINE)
# password: x (YAML / INI / TOML keys; in Python `password: str` is an annotation)
_CONFIG_SECRET = re.compile(r"^\s*" + _SECRET_NAMES + r"\s*[:=]\s*([^\s#]+)", re.IGNORECASE | re.MULTILINE)
_CONFIG_FILE = re.compile(r"\.(ya?ml|ini|toml|cfg|conf|env)$")
# Files that must never be committed, whatever they contain.
_SECRET_FILE = re.compile(r"(^|/)(\.env(\..+)?|\.pgpass|\.netrc|id_rsa|id_ed25519|.+\.pem|.+\.key|.+\.p12)$")

# Placeholders documentation may show instead of a password.
PLACEHOLDERS = re.compile(r"^(\$\{?\w+\}?|<[^>]+>|\*+|x+|PASSWORD|password|\.\.\.)$")
# Deliberately fake credentials, each proving that the project hides or refuses a real one.
CREDENTIALS_ALLOWED = {
    # the sensor's error message must not leak the password of an unreachable database
    ("q50_assets_tests/automation/test_new_bars_sensor.py", "q50_reader:s3cret-pw@"),
    # redact_url hides the password
    ("q50_assets_tests/db/test_engine.py", "u:s3cret@"),
    # config.yaml refuses a URL (credentials belong in the environment)
    ("q50_assets_tests/test_settings.py", "u:secret@"),
}


def credential_findings(rel: str, content: str) -> list[str]:
    found = []
    for m in _URL_PASSWORD.finditer(content):
        if not PLACEHOLDERS.match(m.group(2)) and (rel, f"{m.group(1)}:{m.group(2)}@") not in CREDENTIALS_ALLOWED:
            found.append(f"{rel}: URL with a password ({m.group(1)}:***@)")
    secrets_found = list(_QUOTED_SECRET.finditer(content))
    if not rel.endswith(".py"):
        secrets_found += _ENV_SECRET.finditer(content)
    if _CONFIG_FILE.search(rel):
        secrets_found += _CONFIG_SECRET.finditer(content)
    for m in secrets_found:
        if not PLACEHOLDERS.match(m.group(2).strip("\"'")) and m.group(2) not in ("null", "~", "''", '""'):
            found.append(f"{rel}: literal value for {m.group(1)}")
    if _AWS_KEY.search(content):
        found.append(f"{rel}: AWS access key id")
    if _PRIVATE_KEY.search(content):
        found.append(f"{rel}: private key")
    return found


def _committed_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p]


def _read(rel: str) -> str | None:
    path = REPO / rel
    if not path.is_file():
        return None
    raw = path.read_bytes()
    if rel.endswith(".gz"):
        raw = gzip.decompress(raw)
    if b"\0" in raw[:8192]:
        return None  # binary
    return raw.decode("utf-8", errors="replace")


def test_the_credential_scan_finds_what_it_should():
    # Split literals: this file is committed too, and must not trip its own scan.
    leaks = {
        "a.py": 'URL = "postgresql://reader:hunter2' + '@db:5432/collector"',
        "b.yaml": "database:\n  pass" + "word: correct-horse\n",
        "c.sh": "export PGPASS" + "WORD=correct-horse\n",
        "d.txt": "key AKIA" + "ABCDEFGHIJKLMNOP" + " here",
        "e.txt": "-" * 5 + "BEGIN OPENSSH PRIVATE KEY" + "-" * 5,
        "f.py": 'connect(pass' + 'word="hunter2")',
        "g.json": '{"api_' + 'key": "0123abcd"}',
    }
    for rel, content in leaks.items():
        assert credential_findings(rel, content), rel
    fine = {
        "README.md": "export Q50_DATABASE_URL=postgresql://q50_reader@db-host:5432/gecko\n"
                     "postgresql://USER:PASSWORD@host/db or postgresql://u:${PGPASSWORD}@h/db\n",
        "engine.py": "parsed.render_as_string(hide_password=False)\npassword = os.environ['X']\n"
                     "password: str = Field(...)\n",
        "config.yaml": "database:\n  url: null\n",
        "q50_assets_tests/db/test_engine.py": 'redact_url("postgresql://u:s3cret' + '@h/db")',
    }
    for rel, content in fine.items():
        assert credential_findings(rel, content) == [], rel
    assert _SECRET_FILE.search("deploy/.env") and _SECRET_FILE.search(".env.production")
    assert not _SECRET_FILE.search("q50_assets/db/engine.py")


def test_no_credential_in_any_committed_file():
    files = _committed_files()
    assert "README.md" in files and "config.yaml" in files
    assert [f for f in files if _SECRET_FILE.search(f)] == []
    findings = []
    for rel in files:
        content = _read(rel)
        if content is not None:
            findings += credential_findings(rel, content)
    assert findings == []
    # Every allow-listed fake credential still exists where it is listed (no stale exceptions).
    for rel, fragment in CREDENTIALS_ALLOWED:
        assert fragment in (REPO / rel).read_text(), (rel, fragment)
