"""Faults, on a real PostgreSQL server that these tests stop and restart.

(a) The server stops in the middle of a ``q50_trading_history`` write (after the transaction's
    DELETE, at its INSERT): the run fails naming the write, the database and the lost
    connection; the transaction is gone (no rows of the failed write, the earlier rows intact
    byte for byte); the next run after the restart writes what a clean run writes.
(b) Two ``refresh_pools`` runs of the same pool at once (this process and a child process, like
    two run workers), their transactions made to overlap at every shared write: no duplicate
    rows anywhere, both runs succeed (``ProjectTables._write_many`` serialises writers of the same
    rows with a PostgreSQL advisory lock; before it, the later run failed with a UniqueViolation,
    and two writers of one backtest run's history stored every fill twice). Batch runs cover pool
    ranges and carry no ``dagster/partition`` tag, so the run queue's per-pool limit does not keep
    a sensor batch and a backfill batch sharing a pool apart: the database locks, the QLib store's
    file lock (see the last test) and the pickles' write-aside-and-rename are what make it safe.
(c) The collector database becomes unreachable under the new-bars sensor (stopped before a tick,
    and killed in the middle of one): the tick skips naming the error, the cursor stays, and the
    first tick after the restart requests the pools whose bars arrived meanwhile.
(d) Every asset materialized twice (three pools, the model, the portfolio): identical q50 tables
    (row counts and content hashes, per-run columns excluded by name below), identical QLib
    store files, identical backtests (Nautilus' random UUID columns excluded).

The module runs its OWN server (``ControlledPostgres``); the suite's session server is never
stopped. One prepared lineage (``prepared``) serves (a), (b) and (d).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, SensorResult, SkipReason, instance_for_test
from sqlalchemy import event, select, text

from q50_assets.lineage.common.partitions import POOLS_PARTITION_NAME
from q50_assets.lineage.common.conditions import TRIGGER_TAG
from q50_assets.db.engine import get_engine
from q50_assets.db.q50_models import Q50_TABLE_NAMES, q50_metadata
from q50_assets.db.sample_loader import load_sample
from q50_assets.definitions import build_definitions
from q50_assets.storage.project_tables import ProjectTables
from q50_assets.storage.qlib_store import QlibStore
from q50_assets.lineage.backtest.step import variants_for
from q50_assets.settings import BacktestSettings
from q50_assets.lineage.features.formulas import STORE_FIELDS
from q50_assets_tests.lineage.signals.test_model_and_signals_assets import DEEP_POOL, LIGHT_MODEL, QUIET, run_lineage
from q50_assets_tests.automation.test_new_bars_sensor import Ticker
from q50_assets_tests.collector_sim import append_bars, record_collector_run, take_bars_from
from q50_assets_tests.conftest import PostgresServer, _no_postgres, _pg_bindir, create_pg_database, settings_for

REPO = Path(__file__).resolve().parents[2]
# Three real hourly pools the light model trains on (as in assets/test_backtest_and_history.py);
# POOL is one whose q50 backtest trades there (with DEEP_POOL's costs), so its trading history is
# not empty.
POOLS = [
    "solana_4w2cysotX6czaUGmmWg13hDpY4QEMG2CzeKYEQyK9Ama",
    "solana_Q2sPHPdUWFMg7M7wwrQKLrn619cAucfRsmhVJffodSp",
    "solana_Ekv9HdumWqnXZgq5G6ge6bk1ZRHKXYC2WnSFL94sQmLJ",
]
POOL = POOLS[2]

# Columns that legitimately differ between two materializations of the same inputs, per q50
# table; everything else must be equal. A new q50 table fails test (d) until it is listed here.
PER_RUN_COLUMNS: dict[str, dict[str, str]] = {
    # Upserted in place on (pool, timeframe, bar, feature-set version): ids and created_at stay
    # (signals and trading history point at these ids), so nothing is excluded.
    "q50_feature_vectors": {},
    "q50_signals": {
        "id": "serial of a row deleted and re-inserted by every run",
        "created_at": "server clock at insert",
        "model_run": "Dagster run id of the q50_model materialization that produced the signal",
    },
    "q50_regime_labels": {
        "id": "serial of a row deleted and re-inserted by every run",
        "created_at": "server clock at insert",
    },
    "q50_backtest_results": {
        "id": "serial; each backtest run adds its own rows",
        "created_at": "server clock at insert",
        "backtest_run_id": "the Dagster run id of the backtest (rows of earlier runs are kept as history)",
    },
    "q50_trading_history": {
        "id": "serial; each backtest run adds its own rows",
        "created_at": "server clock at insert",
        "backtest_run_id": "the Dagster run id of the backtest (rows of earlier runs are kept as history)",
        # nautilus_order_id is NOT excluded: Nautilus' client order ids are O-<bar time>-<trader>-
        # <strategy>-<count>, deterministic in a backtest. Its random ids (event_id, init_id,
        # trade_id) are never stored.
    },
    # Upserted on (configuration hash, window, variant): re-running a configuration adds no trial,
    # only the clock of its latest evaluation moves.
    "q50_trials": {
        "last_seen_at": "clock of the latest run that evaluated the configuration on the window",
    },
}
# Rows that make up one materialization: per backtest run in these tables, the whole table elsewhere.
PER_RUN_TABLES = {"q50_backtest_results", "q50_trading_history"}
# Natural keys, to sort rows before hashing (ids are not comparable between runs).
ROW_ORDER = {
    "q50_feature_vectors": ["pool_id", "timeframe", "timestamp", "feature_set_version"],
    "q50_signals": ["pool_id", "timeframe", "timestamp"],
    "q50_regime_labels": ["pool_id", "timeframe", "timestamp"],
    "q50_backtest_results": ["pool_id", "variant"],
    "q50_trading_history": ["pool_id", "timestamp", "nautilus_order_id"],
    "q50_trials": ["config_hash", "window_start", "window_end", "variant"],
}
# Columns of Nautilus' own reports that are random per engine run (UUID4s, random trade ids).
NAUTILUS_RANDOM_COLUMNS = {"event_id", "init_id", "trade_id", "last_trade_id"}


# --- the server --------------------------------------------------------------------------------

class ControlledPostgres(PostgresServer):
    """conftest's throwaway server, plus stopping it abruptly and starting it again on the same data."""

    running = False

    def start(self) -> str:
        self.url = super().start()
        self.running = True
        return self.url

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.base / "data"), *args)

    def kill(self) -> None:
        """An immediate shutdown: backends exit at once, open transactions are never committed."""
        self._pg_ctl("-m", "immediate", "-w", "stop")
        self.running = False

    def restart(self) -> None:
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.base} -c fsync=off "
                   "-c max_connections=200")
        self._pg_ctl("-l", str(self.base / "log"), "-w", "-o", options, "start")  # crash recovery first
        self.running = True

    def stop(self) -> None:
        if self.running:
            super().stop()
        else:
            shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def pg():
    bindir = _pg_bindir()
    if bindir is None:
        _no_postgres("PostgreSQL server binaries (initdb) not found")
    server = ControlledPostgres(bindir)
    try:
        server.start()
    except subprocess.CalledProcessError as exc:
        server.stop()
        _no_postgres(f"could not start PostgreSQL: {exc.stderr}")
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _server_up_after_each_test(pg):
    """A test that fails while the server is down must not take the next tests with it."""
    yield
    if not pg.running:
        pg.restart()


