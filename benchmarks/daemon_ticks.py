"""Dagster's daemons, one iteration at a time, in this process: the lineage reacting as deployed.

A deployment reacts to the collector through Dagster's daemons: the sensor daemon ticks
``new_collector_bars`` (refresh runs for the pools with new bars), the asset daemon ticks the
``q50_automation`` sensor (the assets' automation conditions: signals after a new model, backtests
after signals, the pooled stages after them), and the backfill daemon launches the runs of the
backfills the automation asks for. :class:`DaemonTicks` runs one iteration of each of those daemons'
own code when asked, so a test or a replay can play the collector hour by hour and see exactly what
the deployment would launch, without waiting for the daemons' intervals.

* **The code location** is loaded in this process (an in-process workspace target, as Dagster's own
  daemon tests load theirs) from :func:`q50_definitions`: the Definitions ``q50_assets.definitions``
  builds, but built when the location loads, from the settings the environment gives then (the
  module's ``defs`` is built once, at its first import, from whatever the environment was, and
  ``get_settings()`` is loaded once per process). The ``environ`` given to :class:`DaemonTicks` is
  the deployment's environment while it is open.
* **Runs execute synchronously, inside the tick that launched them**: the instance's run launcher is
  Dagster's ``SyncInMemoryRunLauncher`` and its run coordinator the ``DefaultRunCoordinator``, which
  hands a submitted run straight to the launcher (:func:`daemon_instance`). The daemons need nothing
  more; with the ``QueuedRunCoordinator`` (``instance_for_test``'s default, and ``dagster dev``'s) a
  run would wait, queued, for a fourth daemon (the run queue's). A tick returns once its runs have
  finished, so the next tick sees their materializations. Under ``dagster dev`` the run queue daemon
  hands queued runs to the ``DefaultRunLauncher``, which starts a process per run that loads the code
  location afresh: runs overlap ticks and each other (up to ``max_concurrent_runs`` and the tag
  limits), and a sensor's runs can still be queued or running when the automation ticks (which then
  waits for them). Here nothing overlaps: the daemons' decisions are the same, their timing is not.
* **Minimum intervals are ignored**: each tick evaluates its sensor even when the sensor's
  ``minimum_interval_seconds`` has not passed since its last tick. Dagster's own daemon tests freeze
  or advance the clock for that; here runs execute inside the ticks, and a frozen or shifted clock
  would stamp their events and the backfills with times the run storage (stamped by the database)
  contradicts, so the daemons' interval test itself (``is_under_min_interval``) answers "no" during a
  tick, and the clock is the real one.
* **Failures are raised** (:class:`DaemonTickError`): the daemons catch their errors (a sensor's or
  the automation's tick is stored as failed, the backfill daemon yields the error) and go on, as a
  long-running process must; a test must not.

Everything Dagster-private this module uses is in :data:`PRIVATE_INTERNALS`; :func:`check_internals`
(run when a :class:`DaemonTicks` opens, and by the tests) fails naming the one an upgrade changed.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import dagster._core.test_utils as dagster_test_utils
import dagster._daemon.asset_daemon as dagster_asset_daemon
import dagster._daemon.backfill as dagster_backfill_daemon
import dagster._daemon.monitoring.run_monitoring as dagster_run_monitoring
import dagster._daemon.sensor as dagster_sensor_daemon
from dagster import DagsterInstance, DagsterRunStatus, Definitions, RunsFilter, definitions, instance_for_test
from dagster._core.definitions.repository_definition import SINGLETON_REPOSITORY_NAME
from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus
from dagster._core.launcher.sync_in_memory_run_launcher import SyncInMemoryRunLauncher
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.run_coordinator import DefaultRunCoordinator
from dagster._core.scheduler.instigation import TickStatus
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    AUTOMATION_CONDITION_TAG,
    BACKFILL_ID_TAG,
    SENSOR_NAME_TAG,
)
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget, WorkspaceLoadTarget

from q50_assets.definitions import build_definitions
from q50_assets.settings import load_settings

# Dagster's private names this module relies on (dagster 1.13.27): object -> the parameters it is
# called with (None: used as a value, a class or a constant). check_internals() compares them with
# the installed Dagster, so an upgrade that moves or changes one fails here, by name, not deep in a tick.
PRIVATE_INTERNALS: dict[str, tuple[object, tuple[str, ...] | None]] = {
    # One iteration of each daemon, as their loops call it.
    "dagster._daemon.sensor.execute_sensor_iteration": (
        dagster_sensor_daemon.execute_sensor_iteration,
        ("workspace_process_context", "logger", "threadpool_executor", "submit_threadpool_executor",
         "sensor_tick_futures", "debug_crash_flags", "instrument_elapsed")),
    "dagster._daemon.asset_daemon.AssetDaemon.__init__": (
        dagster_asset_daemon.AssetDaemon.__init__, ("self", "settings", "pre_sensor_interval_seconds")),
    "dagster._daemon.asset_daemon.AssetDaemon._run_iteration_impl": (
        dagster_asset_daemon.AssetDaemon._run_iteration_impl,
        ("self", "workspace_process_context", "threadpool_executor", "amp_tick_futures", "debug_crash_flags")),
    "dagster._daemon.backfill.execute_backfill_iteration": (
        dagster_backfill_daemon.execute_backfill_iteration,
        ("workspace_process_context", "logger", "threadpool_executor", "submit_threadpool_executor",
         "backfill_futures", "debug_crash_flags")),
    "dagster._daemon.monitoring.run_monitoring.execute_run_monitoring_iteration": (
        dagster_run_monitoring.execute_run_monitoring_iteration,
        ("workspace_process_context", "logger", "_debug_crash_flags")),
    # The daemons' minimum-interval test, answered "no" during a tick (the asset daemon imports it by name).
    "dagster._daemon.sensor.is_under_min_interval": (
        dagster_sensor_daemon.is_under_min_interval, ("state", "remote_sensor", "minimum_allowed_min_interval")),
    "dagster._daemon.asset_daemon.is_under_min_interval": (
        getattr(dagster_asset_daemon, "is_under_min_interval", None),
        ("state", "remote_sensor", "minimum_allowed_min_interval")),
    # The workspace the daemons read: our code location, loaded in this process.
    "dagster._core.test_utils.create_test_daemon_workspace_context": (
        dagster_test_utils.create_test_daemon_workspace_context, ("workspace_load_target", "instance")),
    "dagster._core.workspace.load_target.InProcessWorkspaceLoadTarget": (
        InProcessWorkspaceLoadTarget.__init__, ("self", "origin")),
    "dagster._core.remote_origin.InProcessCodeLocationOrigin": (
        InProcessCodeLocationOrigin.__new__,
        ("cls", "loadable_target_origin", "container_image", "entry_point", "container_context", "location_name")),
    "dagster._core.types.loadable_target_origin.LoadableTargetOrigin": (LoadableTargetOrigin, None),
    "dagster._core.definitions.repository_definition.SINGLETON_REPOSITORY_NAME": (SINGLETON_REPOSITORY_NAME, None),
    # The instance: runs executed in the launching tick, submitted without a queue.
    "dagster._core.launcher.sync_in_memory_run_launcher.SyncInMemoryRunLauncher": (SyncInMemoryRunLauncher, None),
    "dagster._core.run_coordinator.DefaultRunCoordinator": (DefaultRunCoordinator, None),
    # What a tick did.
    "dagster._core.execution.backfill.BulkActionsFilter": (BulkActionsFilter, None),
    "dagster._core.execution.backfill.BulkActionStatus": (BulkActionStatus, None),
    "dagster._core.scheduler.instigation.TickStatus": (TickStatus, None),
    "dagster._core.storage.dagster_run.NOT_FINISHED_STATUSES": (NOT_FINISHED_STATUSES, None),
    "dagster._core.storage.tags.BACKFILL_ID_TAG": (BACKFILL_ID_TAG, None),
    "dagster._core.storage.tags.SENSOR_NAME_TAG": (SENSOR_NAME_TAG, None),
    "dagster._core.storage.tags.AUTOMATION_CONDITION_TAG": (AUTOMATION_CONDITION_TAG, None),
    "dagster._core.storage.tags.ASSET_PARTITION_RANGE_START_TAG": (ASSET_PARTITION_RANGE_START_TAG, None),
    "dagster._core.storage.tags.ASSET_PARTITION_RANGE_END_TAG": (ASSET_PARTITION_RANGE_END_TAG, None),
}

SENSOR = "new_collector_bars"
AUTOMATION = "q50_automation"
LOCATION = "q50_assets"
BACKFILL_IN_PROGRESS = (BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING, BulkActionStatus.FAILING)
RUN_FAILED = {DagsterRunStatus.FAILURE.value, DagsterRunStatus.CANCELED.value}
_log = logging.getLogger(__name__)


def check_internals() -> None:
    """Raise, naming it, if a private Dagster name in :data:`PRIVATE_INTERNALS` is gone or changed."""
    for name, (obj, params) in PRIVATE_INTERNALS.items():
        if obj is None:
            raise RuntimeError(f"{name} is gone (dagster upgrade?): benchmarks/daemon_ticks.py relies on it")
        if params is not None:
            found = tuple(inspect.signature(obj).parameters)
            if found != params:
                raise RuntimeError(f"{name} changed its parameters (dagster upgrade?): expected {params}, found "
                                   f"{found}; benchmarks/daemon_ticks.py calls it")


@definitions
def q50_definitions() -> Definitions:
    """``q50_assets.definitions``' Definitions for the settings of the environment at load time."""
    return build_definitions(load_settings())


