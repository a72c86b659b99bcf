"""The sensor and the nightly schedule: what re-runs the lineage without a person clicking.

* ``new_collector_bars`` polls the collector database (through the database resource) and asks
  for a ``refresh_pools`` run per batch of pools with new bars or with recent bars revised in place.
  It also repairs: a pool whose latest run failed or was canceled (a run killed half-way, once the
  run monitor marked it) and that no run is working on is refreshed again, at most
  ``repair_attempts`` times in a row. When the collector's bars reach the end of the live model's
  fold (``live_valid_until``, a calendar boundary), or once every pool is refreshed and no model
  exists yet, it asks for ``train_q50_model``: the model
  retrains at the data's fold boundaries, so a run bar by bar equals a run from scratch. Pools gone
  from the collector get an observation saying so (their outputs stay, marked).
* ``nightly_q50`` refreshes every pool's bars, trades, features and regimes at
  ``automation.nightly.hour_utc`` (in batches); the model then retrains, and every pool's signals,
  backtests and trading history follow, by the automation conditions declared on the assets
  (built in ``lineage/common/conditions.py``, evaluated by ``q50_automation``).
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
from dagster import (
    AssetKey,
    AssetObservation,
    AssetRecordsFilter,
    AssetSelection,
    AutomationConditionSensorDefinition,
    DagsterEventType,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    schedule,
    sensor,
)
from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG, PARTITION_NAME_TAG
from sqlalchemy.exc import SQLAlchemyError

from q50_assets.lineage.model.asset import MODEL_ASSET
from q50_assets.lineage.ohlcv.asset import OHLCV_ASSET
from q50_assets.lineage.common.partitions import pool_partitions
from q50_assets.lineage.ohlcv.bar_changes import BarsCursor, diff, pool_states
from q50_assets.lineage.common.conditions import NIGHTLY, TRIGGER_TAG
from q50_assets.automation.jobs import (MODEL_DEPENDENT_ASSETS, NEEDS_NO_MODEL_ASSETS, refresh_pools_job,
                                        train_q50_model_job)
from q50_assets.automation.runs import batch_run_requests, digest, registered_pools, request_pools
from q50_assets.settings import TIMEFRAME_SECONDS
from q50_assets.storage.collector import CollectorReader
from q50_assets.settings import Settings


def _status(running: bool) -> DefaultSensorStatus:
    return DefaultSensorStatus.RUNNING if running else DefaultSensorStatus.STOPPED


def _unreachable(db: CollectorReader, exc: Exception) -> SkipReason:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    # Driver messages name host and port, never the password; redact the URL anyway if it appears.
    message = first_line.replace(db.url, db.display_url)
    return SkipReason(f"collector database {db.display_url} unreachable ({type(exc).__name__}: {message}); "
                      "the cursor is unchanged, the next tick tries again")


def materialized_states(instance, pool_ids: list[str]) -> dict[str, str]:
    """Per pool, the collector state its latest ohlcv_bars materialization read (its metadata)."""
    if not pool_ids:
        return {}
    key = AssetKey(OHLCV_ASSET)
    latest = instance.event_log_storage.get_latest_storage_id_by_partition(
        key, DagsterEventType.ASSET_MATERIALIZATION, set(pool_ids))
    if not latest:
        return {}
    records = instance.fetch_materializations(AssetRecordsFilter(asset_key=key, storage_ids=list(latest.values())),
                                              limit=len(latest)).records
    out = {}
    for record in records:
        state = record.asset_materialization.metadata.get("collector_state")
        if state is not None:
            out[record.partition_key] = state.value
    return out


REPAIR = "repair"      # trigger tag of a refresh redone after a run that did not finish
NEXT_FOLD = "next_fold"  # trigger tag of a retrain at the next calendar fold boundary


def pools_of_run(run, order: list[str]) -> list[str]:
    """The pools a run covers (its partition range, or its one partition); none for a pooled run."""
    tags = run.tags
    if ASSET_PARTITION_RANGE_START_TAG in tags and ASSET_PARTITION_RANGE_END_TAG in tags:
        try:
            return request_pools(tags, order)
        except ValueError:  # a range over pools no longer registered
            return []
    return [tags[PARTITION_NAME_TAG]] if PARTITION_NAME_TAG in tags else []


def pools_in_progress(instance, order: list[str]) -> set[str]:
    """Pools covered by a run that is queued or running (a sensor's, the nightly's or a backfill's)."""
    return {p for run in instance.get_runs(RunsFilter(statuses=IN_PROGRESS_RUN_STATUSES)) for p in pools_of_run(run, order)}


def unfinished_pools(instance, order: list[str], busy: set[str], recent_runs: int, max_attempts: int
                     ) -> tuple[list[str], list[str]]:
    """(pools to refresh again, pools given up on): registered pools whose latest run (among the
    ``recent_runs`` newest) failed or was canceled - a run killed half-way, once the run monitor
    marked it - and that no run is working on. A pool whose last ``max_attempts`` runs were all
    repairs that did not finish is given up on (logged, left to a person)."""
    latest: dict[str, list] = {}
    for run in instance.get_runs(limit=recent_runs):  # newest first
        for p in pools_of_run(run, order):
            latest.setdefault(p, []).append(run)
    repair, given_up = [], []
    for p, runs in latest.items():
        if p in busy or runs[0].status not in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED):
            continue
        failed_repairs = 0
        for run in runs:
            if run.status in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED) and run.tags.get(TRIGGER_TAG) == REPAIR:
                failed_repairs += 1
            else:
                break
        (given_up if failed_repairs >= max_attempts else repair).append(p)
    return sorted(repair), sorted(given_up)