@pytest.fixture(scope="module")
def sample_template(pg) -> str:
    url = create_pg_database(pg.url)
    load_sample(get_engine(url))
    get_engine(url).dispose()  # a template must have no open connections
    return url.rsplit("/", 1)[1]


@dataclass
class Prepared:
    """Materialization #1 of every asset for POOLS (model and portfolio included)."""

    url: str
    settings: object
    instance: DagsterInstance
    storage: Path  # the pickle IO manager's directory (asset values, under the data dir)
    out: dict      # run_lineage's asset values


@pytest.fixture(scope="module")
def prepared(pg, sample_template, tmp_path_factory) -> Prepared:
    url = create_pg_database(pg.url, template=sample_template)
    base = tmp_path_factory.mktemp("faults")
    settings = settings_for(url, base / "data", **LIGHT_MODEL, **DEEP_POOL)
    with DagsterInstance.ephemeral(tempdir=str(base / "dagster")) as instance:
        instance.add_dynamic_partitions(POOLS_PARTITION_NAME, POOLS)
        out = run_lineage(settings, instance, backtest=True, pools=POOLS)
        assert all(out["backtests"][p].status == "ok" for p in POOLS)
        assert len(out["history"][POOL]) > 0
        yield Prepared(url, settings, instance, settings.database_dir / "asset_values", out)
    get_engine(url).dispose()