def in_process_target(module: str = __name__, attribute: str = "q50_definitions",
                      location_name: str = LOCATION) -> WorkspaceLoadTarget:
    """A workspace of one code location loaded in this process (no code server)."""
    origin = LoadableTargetOrigin(executable_path=sys.executable, module_name=module, attribute=attribute,
                                  working_directory=str(Path(__file__).resolve().parents[1]))
    return InProcessWorkspaceLoadTarget(InProcessCodeLocationOrigin(origin, location_name=location_name))


@contextmanager
def daemon_instance(overrides: Mapping | None = None) -> Iterator[DagsterInstance]:
    """A throwaway instance (storage in a temporary DAGSTER_HOME) whose runs execute synchronously
    in the process that launches them, submitted straight to the launcher (no run queue)."""
    config = {
        "run_launcher": {"module": SyncInMemoryRunLauncher.__module__, "class": SyncInMemoryRunLauncher.__name__},
        # The name dagster.yaml files use (the class behind it is SyncInMemoryRunCoordinator: submit = launch).
        "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"},
        "telemetry": {"enabled": False},
        **(overrides or {}),
    }
    with instance_for_test(overrides=config) as instance:
        yield instance


@dataclass(frozen=True)
class LaunchedRun:
    run_id: str
    job_name: str
    status: str
    tags: dict[str, str]
    assets: tuple[str, ...]  # the run's asset selection (user strings), sorted
    seconds: float | None  # the run's own wall time, start to end

    @property
    def backfill_id(self) -> str | None:
        """The backfill that launched the run (the backfill daemon's runs)."""
        return self.tags.get(BACKFILL_ID_TAG)

    @property
    def sensor_name(self) -> str | None:
        """The sensor whose tick requested the run (the sensor daemon's runs)."""
        return self.tags.get(SENSOR_NAME_TAG)

    @property
    def from_automation(self) -> bool:
        """Requested by automation conditions (the asset daemon's runs, and its backfills' runs)."""
        return self.tags.get(AUTOMATION_CONDITION_TAG) == "true"

    @property
    def pool_range(self) -> tuple[str, str] | None:
        if ASSET_PARTITION_RANGE_START_TAG not in self.tags:
            return None
        return self.tags[ASSET_PARTITION_RANGE_START_TAG], self.tags[ASSET_PARTITION_RANGE_END_TAG]

    @property
    def failed(self) -> bool:
        return self.status in RUN_FAILED


