"""The collector replayed hour by hour through the deployment's daemons, and the same database
built from scratch: the replay test's and the replay benchmark's harness.

:func:`prepare_collector` cuts the bundled sample by the calendar (``hold_back_hours`` before its
newest hourly bar), keeping some pools' hourly bars; :class:`Replay` then lets Dagster's daemons
(:mod:`benchmarks.daemon_ticks`) bring up the lineage (first refresh, first model, every pool's
signals, backtests and trading history, the pooled stages) and plays the collector's runs one hour
each (``q50 replay-collector --hours 1``), ticking the daemons until nothing more happens after
each. Per collector run it records the wall time until quiet, the process's memory, the growth of
Dagster's storage and, per pool written, the time from the collector's write to that pool's newest
trading history. :func:`scratch_copy` and :func:`build_from_scratch` make the same final database's
tables with a fresh data folder and Dagster instance, for comparison
(``q50_assets_tests/automation/lineage_tables.py``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance
from sqlalchemy import Engine, MetaData, create_engine, delete, inspect, text

from benchmarks.daemon_ticks import DaemonTicks, Quiet
from q50_assets.automation.lineage_run import materialize_lineage
from q50_assets.automation.runs import registered_pools, request_pools
from q50_assets.db.collector_models import ohlcv_data
from q50_assets.db.engine import get_engine
from q50_assets.db.q50_models import q50_metadata
from q50_assets.db.sample_loader import HOUR, calendar_cut, create_collector_schema, load_sample, replay_held_back_bars
from q50_assets.definitions import build_definitions
from q50_assets.lineage.common.conditions import TRIGGER_TAG
from q50_assets.lineage.common.partitions import POOLS_PARTITION_NAME
from q50_assets.settings import Settings

HISTORY_ASSET = "q50_trading_history"


def prepare_collector(engine: Engine, pools: Sequence[str], hours: int) -> int:
    """The collector as it was ``hours`` before the newest hourly bar of ``pools`` (a calendar cut of
    every timeframe), collecting only ``pools`` hourly. Returns the cut (epoch seconds): the
    replay's next ``hours`` collector runs bring the pools to the sample's end."""
    from q50_assets.db.sample_loader import LoadReport, _sample_ohlcv_records

    wanted = set(pools)
    newest = max(r["timestamp"] for r in _sample_ohlcv_records(LoadReport())
                 if r["timeframe"] == "1h" and r["pool_id"] in wanted)
    cut = newest - hours * HOUR
    create_collector_schema(engine)
    with engine.begin() as conn:
        conn.execute(delete(ohlcv_data))
    load_sample(engine, hold_back_hours=(calendar_cut(0) - cut) // HOUR)
    with engine.begin() as conn:
        conn.execute(delete(ohlcv_data).where(ohlcv_data.c.timeframe == "1h", ohlcv_data.c.pool_id.not_in(list(pools))))
    return cut


def rss_mb() -> float:
    """This process's resident memory (the runs execute in it)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def tree_bytes(root: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(root).rglob("*") if f.is_file())


@dataclass
class CollectorRun:
    """One collector run (an hour of bars) and what the daemons did about it."""

    index: int
    pools_written: list[str]
    seconds: float  # from the write until the daemons were quiet
    rounds: int
    runs: int
    sensor_pools: dict[str, list[str]]  # trigger tag -> pools of the sensor's runs
    retrained: bool  # a train_q50_model run (the next fold, or the first model)
    rss_mb: float
    dagster_bytes: int
    latency_seconds: dict[str, float] = field(default_factory=dict)  # pool -> write to its newest trading history
    fault: str = ""

    def summary(self) -> str:
        sensor = ", ".join(f"{k} {len(v)}" for k, v in self.sensor_pools.items()) or "none"
        return (f"run {self.index:>3}: {len(self.pools_written)} pools written, sensor pools ({sensor}), "
                f"{self.runs} runs{' + retrain' if self.retrained else ''}, {self.seconds:.1f} s, "
                f"rss {self.rss_mb:.0f} MB, dagster {self.dagster_bytes / 1e6:.1f} MB"
                + (f", fault: {self.fault}" if self.fault else ""))