# --- reading tables back -----------------------------------------------------------------------

def read_table(url: str, name: str, where=None) -> pd.DataFrame:
    table = q50_metadata.tables[name]
    stmt = select(table) if where is None else select(table).where(where(table))
    with get_engine(url).connect() as conn:
        rows = conn.execute(stmt).mappings().all()
    return pd.DataFrame([dict(r) for r in rows], columns=[c.name for c in table.columns])


def _canonical(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NULL"
    if isinstance(value, float):
        return repr(value)  # shortest round-trip text: equal text <=> equal double
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if hasattr(value, "isoformat"):
        return pd.Timestamp(value).tz_convert("UTC").isoformat() if getattr(value, "tzinfo", None) else value.isoformat()
    return repr(value)


def comparable(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """The table's rows without its per-run columns, in natural-key order."""
    kept = frame.drop(columns=list(PER_RUN_COLUMNS[name]))
    return kept.sort_values(ROW_ORDER[name], kind="stable").reset_index(drop=True)


def content_hash(frame: pd.DataFrame) -> str:
    digest = hashlib.sha256("\x1f".join(frame.columns).encode())
    for row in frame.itertuples(index=False):
        digest.update(("\x1e" + "\x1f".join(_canonical(v) for v in row)).encode())
    return digest.hexdigest()


def materialization_rows(url: str, backtest_run_ids: set[str]) -> dict[str, pd.DataFrame]:
    """Per q50 table, the rows one materialization wrote (comparable form)."""
    out = {}
    for name in Q50_TABLE_NAMES:
        if name in PER_RUN_TABLES:
            frame = read_table(url, name, lambda t: t.c.backtest_run_id.in_(sorted(backtest_run_ids)))
        else:
            frame = read_table(url, name)
        out[name] = comparable(frame, name)
    return out


def table_counts(url: str) -> dict[str, int]:
    with get_engine(url).connect() as conn:
        return {n: conn.execute(text(f"SELECT count(*) FROM {n}")).scalar() for n in Q50_TABLE_NAMES}


def tree_hash(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (the QLib store), but its lock file."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def history_of(url: str, backtest_run_id: str, pool_id: str = POOL) -> pd.DataFrame:
    return read_table(url, "q50_trading_history",
                      lambda t: (t.c.backtest_run_id == backtest_run_id) & (t.c.pool_id == pool_id))


def _nautilus_report(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=[c for c in frame.columns if c in NAUTILUS_RANDOM_COLUMNS]).reset_index(drop=True)


def _error_text(result) -> str:
    """Every error message of a failed in-process run (step failures with their causes, run failure)."""
    parts = []
    for e in result.all_events:
        if e.event_type == DagsterEventType.STEP_FAILURE:
            error = e.step_failure_data.error
            while error is not None:
                parts.append(f"[{e.step_key}] {error.cls_name}: {error.message.strip()}")
                error = error.cause
        elif e.event_type == DagsterEventType.RUN_FAILURE:
            parts.append(f"[run] {e.message}")
    return "\n".join(parts)


# --- (d) every asset twice ----------------------------------------------------------------------

def test_rematerializing_every_asset_twice_gives_identical_tables_and_backtests(prepared):
    assert set(PER_RUN_COLUMNS) == set(Q50_TABLE_NAMES) == set(ROW_ORDER)
    url, first = prepared.url, prepared.out
    first_runs = {first["backtests"][p].backtest_run_id for p in POOLS}
    rows_first = materialization_rows(url, first_runs)
    counts_first = table_counts(url)
    store = prepared.settings.database_dir / "qlib"
    files_first = tree_hash(store)

    second = run_lineage(prepared.settings, prepared.instance, backtest=True, pools=POOLS)
    second_runs = {second["backtests"][p].backtest_run_id for p in POOLS}
    assert not first_runs & second_runs
    rows_second = materialization_rows(url, second_runs)
    counts_second = table_counts(url)

    summary = {}
    for name in Q50_TABLE_NAMES:
        a, b = rows_first[name], rows_second[name]
        assert len(a) > 0, f"{name}: nothing materialized, nothing compared"
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=name)
        assert content_hash(a) == content_hash(b), name
        if name in PER_RUN_TABLES:
            # The first run's rows are kept as history beside the second's: exactly one more copy.
            assert counts_second[name] == counts_first[name] + len(b), name
        else:
            assert counts_second[name] == counts_first[name] == len(b), name  # replaced, no duplicates
        summary[name] = (len(b), content_hash(b)[:12])
    print("identical q50 tables (rows, sha256):", summary)

    # The QLib store: byte-identical files (rewritten by the second run, same bars).
    assert tree_hash(store) == files_first and len(files_first) > 3 * len(STORE_FIELDS)

    # Asset values: the same features (vector ids included), regimes, predictions, signals.
    pd.testing.assert_frame_equal(first["model"].result.predictions, second["model"].result.predictions,
                                  check_exact=True)
    for pool_id in POOLS:
        for asset in ("features", "regimes"):
            pd.testing.assert_frame_equal(first[asset][pool_id], second[asset][pool_id], check_exact=True)
        pd.testing.assert_frame_equal(first["signals"][pool_id].drop(columns="model_run"),
                                      second["signals"][pool_id].drop(columns="model_run"), check_exact=True)

    # Backtests: the same metrics, decisions, fills, equity, portfolio.
    for pool_id in POOLS:
        r1, r2 = first["backtests"][pool_id], second["backtests"][pool_id]
        pd.testing.assert_frame_equal(r1.metrics, r2.metrics, check_exact=True)
        pd.testing.assert_frame_equal(r1.decisions, r2.decisions, check_exact=True)
        for variant in r1.outcomes:
            o1, o2 = r1.outcomes[variant], r2.outcomes[variant]
            pd.testing.assert_frame_equal(o1.trades, o2.trades, check_exact=True)
            pd.testing.assert_frame_equal(o1.equity, o2.equity, check_exact=True)
            for report in ("fills", "order_fills", "positions"):
                pd.testing.assert_frame_equal(_nautilus_report(getattr(o1, report)),
                                              _nautilus_report(getattr(o2, report)), check_exact=True)
            assert (o1.fees_paid, o1.impact_paid, o1.final_equity) == (o2.fees_paid, o2.impact_paid, o2.final_equity)
        fills = r2.outcomes["q50"].fills
        if len(fills):  # the excluded columns really are random per engine run
            assert set(fills["event_id"]).isdisjoint(set(r1.outcomes["q50"].fills["event_id"]))
    pd.testing.assert_frame_equal(first["portfolio"], second["portfolio"], check_exact=True)
    for checks in ("backtest_checks", "signal_checks", "regime_checks"):
        assert all(e.passed for e in second[checks]), checks


# --- (a) the server stops in the middle of a trading-history write ------------------------------

def test_server_stopped_in_the_middle_of_a_trading_history_write(prepared, pg):
    """The backtest step writes a new backtest run's results, then its trading history (one step,
    two outputs): the server stops at the history's INSERT."""
    selection = "backtest_and_history"
    url = prepared.url
    engine = get_engine(url)
    job = build_definitions(prepared.settings).resolve_job_def("refresh_pools")
    keys = [AssetKey("backtest_results"), AssetKey("q50_trading_history")]
    clean = comparable(history_of(url, prepared.out["backtests"][POOL].backtest_run_id), "q50_trading_history")
    assert len(clean) > 0
    everything_before = read_table(url, "q50_trading_history").sort_values("id").reset_index(drop=True)
    seen: list[str] = []

    def stop_server_at_the_insert(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith(("DELETE FROM Q50_TRADING_HISTORY", "INSERT INTO Q50_TRADING_HISTORY")):
            seen.append(statement.split()[0].upper())
            if seen[-1] == "INSERT" and pg.running:
                pg.kill()  # the DELETE of this transaction ran; the INSERT goes to a dead server

    event.listen(engine, "before_cursor_execute", stop_server_at_the_insert)
    try:
        failed = job.execute_in_process(partition_key=POOL, instance=prepared.instance, asset_selection=keys,
                                        run_config=QUIET, raise_on_error=False)
    finally:
        event.remove(engine, "before_cursor_execute", stop_server_at_the_insert)
        was_running = pg.running
        if not pg.running:
            pg.restart()
    assert seen[:2] == ["DELETE", "INSERT"] and not was_running, seen

    # The run fails, and says why: which write, which database, the lost connection.
    assert not failed.success
    errors = _error_text(failed)
    print(f"[{selection}] failure as Dagster recorded it:\n{errors[:1200]}")
    database = url.rsplit("/", 1)[1]
    clear = re.search(
        rf"\[backtest_and_trading_history\] DatabaseWriteError: .*DatabaseWriteError: replacing q50_trading_history of backtest run "
        rf"(?P<run>[0-9a-f-]{{36}}), pool {POOL} \((?P<rows>\d+) rows\) in "
        rf"postgresql://postgres@127\.0\.0\.1:{pg.port}/{database} failed \(OperationalError: (server closed the "
        r"connection unexpectedly|terminating connection[^)]*)\); it is one transaction, so no partial rows remain\. The connection was lost: "
        r"re-run once the database is reachable\.", errors)
    assert clear, errors[:3000]
    assert int(clear["rows"]) == len(clean)
    assert "Steps failed: ['backtest_and_trading_history']" in errors

    # After the restart (the process's engine reconnects by itself: pool_pre_ping, no dispose):
    # the transaction is gone. Every row that existed is there, byte for byte; none was added.
    everything_after = read_table(url, "q50_trading_history").sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(everything_after, everything_before, check_exact=True)
    if selection == "backtest_and_history":
        new_run = failed.output_for_node("backtest_and_trading_history", "backtest_results")[POOL].backtest_run_id
        assert history_of(url, new_run).empty
        # backtest_results is the step's first output, stored (committed) before the history's: its
        # rows stay, so until the next run this pool's latest backtest has no trading history.
        results = read_table(url, "q50_backtest_results", lambda t: t.c.backtest_run_id == new_run)
        assert sorted(results["variant"]) == sorted(variants_for(BacktestSettings().reserve_sensitivity))

    # The next run succeeds and writes exactly what a clean run writes.
    again = job.execute_in_process(partition_key=POOL, instance=prepared.instance, asset_selection=keys,
                                   run_config=QUIET, raise_on_error=False)
    assert again.success, _error_text(again)
    assert all(e.passed for e in again.get_asset_check_evaluations())
    (history_mat,) = [m for m in again.asset_materializations_for_node("backtest_and_trading_history")
                      if m.asset_key == AssetKey("q50_trading_history")]
    run_id = history_mat.metadata["backtest_run_id"].value
    assert run_id != clear["run"] and history_of(url, clear["run"]).empty
    pd.testing.assert_frame_equal(comparable(history_of(url, run_id), "q50_trading_history"), clean, check_exact=True)
    added = len(read_table(url, "q50_trading_history")) - len(everything_before)
    assert added == (len(clean) if selection == "backtest_and_history" else 0)  # replaced, never duplicated


# --- (c) the collector database becomes unreachable under the sensor ---------------------------

APPENDED = ["solana_4qs2R1Gsj2Lpy4ewV9hfVerNk2h4Qx3ZEkmJyKLywvb3", "solana_Q2sPHPdUWFMg7M7wwrQKLrn619cAucfRsmhVJffodSp"]


def test_sensor_skips_while_the_collector_server_is_down_and_recovers(pg, sample_template, tmp_path):
    url = create_pg_database(pg.url, template=sample_template)
    engine = get_engine(url)
    future = take_bars_from(engine, APPENDED, int(pd.Timestamp("2025-09-28 00:00", tz="UTC").timestamp()))
    assert set(future["pool_id"]) == set(APPENDED)
    host_port = f"127.0.0.1:{pg.port}"

    with instance_for_test() as instance:
        ticker = Ticker(url, tmp_path / "data", instance)
        first = ticker.tick()
        assert isinstance(first, SensorResult) and len(ticker.requested(first)) == 62
        cursor = ticker.cursor

        # The collector writes bars to two pools, then the database goes away.
        append_bars(engine, future.sort_values("timestamp").groupby("pool_id").head(2))
        record_collector_run(engine)

        # 1. The server dies in the middle of a tick (after the progress query, at the bars query).
        def kill_at_the_bars_query(conn, cursor_, statement, parameters, context, executemany):
            if "FROM ohlcv_data" in statement and pg.running:
                pg.kill()

        event.listen(engine, "before_cursor_execute", kill_at_the_bars_query)
        try:
            mid_tick = ticker.tick()
        finally:
            event.remove(engine, "before_cursor_execute", kill_at_the_bars_query)
        assert not pg.running
        # 2. A tick while it is down: the connection is refused.
        down = ticker.tick()
        for skipped in (mid_tick, down):
            print("skip:", skipped.skip_message)
            assert isinstance(skipped, SkipReason)
            assert f"collector database postgresql://postgres@{host_port}/" in skipped.skip_message
            assert "unreachable (OperationalError" in skipped.skip_message
            assert "the cursor is unchanged" in skipped.skip_message
        assert "server closed the connection unexpectedly" in mid_tick.skip_message or \
            "terminating connection" in mid_tick.skip_message
        assert "Connection refused" in down.skip_message
        assert ticker.cursor == cursor  # nothing learnt from a failed tick

        # 3. Back: the first tick sees what the collector wrote while the sensor was blind.
        pg.restart()
        back = ticker.tick()
        assert isinstance(back, SensorResult)
        assert ticker.requested(back) == dict.fromkeys(APPENDED, "new_bars")
        assert ticker.cursor != cursor
        quiet = ticker.tick()
        assert isinstance(quiet, SkipReason) and "has not run since the last tick" in quiet.skip_message
    engine.dispose()


# --- (b) two refreshes of one pool at once ------------------------------------------------------

# Write points where the two runs' transactions are made to overlap (statement prefixes).
REFRESH_POINTS = {
    "q50_feature_vectors": "INSERT INTO q50_feature_vectors",
    "q50_regime_labels": "DELETE FROM q50_regime_labels",
    "q50_signals": "DELETE FROM q50_signals",
}


class Rendezvous:
    """An engine listener (after_cursor_execute) that makes two writers overlap deterministically.

    After the first statement at each point, the writer keeps its transaction open until the
    other writer has reached the same point, has finished, or is blocked on a lock (seen in
    pg_stat_activity) - i.e. on this writer's open transaction. Without it "at once" would
    depend on timing. Markers are files, so the writers may be threads or processes.
    """

    def __init__(self, url: str, marks: Path, me: str, other: str, points: dict[str, str]):
        import psycopg2

        self.marks, self.me, self.other, self.points = marks, me, other, points
        self.outcomes: dict[str, str] = {}
        self.watcher = psycopg2.connect(url)
        self.watcher.autocommit = True

    def _other_blocked(self) -> bool:
        with self.watcher.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")
            return cur.fetchone()[0] > 0

    def __call__(self, conn, cursor, statement, parameters, context, executemany):
        for point, prefix in self.points.items():
            if point in self.outcomes or not statement.lstrip().startswith(prefix):
                continue
            (self.marks / f"{point}.{self.me}").touch()
            deadline = time.monotonic() + 60
            while True:
                if (self.marks / f"{point}.{self.other}").exists():
                    self.outcomes[point] = "other_arrived"
                elif (self.marks / f"finished.{self.other}").exists():
                    self.outcomes[point] = "other_finished"
                elif self._other_blocked():
                    self.outcomes[point] = "other_blocked_on_my_lock"
                elif time.monotonic() > deadline:
                    self.outcomes[point] = "timeout"
                else:
                    time.sleep(0.02)
                    continue
                break

    def wait_for_the_other(self, abort=lambda: False) -> None:
        (self.marks / f"ready.{self.me}").touch()
        deadline = time.monotonic() + 240
        while not (self.marks / f"ready.{self.other}").exists():
            assert not abort() and time.monotonic() < deadline, f"{self.other} never got ready"
            time.sleep(0.005)

    def finished(self) -> None:
        (self.marks / f"finished.{self.me}").touch()
        self.watcher.close()


def refresh_at_once(args: dict, abort=lambda: False) -> dict:
    """One full refresh_pools run of ``args['pool']`` (a run worker), started together with the
    other writer's and meeting it at REFRESH_POINTS. Its own Dagster instance; the database, the
    QLib store and the stored asset values (the prepared q50_model among them) are the shared ones."""
    settings = settings_for(args["url"], Path(args["data_dir"]), **LIGHT_MODEL, **DEEP_POOL)
    job = build_definitions(settings).resolve_job_def("refresh_pools")
    meet = Rendezvous(args["url"], Path(args["marks"]), args["me"], args["other"], REFRESH_POINTS)
    engine = get_engine(args["url"])
    event.listen(engine, "after_cursor_execute", meet)
    report = {"me": args["me"]}
    try:
        with DagsterInstance.ephemeral(tempdir=args["instance_dir"]) as instance:
            instance.add_dynamic_partitions(POOLS_PARTITION_NAME, [args["pool"]])
            meet.wait_for_the_other(abort)
            report["started"] = time.time()
            result = job.execute_in_process(partition_key=args["pool"], instance=instance, run_config=QUIET,
                                            raise_on_error=False)
            report.update(ended=time.time(), success=result.success, run_id=result.run_id,
                          errors=_error_text(result),
                          checks_failed=[e.check_name for e in result.get_asset_check_evaluations()
                                         # the pool has no trades: pool_trades warns its flow features are missing
                                         if not e.passed and e.check_name != "trade_coverage"])
    finally:
        meet.finished()
        event.remove(engine, "after_cursor_execute", meet)
    report["rendezvous"] = meet.outcomes
    return report


def test_two_refreshes_of_one_pool_at_once_write_no_duplicates(prepared, tmp_path):
    """Run A in this process, run B in a child process (a second run worker), same pool, at once.

    Without the advisory lock in ProjectTables._write_many the later replacement failed: its
    DELETE ran on a snapshot without the other run's uncommitted rows, then its INSERT hit them
    (UniqueViolation on uq_q50_regime_labels_pool_bar / uq_q50_signals_pool_bar).
    """
    url = prepared.url
    assert (prepared.storage / "q50_model.pkl").exists()
    per_pool = {name: comparable(read_table(url, name, lambda t: t.c.pool_id == POOL), name)
                for name in ("q50_signals", "q50_regime_labels", "q50_feature_vectors")}
    clean_history = comparable(history_of(url, prepared.out["backtests"][POOL].backtest_run_id),
                               "q50_trading_history")
    store = prepared.settings.database_dir / "qlib"
    files_before = tree_hash(store)
    marks = tmp_path / "marks"
    marks.mkdir()

    def args(me, other):
        return {"me": me, "other": other, "marks": str(marks), "url": url, "pool": POOL,
                "data_dir": str(prepared.settings.data_dir), "instance_dir": str(tmp_path / f"instance_{me}")}

    child = subprocess.Popen([sys.executable, __file__, json.dumps(args("B", "A"))], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        a = refresh_at_once(args("A", "B"), abort=lambda: child.poll() is not None)
        stdout, stderr = child.communicate(timeout=240)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0, stderr[-3000:]
    b = json.loads(stdout.strip().splitlines()[-1])
    print("two runs at once:", json.dumps([a, b], indent=1)[:3000])

    # They ran at once: overlapping in time, and at every write point one run held its
    # transaction open while the other waited for it.
    assert a["started"] < b["ended"] and b["started"] < a["ended"]
    for point in REFRESH_POINTS:
        assert "other_blocked_on_my_lock" in {a["rendezvous"].get(point), b["rendezvous"].get(point)}, point
    # Both succeed: the second replacement waits for the first to commit, then replaces it.
    assert a["success"] and b["success"], (a["errors"][:3000], b["errors"][:3000])
    assert not a["checks_failed"] and not b["checks_failed"]

    # No duplicates: one row per natural key, and the pool's rows equal the prepared ones.
    for name, before in per_pool.items():
        now = comparable(read_table(url, name, lambda t: t.c.pool_id == POOL), name)
        assert not now.duplicated(ROW_ORDER[name]).any(), name
        pd.testing.assert_frame_equal(now, before, check_exact=True, obj=name)
    # Per-run tables: each run wrote its own rows once, both equal to a clean run's.
    for report in (a, b):
        results = read_table(url, "q50_backtest_results", lambda t: t.c.backtest_run_id == report["run_id"])
        assert sorted(results["variant"]) == sorted(variants_for(BacktestSettings().reserve_sensitivity))
        history = history_of(url, report["run_id"])
        assert not history.duplicated(["nautilus_order_id"]).any()
        pd.testing.assert_frame_equal(comparable(history, "q50_trading_history"), clean_history, check_exact=True)
    # The shared QLib store ends byte-identical (its writers are serialised by its lock file).
    assert tree_hash(store) == files_before


def test_two_writers_of_one_backtest_runs_history_at_once_leave_one_copy(prepared, tmp_path):
    """Two runs that both materialize ``q50_trading_history`` alone from the same stored backtest
    (same backtest run id) at once. The table has no unique key: without the advisory lock both
    DELETEs ran before either INSERT and the run's 6 fills were stored twice (12 rows)."""
    url = prepared.url
    db = ProjectTables(url=url)
    run_id = prepared.out["backtests"][POOL].backtest_run_id
    rows = prepared.out["history"][POOL]
    before = comparable(history_of(url, run_id), "q50_trading_history")
    assert len(before) == len(rows) > 0
    engine = get_engine(url)
    points = {"q50_trading_history": "DELETE FROM q50_trading_history"}
    meets = {me: Rendezvous(url, tmp_path, me, other, points) for me, other in (("A", "B"), ("B", "A"))}
    errors: list[BaseException] = []

    def dispatch(*event_args):
        meet = meets.get(threading.current_thread().name)
        if meet is not None:
            meet(*event_args)

    def write():
        try:
            assert db.replace_trading_history_many({POOL: (run_id, rows)}) == {POOL: len(rows)}
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)
        finally:
            meets[threading.current_thread().name].finished()

    event.listen(engine, "after_cursor_execute", dispatch)
    try:
        threads = [threading.Thread(target=write, name=n) for n in "AB"]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
    finally:
        event.remove(engine, "after_cursor_execute", dispatch)
    assert not errors, errors
    outcomes = [m.outcomes.get("q50_trading_history") for m in meets.values()]
    assert "other_blocked_on_my_lock" in outcomes, outcomes
    after = comparable(history_of(url, run_id), "q50_trading_history")
    assert len(after) == len(rows), f"{len(after)} rows for {len(rows)} fills: duplicated by the concurrent write"
    pd.testing.assert_frame_equal(after, before, check_exact=True)


def test_qlib_store_read_during_a_rewrite_of_the_same_pool(prepared, monkeypatch):
    """A read that meets a rewrite of the same pool waits for it (shared vs exclusive lock) instead of
    silently getting the field being rewritten as all NaN (QLib's answer for a missing file)."""
    from qlib.data.storage.file_storage import FileFeatureStorage

    store = QlibStore(provider_dir=str(prepared.settings.database_dir / "qlib"), timeframe="1h")
    files_before = tree_hash(store.root)
    fields = {f: f"${f}" for f in STORE_FIELDS}
    grid = store.features([POOL], fields).loc[POOL]
    paused, release = threading.Event(), threading.Event()
    original = FileFeatureStorage.write

    def write_after_a_pause(self, data, index=None):
        if not paused.is_set():  # the first field's file has just been deleted
            paused.set()
            release.wait(30)
        return original(self, data, index=index)

    monkeypatch.setattr(FileFeatureStorage, "write", write_after_a_pause)
    writer = threading.Thread(target=store.write_pool, args=(POOL, grid))
    writer.start()
    assert paused.wait(30)
    seen = {}
    reader = threading.Thread(target=lambda: seen.update(frame=store.features([POOL], fields)))
    reader.start()
    reader.join(3)  # a reader that waits for the writer would still be waiting here
    release.set()
    writer.join(30)
    reader.join(30)
    assert tree_hash(store.root) == files_before  # the same values written back: the store is as it was
    pd.testing.assert_frame_equal(seen["frame"].loc[POOL], grid)


if __name__ == "__main__":  # run B of test (b), in its own process
    print(json.dumps(refresh_at_once(json.loads(sys.argv[1]))), flush=True)
    os._exit(0)  # skip library teardown at exit (seconds), nothing is left to flush