def model_due(model_event, current: dict) -> str | None:
    """Why the model should train now, as a run key part, or None.

    * ``first``: no model yet (every pool's bars, trades and features are done when this is asked);
    * the live model's fold end (``live_valid_until``, ISO) once the collector's newest bar reached
      it: complete bars then close in the next fold, which only a retrain may predict, so the model
      retrains at the data's calendar boundaries and a run bar by bar equals a run from scratch."""
    if not current:
        return None
    if model_event is None:
        return "first"
    entry = model_event.asset_materialization.metadata.get("live_valid_until")
    if entry is None or entry.value in ("", "none"):
        return None
    valid_until = pd.Timestamp(entry.value)
    # The newest bar is held back as partial: complete bars close at or before its open.
    newest = max(state.newest for state in current.values())
    return entry.value if newest >= valid_until.timestamp() else None


def vanished_observations(vanished: list[str], previous: dict) -> list[AssetObservation]:
    """An observation per pool whose bars are gone from the collector: its outputs stay (history
    is never deleted) and the UI says they are no longer fed."""
    return [AssetObservation(asset_key=AssetKey(OHLCV_ASSET), partition=p, metadata={
        "collector_status": "vanished",
        "last_bar_open": pd.Timestamp(previous[p].newest, unit="s", tz="UTC").isoformat(),
        "note": "no bars of this pool in the collector any more: it leaves the model's training; its signals, "
                "backtests and trading history stay as they were"}) for p in vanished]


