"""Beyond one machine: a batch of pools through Dagster's Celery executor (dagster-celery), with a
real Redis broker (Debian's ``redis-server`` on a free loopback port), a Celery worker process,
and Dagster's run storage in the suite's PostgreSQL server (deploy/dagster.postgres.yaml).

The commands are the README's ("Beyond one machine"), run as a user would run them. Every step
executes in the worker; the tables and checks it produces equal an in-process run of the same
pools.

Needs ``redis-server`` (Debian: ``apt-get install -y redis-server``): without it the test skips,
or fails when ``CI`` is set.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from dagster import DagsterInstance
from sqlalchemy import create_engine, text

from q50_assets.automation.lineage_run import materialize_lineage
from q50_assets.automation.runs import range_tags
from q50_assets.db.engine import get_engine
from q50_assets.definitions import build_definitions
from q50_assets_tests.lineage.signals.test_model_and_signals_assets import DEEP_POOL, LIGHT_MODEL, QUIET
from q50_assets_tests.conftest import create_pg_database, drop_pg_database, settings_for

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
# Five neighbours in partition (sorted) order: one too short to use (blocked by enough_bars)
# and four long real pools, so the model trains on what the batch stored.
BATCH = [
    "solana_4WK1aeRrGGM88hknsrJjkELujpJPtA4Ad5E33tD9panw",
    "solana_4XUUrG5a7vHpotaAhF5fm9YCPpBcWDnjSmmYU61Sh6qR",
    "solana_4bzFMpWDVXfRhaY3Xg7nGUbHDSquY5MPTvib1n8Vfmno",
    "solana_4qs2R1Gsj2Lpy4ewV9hfVerNk2h4Qx3ZEkmJyKLywvb3",
    "solana_4w2cysotX6czaUGmmWg13hDpY4QEMG2CzeKYEQyK9Ama",
]
# Per table: columns that differ between two runs of the same inputs (ids, clocks, run ids).
PER_RUN = {
    "q50_feature_vectors": ["id", "created_at"],
    "q50_regime_labels": ["id", "created_at"],
    "q50_signals": ["id", "created_at", "model_run", "feature_vector_id"],
    "q50_backtest_results": ["id", "created_at", "backtest_run_id"],
    "q50_trading_history": ["id", "created_at", "backtest_run_id", "feature_vector_id", "q50_feature_vector_id"],
}
ORDER = {"q50_feature_vectors": ["pool_id", "timestamp"], "q50_regime_labels": ["pool_id", "timestamp"],
         "q50_signals": ["pool_id", "timestamp"], "q50_backtest_results": ["pool_id", "variant"],
         "q50_trading_history": ["pool_id", "timestamp", "nautilus_order_id"]}
STEP_SECONDS = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_url(tmp_path):
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is required in CI (Debian: apt-get install -y redis-server)")
        pytest.skip("redis-server not found (Debian: apt-get install -y redis-server)")
    port = _free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.1)
    yield f"redis://127.0.0.1:{port}"
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=20)


def _tables(url: str) -> dict[str, pd.DataFrame]:
    out = {}
    with get_engine(url).connect() as conn:
        for name, drop in PER_RUN.items():
            frame = pd.read_sql_table(name, conn).drop(columns=drop)
            out[name] = frame.sort_values(ORDER[name], kind="stable").reset_index(drop=True)
    return out


def _run(command: list[str], env: dict, log: Path) -> None:
    with open(log, "ab") as handle:
        handle.write(f"$ {' '.join(command)}\n".encode())
        handle.flush()
        done = subprocess.run(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=STEP_SECONDS)
    assert done.returncode == 0, f"{command[:4]} failed:\n{log.read_text()[-6000:]}"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_batch_through_the_celery_executor_equals_the_in_process_run(
        collector_url, sqlite_sample_file, postgres_url, redis_url, tmp_path, backend):
    dagster_db = create_pg_database(postgres_url)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.postgres.yaml", home / "dagster.yaml")
    (tmp_path / "celery.yaml").write_text(
        f"execution:\n  config:\n    broker: {redis_url}/0\n    backend: {redis_url}/1\n")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("Q50_")},
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the worker starts `celery` from PATH
        "PYTHONPATH": str(REPO),
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": dagster_db.replace("postgresql://", "postgresql+psycopg2://"),
        "Q50_DATABASE_URL": collector_url,
        "Q50_DATA_DIR": str(tmp_path / "data"),  # the QLib store and stored values: shared with the worker
        "Q50__EXECUTION__EXECUTOR": "celery",
        "Q50_CELERY_BROKER": f"{redis_url}/0",
        "Q50_CELERY_BACKEND": f"{redis_url}/1",
        **LIGHT_MODEL,
        **DEEP_POOL,  # the rules trade, so the trading history has rows to compare
    }
    log = tmp_path / "commands.log"
    tags = json.dumps(range_tags(BATCH))
    worker = None
    try:
        _run([str(VENV_BIN / "q50"), "migrate"], env, log)
        _run([str(VENV_BIN / "q50"), "register-pools"], env, log)
        worker = subprocess.Popen([str(VENV_BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
                                   "-y", str(tmp_path / "celery.yaml")], cwd=REPO, env=env,
                                  stdout=open(tmp_path / "worker.log", "wb"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        execute = [str(VENV_BIN / "dagster"), "job", "execute", "-m", "q50_assets.definitions", "-a", "defs"]
        _run([*execute, "-j", "refresh_pools", "-o", "ohlcv_bars,pool_trades,qlib_features,regime_labels", "--tags", tags], env, log)
        _run([*execute, "-j", "train_q50_model"], env, log)
        _run([*execute, "-j", "refresh_pools", "-o", "q50_signals,backtest_and_trading_history", "--tags", tags], env, log)
    finally:
        if worker is not None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
    print(f"commands and output: {log}; worker log: {tmp_path / 'worker.log'}")

    # Dagster's record, in PostgreSQL: three successful runs, every step executed in the worker,
    # every check recorded per pool.
    engine = create_engine(env["DAGSTER_PG_URL"])
    with engine.connect() as conn:
        runs = conn.execute(text("SELECT status FROM runs")).scalars().all()
        in_worker = conn.execute(text("SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ENGINE_EVENT' "
                                      "AND event LIKE '%in celery worker%'")).scalar()
        checks = pd.DataFrame(conn.execute(text(
            "SELECT asset_key, check_name, partition, execution_status FROM asset_check_executions "
            "WHERE execution_status IN ('SUCCEEDED', 'FAILED')")).all(),
            columns=["asset_key", "check_name", "partition", "status"])
    engine.dispose()
    drop_pg_database(postgres_url, dagster_db)
    assert runs == ["SUCCESS"] * 3
    assert in_worker == 4 + 1 + 2  # ohlcv, trades, features, regimes | model | signals, backtest + history
    blocked = checks[(checks["check_name"] == "enough_bars") & (checks["status"] == "FAILED")]["partition"].tolist()
    assert blocked == [BATCH[0]]

    # The same pools in-process, from a fresh copy of the collector database.
    local_url = f"sqlite:///{tmp_path / 'local.sqlite'}"
    shutil.copy(sqlite_sample_file, tmp_path / "local.sqlite")
    settings = settings_for(local_url, tmp_path / "local", **LIGHT_MODEL, **DEEP_POOL)
    with DagsterInstance.ephemeral() as instance:
        from q50_assets.cli import register_pools

        register_pools(settings, instance)
        run = materialize_lineage(build_definitions(settings), instance, BATCH, len(BATCH), run_config=QUIET,
                                  phases=["bars, trades, features, regimes", "model", "signals, backtests, trading history"])
        assert all(r.success for r in run.results())
        local_checks = {(e.asset_key.to_user_string(), e.check_name, e.partition, e.passed)
                        for r in run.results() for e in r.check_evaluations}
    celery_checks = {(json.loads(k)[0], c, p, s == "SUCCEEDED") for k, c, p, s in checks.itertuples(index=False)
                     if isinstance(p, str)}
    assert celery_checks == {c for c in local_checks if c[2] is not None}  # per-pool checks (the model's aside)

    celery_tables, local_tables = _tables(collector_url), _tables(local_url)
    for name in PER_RUN:
        assert len(celery_tables[name]) > 0, name
        pd.testing.assert_frame_equal(celery_tables[name], local_tables[name], obj=name)
    assert set(celery_tables["q50_signals"]["pool_id"]) == set(BATCH[1:])  # the blocked pool has none