class Replay:
    """The daemons of one Dagster instance following one collector database."""

    def __init__(self, ticks: DaemonTicks, engine: Engine, pools: Sequence[str]):
        self.ticks, self.engine, self.pools = ticks, engine, list(pools)
        self.instance: DagsterInstance = ticks.instance
        self.runs: list[CollectorRun] = []

    def bring_up(self) -> Quiet:
        """From nothing to every stage materialized, by the daemons alone: the sensor's first refresh,
        then (the sensor again) the first model, then the automation's fan-out and pooled stages."""
        return self.ticks.tick_until_quiet(max_rounds=30)

    def collector_run(self, fault: str = "", write: Callable[[], dict[str, int]] | None = None,
                      react: Callable[[], Quiet] | None = None) -> CollectorRun:
        """One hour of the collector (``write``: by default the next held-back hour of the pools),
        then the daemons until quiet (``react``: by default :meth:`DaemonTicks.tick_until_quiet`)."""
        written_at = time.time()
        started = time.perf_counter()
        inserted = (write or (lambda: replay_held_back_bars(self.engine, hours=1, pool_ids=self.pools)))()
        quiet = (react or (lambda: self.ticks.tick_until_quiet(max_rounds=30)))()
        seconds = time.perf_counter() - started
        order = registered_pools(self.instance)
        sensor_pools: dict[str, list[str]] = {}
        for run in quiet.runs_by("sensor"):
            if run.pool_range:
                sensor_pools.setdefault(run.tags.get(TRIGGER_TAG, ""), []).extend(request_pools(run.tags, order))
        record = CollectorRun(
            index=len(self.runs) + 1, pools_written=sorted(inserted), seconds=seconds, rounds=quiet.rounds,
            runs=len(quiet.runs), sensor_pools={k: sorted(v) for k, v in sensor_pools.items()},
            retrained=any(r.job_name == "train_q50_model" for r in quiet.runs), rss_mb=rss_mb(),
            dagster_bytes=tree_bytes(self.instance.root_directory), fault=fault,
            latency_seconds=self.latency(sorted(inserted), written_at))
        self.runs.append(record)
        return record

    def latency(self, pools: list[str], written_at: float) -> dict[str, float]:
        """Per pool, seconds from the collector's write to its newest trading history (if made since)."""
        out = {}
        for pool in pools:
            records = self.instance.fetch_materializations(
                AssetRecordsFilter(asset_key=AssetKey(HISTORY_ASSET), asset_partitions=[pool]), limit=1).records
            if records and records[0].timestamp >= written_at:
                out[pool] = round(records[0].timestamp - written_at, 2)
        return out


