"""Materialize the whole asset graph for a set of pools, through Dagster, from one process.

What ``q50 demo``, the benchmarks and tests run: the phases of the lineage's table of stages
(:data:`q50_assets.lineage.STEPS`) in order, each in batch runs of its job - bars, trades,
features and regimes per batch of pools; the pooled model; signals, backtests and trading history
per batch; the portfolio. Every run, materialization and check is recorded in the instance, as if
the daemon had launched them. No stage is computed here, and no other module loops over runs.

``runs_at_once > 1`` executes a phase's batch runs in that many forked processes at once, as the
daemon's run queue would (``max_concurrent_runs``); the model runs in a child too, so the parent
never starts the threads of LightGBM or Nautilus that a later fork could inherit mid-lock.
"""

from __future__ import annotations

import importlib
import os
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dagster import AssetKey, DagsterInstance, Definitions, EnvVar

from q50_assets.automation.jobs import PHASE_JOBS
from q50_assets.automation.runs import pool_batches, range_tags, registered_pools
from q50_assets.lineage import STEPS, Phase, assets_of

QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}

# (phase name, job, its assets, per pool) in the order the graph needs them.
PHASES = tuple((phase.value, PHASE_JOBS[phase], assets_of(phase),
                all(s.per_pool for s in STEPS if s.phase == phase)) for phase in Phase)


@dataclass(frozen=True)
class RunRecord:
    """What is kept of a run executed in this process: its id, outcome and recorded events.

    Not the ``ExecuteInProcessResult``: that holds every step's output in memory (a batch of
    pools' bars, frames and backtests per run), which over a nightly's runs grew the process by
    gigabytes and slowed it (more live objects for every garbage collection)."""

    job_name: str
    run_id: str
    success: bool
    events: int
    materializations: tuple  # AssetMaterialization per pool and asset
    check_evaluations: tuple  # AssetCheckEvaluation per pool and check

    @classmethod
    def of(cls, result) -> "RunRecord":
        return cls(job_name=result.job_def.name, run_id=result.run_id, success=result.success,
                   events=len(result.all_events),
                   materializations=tuple(e.materialization for e in result.get_asset_materialization_events()),
                   check_evaluations=tuple(result.get_asset_check_evaluations()))

    def materializations_of(self, asset: str) -> list:
        return [m for m in self.materializations if m.asset_key == AssetKey(asset)]


@dataclass
class PhaseRun:
    name: str
    seconds: float = 0.0
    runs: list[tuple[str, bool]] = field(default_factory=list)  # (run id, succeeded) per run
    results: list[RunRecord] = field(default_factory=list)  # per run, when run in this process

    @property
    def succeeded(self) -> bool:
        return bool(self.runs) and all(ok for _, ok in self.runs)


@dataclass
class LineageRun:
    pools: list[str]
    phases: dict[str, PhaseRun] = field(default_factory=dict)

    def results(self) -> list[RunRecord]:
        return [r for phase in self.phases.values() for r in phase.results]

    def run_ids(self) -> list[str]:
        return [run_id for phase in self.phases.values() for run_id, _ in phase.runs]

    def failed_runs(self) -> list[str]:
        return [run_id for phase in self.phases.values() for run_id, ok in phase.runs if not ok]


ProgressFn = Callable[[str, int, int], None]  # (phase, pools done, pools in phase)


def materialize_lineage(defs: Definitions, instance: DagsterInstance, pools: Sequence[str], pools_per_run: int,
                        run_config: dict | None = QUIET, progress: ProgressFn | None = None,
                        phases: Sequence[str] | None = None, tags: dict | None = None,
                        runs_at_once: int = 1) -> LineageRun:
    """Every asset for ``pools`` (registered partitions), ``pools_per_run`` pools per run.

    ``phases`` restricts to some of :data:`PHASES` by name. The per-pool phases go on when one
    pool is blocked (the gate is in the data); a run that fails outright is in ``runs``.
    """
    run = LineageRun(list(pools))
    forked = runs_at_once > 1
    for name, job_name, assets, per_pool in PHASES:
        if phases is not None and name not in phases:
            continue
        phase = run.phases[name] = PhaseRun(name)
        started = time.perf_counter()
        selection = [AssetKey(a) for a in assets]
        # A per-pool phase in batch runs; a pooled one in one unpartitioned run.
        batches = pool_batches(registered_pools(instance), pools, pools_per_run) if per_pool else [None]
        done = 0

        def on_batch(batch, run_id, ok, name=name):
            nonlocal done
            done += len(batch) if batch else len(pools)
            phase.runs.append((run_id, ok))
            if progress:
                progress(name, done, len(pools))

        if forked and name != Phase.PORTFOLIO.value:  # the model too, in a child (see the module doc)
            _in_children(defs, instance, job_name, batches, selection, run_config, tags, runs_at_once, on_batch)
        else:
            job = defs.resolve_job_def(job_name)
            for batch in batches:
                result = _execute(job, instance, batch, selection, run_config, tags)
                phase.results.append(RunRecord.of(result))
                del result  # its outputs go with it
                on_batch(batch, phase.results[-1].run_id, phase.results[-1].success)
        phase.seconds = time.perf_counter() - started
        if name == Phase.MODEL.value and not phase.succeeded:
            break  # nothing downstream can run without a model
    return run