@dataclass
class Tick:
    """One daemon iteration: what it launched and how long it took (its runs included)."""

    daemon: str  # sensor, automation or backfill
    seconds: float
    runs: list[LaunchedRun] = field(default_factory=list)
    backfills: list[str] = field(default_factory=list)  # backfills this tick created
    status: str | None = None  # the sensor's tick status (SUCCESS, SKIPPED, FAILURE); None for the backfill daemon
    skip_reason: str | None = None

    @property
    def launched(self) -> bool:
        return bool(self.runs or self.backfills)

    def describe(self) -> str:
        what = ", ".join(f"{r.job_name}[{','.join(r.assets)}]{'@' + '..'.join(r.pool_range) if r.pool_range else ''} "
                         f"{r.status}{f' in {r.seconds:.1f} s' if r.seconds is not None else ''}" for r in self.runs)
        parts = [f"{self.daemon} {self.seconds:.1f} s"]
        if self.status:
            parts.append(self.status)
        if self.backfills:
            parts.append(f"backfills {self.backfills}")
        if what:
            parts.append(f"runs: {what}")
        if self.skip_reason:
            parts.append(f"({self.skip_reason})")
        return " ".join(parts)


@dataclass
class Quiet:
    """What :meth:`DaemonTicks.tick_until_quiet` saw, tick by tick."""

    ticks: list[Tick]
    rounds: int
    seconds: float

    @property
    def runs(self) -> list[LaunchedRun]:
        return [r for t in self.ticks for r in t.runs]

    @property
    def backfills(self) -> list[str]:
        return [b for t in self.ticks for b in t.backfills]

    def runs_by(self, daemon: str) -> list[LaunchedRun]:
        return [r for t in self.ticks if t.daemon == daemon for r in t.runs]

    def describe(self) -> str:
        return "\n".join(t.describe() for t in self.ticks if t.launched or t.status == TickStatus.FAILURE.value)