def curve(runs: list[CollectorRun], warm_up: int) -> dict:
    """The replay's figures: time per collector run, memory and Dagster storage over the runs."""
    if not runs:
        return {}
    after = runs[warm_up:] or runs
    seconds = sorted(r.seconds for r in runs)
    latencies = [v for r in runs for v in r.latency_seconds.values()]
    first, last = after[0], after[-1]
    return {
        "collector_runs": len(runs),
        "seconds_per_run": {"median": seconds[len(seconds) // 2], "max": seconds[-1],
                            "mean": round(sum(seconds) / len(seconds), 2)},
        "rss_mb": {"after_warm_up": round(first.rss_mb, 1), "last": round(last.rss_mb, 1),
                   "max": round(max(r.rss_mb for r in after), 1),
                   "growth_after_warm_up": round(last.rss_mb / first.rss_mb - 1, 4)},
        "dagster_storage_bytes_per_run": round((last.dagster_bytes - first.dagster_bytes) / max(1, len(after) - 1)),
        "longest_write_to_trading_history_seconds": max(latencies) if latencies else None,
        "retrains": sum(r.retrained for r in runs),
        "runs": [asdict(r) for r in runs],
    }


def scratch_copy(server_url: str, source_url: str) -> str:
    """A new database on the same PostgreSQL server holding ``source_url``'s collector tables and
    none of the project's rows (the project's schema stays: the migrations are the same)."""
    name = f"{source_url.rsplit('/', 1)[1]}_scratch"
    get_engine(source_url).dispose()  # a template must have no open connections
    admin = create_engine(f"{server_url}/postgres".replace("postgresql://", "postgresql+psycopg2://"),
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        # Names are built here from our own database's name, never from data: safe in DDL.
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{source_url.rsplit("/", 1)[1]}"'))
    admin.dispose()
    url = f"{server_url}/{name}"
    engine = get_engine(url)
    # The project's tables as the database has them (their foreign keys reach the collector's tables).
    reflected = MetaData()
    reflected.reflect(engine, only=[name for name in q50_metadata.tables if inspect(engine).has_table(name)])
    with engine.begin() as conn:
        for table in reversed(reflected.sorted_tables):  # children first
            if table.name in q50_metadata.tables:
                conn.execute(table.delete())
    return url


def build_from_scratch(settings: Settings, instance: DagsterInstance, pools: Sequence[str]):
    """Every stage for ``pools`` at once, as ``q50 demo`` runs it (a fresh instance and data folder)."""
    instance.add_dynamic_partitions(POOLS_PARTITION_NAME, list(pools))
    defs = build_definitions(settings)
    return materialize_lineage(defs, instance, list(pools), settings.batches.pools_per_run, runs_at_once=1)


def environ_for(url: str, data_dir: Path, **env: str) -> dict[str, str]:
    return {"Q50_DATABASE_URL": url, "Q50_DATA_DIR": str(data_dir), **env}




def run_replay_benchmark(runs: int, pools: Sequence[str] | None, scratch: Path, settings_env: dict[str, str]) -> dict:
    """The replay benchmark: ``runs`` collector runs (hours) of ``pools`` (default: every sample pool
    with hourly bars) through the daemons, on a throwaway PostgreSQL server (or ``Q50_BENCH_POSTGRES_URL``,
    a server URL without a database). Returns :func:`curve`'s figures plus the bring-up's time."""
    import tempfile
    import uuid

    from benchmarks.daemon_ticks import daemon_instance
    from benchmarks.scale import throwaway_postgres

    server = os.environ.get("Q50_BENCH_POSTGRES_URL")
    stop = None
    if not server:
        server, stop = throwaway_postgres(Path(tempfile.mkdtemp(prefix="q50-replay-pg-")))
        server = server.rsplit("/", 1)[0]
    name = f"q50_replay_{uuid.uuid4().hex[:8]}"
    admin = create_engine(f"{server}/postgres".replace("postgresql://", "postgresql+psycopg2://"),
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))  # a generated name, never data
    admin.dispose()
    url = f"{server}/{name}"
    try:
        engine = get_engine(url)
        if pools is None:
            load_sample(engine)
            pools = hourly_pools(url)
        prepare_collector(engine, pools, runs)
        monitor = {"run_monitoring": {"enabled": True, "max_runtime_seconds": 7200}}
        started = time.perf_counter()
        with daemon_instance(monitor) as instance, DaemonTicks(
                instance, environ=environ_for(url, scratch / "data", **settings_env)) as ticks:
            replay = Replay(ticks, engine, pools)
            up = replay.bring_up()
            for _ in range(runs):
                run = replay.collector_run()
                print(run.summary(), flush=True)
                if not run.pools_written:
                    break
            out = curve(replay.runs, warm_up=min(10, max(1, len(replay.runs) // 10)))
        out.update({"pools": len(pools), "bring_up_seconds": round(up.seconds, 1),
                    "total_seconds": round(time.perf_counter() - started, 1)})
        return out
    finally:
        get_engine(url).dispose()
        if stop:
            stop()


def hourly_pools(url: str) -> list[str]:
    """Every pool with hourly bars in the collector at ``url``."""
    from q50_assets.storage.collector import CollectorReader

    return CollectorReader(url=url).pools_with_bars("1h")


def hourly_pools_of_sample() -> list[str]:
    """The sample's pools with hourly bars, most bars first (the longest histories)."""
    import pandas as pd

    from q50_assets.db.sample_loader import SAMPLE_DIR

    bars = pd.read_csv(SAMPLE_DIR / "qlib_csv_1h.csv.gz", usecols=["symbol"])
    counts = bars["symbol"].value_counts()
    return sorted(counts.index, key=lambda p: (-counts[p], p))