def evaluate_new_bars(context: SensorEvaluationContext, collector: CollectorReader, settings: Settings):
    """The sensor's body (a plain function so tests and the benchmark can call it)."""
    config = settings.automation.new_bars_sensor
    timeframe = settings.timeframe
    cursor = BarsCursor.from_json(context.cursor, timeframe)
    try:
        progress = collector.collector_progress()
        collector_idle = bool(progress is not None and progress == cursor.progress and cursor.pools)
        # The collector has not run since the last tick: its rows are the cursor's.
        current = cursor.pools if collector_idle else pool_states(
            collector.bar_summaries(timeframe, config.revision_window_bars, TIMEFRAME_SECONDS[timeframe]))
    except (SQLAlchemyError, OSError) as exc:
        return _unreachable(collector, exc)

    changes = diff(cursor.pools, current)
    states = materialized_states(context.instance, changes.new_pools)
    up_to_date = [p for p in changes.new_pools if states.get(p) == current[p].run_key_part]
    if up_to_date:
        # A sensor starting afresh (first tick, lost cursor): pools whose latest ohlcv_bars run read
        # exactly these rows are watched from now on, not re-run.
        changes = replace(changes, new_pools=[p for p in changes.new_pools if p not in up_to_date])
    new_cursor = BarsCursor(timeframe, progress, current).to_json()
    known = registered_pools(context.instance)
    to_add = sorted(set(current) - set(known))
    partition_requests = [pool_partitions.build_add_request(to_add)] if to_add else []
    observations = vanished_observations(changes.vanished, cursor.pools)

    model_event = context.instance.get_latest_materialization_event(AssetKey(MODEL_ASSET))
    model_ready = model_event is not None
    order = [*known, *to_add]  # partition order once the new pools are added (they go last)
    busy = pools_in_progress(context.instance, order)
    unfinished, given_up = unfinished_pools(context.instance, order, busy, config.repair_lookback_runs,
                                            config.repair_attempts)
    repairs = [p for p in unfinished if p in current and p not in changes.to_refresh]
    if given_up:
        context.log.error(f"{len(given_up)} pools failed {config.repair_attempts} repairs in a row and are no longer "
                          f"retried until their bars change or a person re-runs them: {given_up[:10]}")

    if not changes.to_refresh and not repairs:
        due = model_due(model_event, current) if not busy else None
        if due == "first" and len(materialized_states(context.instance, list(current))) < len(current):
            due = None  # some pool's bars were never materialized yet: its refresh comes first
        if due is not None:
            context.log.info("every pool refreshed and no model yet: training the first" if due == "first" else
                             f"the collector's bars reached the live model's fold end {due}: retraining")
            return SensorResult(
                run_requests=[RunRequest(run_key=f"{NEXT_FOLD}:{timeframe}:{due}", job_name=train_q50_model_job.name,
                                         tags={TRIGGER_TAG: NEXT_FOLD})],
                cursor=new_cursor, dynamic_partitions_requests=partition_requests, asset_events=observations)
        if collector_idle:
            reason = (f"the collector's ohlcv_collector has not run since the last tick "
                      f"(run_count {progress['run_count']}, updated_at {progress['updated_at']})")
        else:
            reason = f"no new or revised {timeframe} bars in {len(current)} pools"
        if changes.vanished:
            reason += f"; {len(changes.vanished)} pools no longer have {timeframe} bars"
        if up_to_date:
            reason += f"; {len(up_to_date)} pools first seen, already materialized from these rows"
        if busy:
            reason += f"; {len(busy)} pools in runs still queued or running"
        if collector_idle and not observations and not partition_requests:
            return SkipReason(reason)  # nothing learnt: the cursor stays
        return SensorResult(skip_reason=SkipReason(reason), cursor=new_cursor,
                            dynamic_partitions_requests=partition_requests, asset_events=observations)

    selection = [AssetKey(a) for a in (*NEEDS_NO_MODEL_ASSETS, *(MODEL_DEPENDENT_ASSETS if model_ready else ()))]
    if not model_ready:
        context.log.warning("no q50_model materialization yet: refreshing bars, trades, features and regimes "
                            "only; run train_q50_model (or wait for the nightly schedule) for signals and backtests")
    run_requests = []
    # Pools changed for the same reason go together; within a reason, contiguous ranges.
    for reason in ("new_pool", "new_bars", "revised", REPAIR):
        pools = repairs if reason == REPAIR else [p for p in changes.to_refresh if changes.reason(p) == reason]
        run_requests += batch_run_requests(
            order, pools, settings.batches.pools_per_run, selection, {TRIGGER_TAG: reason},
            job_name=refresh_pools_job.name,
            # The same collector state always gives the same key: a repeated tick never runs twice. A
            # repair has none: it is asked for only while no run covers its pools, so a repair that
            # itself did not finish is tried again at the next tick.
            run_key=None if reason == REPAIR else (
                lambda batch: f"{timeframe}:{batch[0]}..{batch[-1]}:{len(batch)}:"
                              f"{digest(f'{p}={current[p].run_key_part}' for p in batch)}"))
    context.log.info(
        f"{len(changes.new_pools)} new pools, {len(changes.new_bars)} with new bars, {len(changes.revised)} revised "
        f"in place, {len(repairs)} whose last refresh did not finish, {len(changes.vanished)} vanished, "
        f"{len(up_to_date)} first seen but already materialized from these rows; {len(run_requests)} runs of at "
        f"most {settings.batches.pools_per_run} pools; collector progress {progress}")
    return SensorResult(run_requests=run_requests, cursor=new_cursor, dynamic_partitions_requests=partition_requests,
                        asset_events=observations)