class DaemonTickError(RuntimeError):
    """A tick failed, a launched run failed, or the daemons did not settle."""


class DaemonTicks:
    """Our code location in a daemon workspace, and one iteration of each daemon on demand.

    ``with DaemonTicks(instance, environ={...}) as ticks: ticks.tick_until_quiet()``. ``environ`` is
    set in ``os.environ`` while the context is open (the code location and the runs read their
    settings from it, as deployed); the sensor and the automation sensor are started in the instance
    if their settings leave them stopped.
    """

    def __init__(self, instance: DagsterInstance, target: WorkspaceLoadTarget | None = None,
                 environ: Mapping[str, str] | None = None, sensor: str = SENSOR, automation: str = AUTOMATION,
                 logger: logging.Logger | None = None):
        self.instance = instance
        self.target = target or in_process_target()
        self.environ = dict(environ or {})
        self.sensor_name, self.automation_name = sensor, automation
        self.logger = logger or _log
        self._stack = ExitStack()

    # -- context -----------------------------------------------------------------------------------

    def __enter__(self) -> DaemonTicks:
        check_internals()
        try:
            self._stack.enter_context(mock.patch.dict(os.environ, self.environ))
            self.workspace = self._stack.enter_context(
                dagster_test_utils.create_test_daemon_workspace_context(self.target, self.instance))
            self.repository = self._repository()
            self.sensor = self.repository.get_sensor(self.sensor_name)
            self.automation = self.repository.get_sensor(self.automation_name)
            for remote in (self.sensor, self.automation):
                state = self.instance.get_instigator_state(remote.get_remote_origin_id(), remote.selector_id)
                if not remote.get_current_instigator_state(state).is_running:
                    self.instance.start_sensor(remote)
            self.asset_daemon = dagster_asset_daemon.AssetDaemon(
                settings=self.instance.get_auto_materialize_settings(), pre_sensor_interval_seconds=0)
            self.asset_daemon._logger.setLevel(logging.WARNING)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def _repository(self):
        entries = self.workspace.create_request_context().get_code_location_entries()
        errors = {name: e.load_error for name, e in entries.items() if e.load_error}
        if errors:
            raise DaemonTickError(f"code location failed to load: {errors}")
        (entry,) = entries.values()
        return entry.code_location.get_repository(SINGLETON_REPOSITORY_NAME)

    # -- one iteration per daemon ----------------------------------------------------------------------

    @contextmanager
    def _no_minimum_interval(self):
        never = mock.Mock(return_value=False)
        with (mock.patch.object(dagster_sensor_daemon, "is_under_min_interval", never),
              mock.patch.object(dagster_asset_daemon, "is_under_min_interval", never)):
            yield

    def _tick(self, daemon: str, iterate, remote=None) -> Tick:
        runs_before = set(self.instance.get_run_ids())
        backfills_before = {b.backfill_id for b in self.instance.get_backfills()}
        ticks_before = self._latest_tick_id(remote)
        started = time.perf_counter()
        with self._no_minimum_interval():
            errors = [e for e in iterate() if e is not None and not _is_marker(e)]
        seconds = time.perf_counter() - started
        tick = Tick(daemon, seconds)
        if remote is not None:
            latest = self._latest_tick(remote)
            # A tick left unfinished (its process killed) is resumed by the next iteration: same id, new status.
            if latest is None or (latest.tick_id, latest.status) == ticks_before:
                raise DaemonTickError(f"{daemon}: {remote.name} was not ticked (stopped, or its state is missing)")
            tick.status = latest.status.value
            tick.skip_reason = latest.skip_reason
            if latest.status == TickStatus.FAILURE:
                raise DaemonTickError(f"{daemon}: {remote.name}'s tick failed: {latest.error}")
        if errors:
            raise DaemonTickError(f"{daemon}: {'; '.join(e.to_string() for e in errors)}")
        new_runs = [r for r in self.instance.get_run_ids() if r not in runs_before]
        tick.runs = [self._launched(run_id) for run_id in reversed(new_runs)]  # oldest first
        tick.backfills = sorted(b.backfill_id for b in self.instance.get_backfills()
                                if b.backfill_id not in backfills_before)
        self.logger.info(tick.describe())
        return tick

    def sensor_tick(self) -> Tick:
        """One iteration of the sensor daemon: ``new_collector_bars`` (every running sensor that
        is not an automation sensor) evaluates and its runs are launched (and finish)."""
        def iterate():
            return dagster_sensor_daemon.execute_sensor_iteration(
                self.workspace, self.logger, threadpool_executor=None, submit_threadpool_executor=None)
        return self._tick("sensor", iterate, self.sensor)

    def automation_tick(self) -> Tick:
        """One iteration of the asset daemon: ``q50_automation`` evaluates the assets' automation
        conditions; requests for many partitions become a backfill, the others runs."""
        def iterate():
            self.asset_daemon._run_iteration_impl(self.workspace, threadpool_executor=None, amp_tick_futures={},
                                                  debug_crash_flags={})
            return []
        return self._tick("automation", iterate, self.automation)

    def backfill_tick(self) -> Tick:
        """One iteration of the backfill daemon: every backfill in progress launches the runs it
        can (their parents done) or is marked finished."""
        def iterate():
            return dagster_backfill_daemon.execute_backfill_iteration(self.workspace, self.logger)
        return self._tick("backfill", iterate)

    def monitor_tick(self) -> Tick:
        """One iteration of the run monitoring daemon (with ``run_monitoring`` enabled in the
        instance): a run still "started" past its maximum runtime - its process killed - is marked
        failed, as the deployment's monitor does."""
        def iterate():
            return dagster_run_monitoring.execute_run_monitoring_iteration(self.workspace, self.logger)
        return self._tick("monitor", iterate)

    def tick_until_quiet(self, max_rounds: int = 20, raise_on_run_failure: bool = True) -> Quiet:
        """Rounds of sensor, automation and backfill ticks until a round launches nothing and no run
        or backfill is in progress, before or after it.

        "Before" matters: the backfill daemon marks a backfill done in a tick that launches nothing,
        after the automation's tick of that round saw it in progress (and held its dependents back);
        only the next round's automation tick sees it done."""
        started = time.perf_counter()
        ticks: list[Tick] = []
        for round_number in range(1, max_rounds + 1):
            busy_before = self.in_progress()
            round_ticks = [self.sensor_tick(), self.automation_tick(), self.backfill_tick()]
            if self.instance.run_monitoring_enabled:
                round_ticks.append(self.monitor_tick())
            ticks += round_ticks
            failed = [r for t in round_ticks for r in t.runs if r.failed]
            if failed and raise_on_run_failure:
                raise DaemonTickError(f"runs failed: {[(r.run_id, r.job_name, r.assets, r.tags) for r in failed]}")
            if not busy_before and not any(t.launched for t in round_ticks) and not self.in_progress():
                return Quiet(ticks, round_number, time.perf_counter() - started)
        raise DaemonTickError(f"not quiet after {max_rounds} rounds: in progress {self.in_progress()}; last ticks: "
                              + "; ".join(t.describe() for t in ticks[-3:]))

    def in_progress(self) -> dict[str, list[str]]:
        """Runs not finished and backfills not done (empty when quiet)."""
        runs = self.instance.get_run_ids(RunsFilter(statuses=list(NOT_FINISHED_STATUSES)))
        backfills = [b.backfill_id for b in
                     self.instance.get_backfills(filters=BulkActionsFilter(statuses=list(BACKFILL_IN_PROGRESS)))]
        return {k: v for k, v in {"runs": list(runs), "backfills": backfills}.items() if v}

    # -- helpers -------------------------------------------------------------------------------------

    def _latest_tick(self, remote):
        ticks = self.instance.get_ticks(remote.get_remote_origin_id(), remote.selector_id, limit=1)
        return ticks[0] if ticks else None

    def _latest_tick_id(self, remote) -> tuple | None:
        """(id, status) of the remote's latest tick."""
        if remote is None:
            return None
        latest = self._latest_tick(remote)
        return (latest.tick_id, latest.status) if latest else None

    def _launched(self, run_id: str) -> LaunchedRun:
        record = self.instance.get_run_record_by_id(run_id)
        run = record.dagster_run
        seconds = record.end_time - record.start_time if record.start_time and record.end_time else None
        return LaunchedRun(run_id=run_id, job_name=run.job_name, status=run.status.value, tags=dict(run.tags),
                           assets=tuple(sorted(k.to_user_string() for k in run.asset_selection or ())),
                           seconds=seconds)


def _is_marker(item) -> bool:
    """The daemons' iterations yield span markers and None besides errors."""
    return not hasattr(item, "to_string")