def _execute(job, instance, batch, selection, run_config, tags):
    """One run of ``job``: the ``selection`` for a batch of pools (a partition range), or the
    whole job unpartitioned (``batch`` None)."""
    return job.execute_in_process(
        instance=instance, asset_selection=selection if batch else None, run_config=run_config,
        tags={**(tags or {}), **(range_tags(batch) if batch else {})}, raise_on_error=False)


# What every run process imports on its first pool (QLib's init pulls in mlflow, the pictures
# Matplotlib, the backtests NautilusTrader): imported once before forking instead of once per child.
# Imports only: none of them starts a thread or opens a connection.
PRELOAD = ("qlib.data", "qlib.workflow", "matplotlib.figure", "matplotlib.dates", "nautilus_trader.backtest.engine")


def _preload() -> None:
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional library (NautilusTrader) that is not installed
            pass


def _in_children(defs, instance, job_name, batches, selection, run_config, tags, runs_at_once, on_batch) -> None:
    """The batches in ``runs_at_once`` forked processes (each takes the next batch when free)."""
    import multiprocessing

    _preload()

    context = multiprocessing.get_context("fork")
    todo, results = context.Queue(), context.Queue()
    for i, batch in enumerate(batches):
        todo.put(i)
    workers = min(runs_at_once, len(batches))
    for _ in range(workers):
        todo.put(None)
    _release_connections(instance, defs)  # a child must not share the parent's open connections
    children = [context.Process(target=_child, args=(defs, instance.get_ref(), job_name, batches, selection,
                                                     run_config, tags, todo, results)) for _ in range(workers)]
    for child in children:
        child.start()
    received = 0
    while received < len(batches):
        try:
            message = results.get(timeout=5)
        except queue.Empty:
            # A process that died without reporting (killed, out of memory) must not leave the
            # parent waiting forever: once every run process is gone, say so.
            if all(not child.is_alive() for child in children) and results.empty():
                codes = [child.exitcode for child in children]
                raise RuntimeError(f"{job_name}: every run process exited with {len(batches) - received} of "
                                   f"{len(batches)} batches unreported (exit codes {codes})") from None
            continue
        if message[0] == "error":
            for child in children:
                child.kill()
            raise RuntimeError(f"a {job_name} run process failed: {message[1]}")
        index, run_id, ok = message
        on_batch(batches[index], run_id, ok)
        received += 1
    for child in children:
        child.join()


def _release_connections(instance, defs) -> None:
    from q50_assets.db.engine import get_engine

    dispose = getattr(instance.event_log_storage, "dispose_connections", None)
    if dispose:
        dispose()
    database = defs.resources.get("project_tables") if hasattr(defs, "resources") else None
    if database is not None:  # the collector reader shares its URL, so its engine
        url = database.url.get_value() if isinstance(database.url, EnvVar) else database.url  # as the resource resolves it
        get_engine(url).dispose()


def _child(defs, instance_ref, job_name, batches, selection, run_config, tags, todo, results) -> None:
    try:
        with DagsterInstance.from_ref(instance_ref) as instance:
            job = defs.resolve_job_def(job_name)
            while (index := todo.get()) is not None:
                result = _execute(job, instance, batches[index], selection, run_config, tags)
                results.put((index, result.run_id, result.success))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which stops
        results.put(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        # A queue's put only hands the message to a feeder thread: flush it before leaving, or
        # the parent waits for a result that died with this process.
        results.close()
        results.join_thread()
        os._exit(0)  # no interpreter teardown in a forked child: the parent owns the shared state