def evaluate_nightly(context: ScheduleEvaluationContext, settings: Settings):
    """Every registered pool's bars, trades, features and regimes, in batches (the model follows by its
    automation condition once they are all done)."""
    pools = registered_pools(context.instance)
    if not pools:
        return SkipReason("no pools registered yet (the new_collector_bars sensor or `q50 register-pools` adds them)")
    # The tick's time makes each night's run keys its own (a repeated tick still runs once).
    tick = context.scheduled_execution_time.isoformat()
    return batch_run_requests(pools, pools, settings.batches.pools_per_run,
                              [AssetKey(a) for a in NEEDS_NO_MODEL_ASSETS], {TRIGGER_TAG: NIGHTLY},
                              run_key=lambda batch: f"nightly:{tick}:{batch[0]}..{batch[-1]}")


def build_automation(settings: Settings) -> tuple[list, list]:
    """(sensors, schedules) configured from ``settings.automation``."""
    auto = settings.automation

    @sensor(
        name="new_collector_bars",
        jobs=[refresh_pools_job, train_q50_model_job],
        minimum_interval_seconds=auto.new_bars_sensor.interval_seconds,
        default_status=_status(auto.new_bars_sensor.running_by_default),
        description="Polls ohlcv_data through the collector resource; refresh_pools runs (batches of at most "
        f"{settings.batches.pools_per_run} pools) for pools with new bars or with their newest "
        f"{auto.new_bars_sensor.revision_window_bars} bars revised in place, and again for pools whose last refresh did "
        "not finish (a run killed or failed half-way); adds a partition for every new pool; asks for train_q50_model "
        "when the bars reach the end of the live model's fold (a calendar boundary) or, with no model yet, once every "
        "pool is refreshed; observes pools gone from the "
        "collector. Skips (with the reason) when nothing changed or the database is unreachable.",
    )
    def new_collector_bars(context: SensorEvaluationContext, collector: CollectorReader):
        return evaluate_new_bars(context, collector, settings)

    @schedule(
        name="nightly_q50",
        job=refresh_pools_job,
        cron_schedule=f"0 {auto.nightly.hour_utc} * * *",
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING if auto.nightly.running_by_default else DefaultScheduleStatus.STOPPED,
        description="Every pool's bars, trades, features and regimes re-read (batches); the Q50 model then retrains "
        "and every pool's signals, backtests and trading history follow (the assets' automation conditions; new "
        "backtest run ids, earlier runs' rows kept as history).",
    )
    def nightly_q50(context: ScheduleEvaluationContext):
        return evaluate_nightly(context, settings)

    automation = AutomationConditionSensorDefinition(
        "q50_automation",
        target=AssetSelection.all(),
        default_status=_status(auto.conditions.running_by_default),
        minimum_interval_seconds=auto.conditions.interval_seconds,
        description="Evaluates the assets' automation conditions: the model after the nightly refresh, every "
        "pool's signals after a model update, backtests and trading history after signals, the portfolio "
        "after backtests. Many pools become one backfill, run in batches by the assets' backfill policy.",
    )
    return [new_collector_bars, automation], [nightly_q50]
