"""Sensors and the nightly schedule: what re-runs the lineage without a person clicking.

* ``new_collector_bars`` polls the collector database (through the database resource) and asks
  for one ``refresh_pool`` run per pool with new bars or with recent bars revised in place.
* ``nightly_q50`` retrains the Q50 model at ``automation.nightly.hour_utc``;
  ``refresh_pools_after_training`` then re-runs every pool through trading history against the
  new model, and ``portfolio_after_refresh`` summarises once all of those runs have finished.
"""

from __future__ import annotations

from dataclasses import replace

from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_status_sensor,
    sensor,
)
from dagster._core.definitions.data_version import DATA_VERSION_TAG
from dagster._core.storage.dagster_run import FINISHED_STATUSES
from sqlalchemy.exc import SQLAlchemyError

from q50_assets.assets.model import MODEL_ASSET
from q50_assets.assets.ohlcv import OHLCV_ASSET
from q50_assets.assets.partitions import POOLS_PARTITION_NAME, pool_partitions
from q50_assets.automation.bar_changes import BarsCursor, diff, pool_states
from q50_assets.automation.jobs import (
    MODEL_DEPENDENT_ASSETS,
    NEEDS_NO_MODEL_ASSETS,
    nightly_job,
    portfolio_summary_job,
    refresh_pool_job,
    train_q50_model_job,
)
from q50_assets.research.bars import TIMEFRAME_SECONDS
from q50_assets.resources.database import CollectorDatabase
from q50_assets.settings import Settings

TRIGGER_TAG = "q50/trigger"        # why a run was requested: new_pool, new_bars, revised, model
MODEL_RUN_TAG = "q50/model_run"    # the model run a batch of pool refreshes follows


def _status(running: bool) -> DefaultSensorStatus:
    return DefaultSensorStatus.RUNNING if running else DefaultSensorStatus.STOPPED


def _unreachable(db: CollectorDatabase, exc: Exception) -> SkipReason:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    # Driver messages name host and port, never the password; redact the URL anyway if it appears.
    message = first_line.replace(db.url, db.display_url)
    return SkipReason(f"collector database {db.display_url} unreachable ({type(exc).__name__}: {message}); "
                      "the cursor is unchanged, the next tick tries again")


def _materialized_from(context: SensorEvaluationContext, pool_ids: list[str], current: dict) -> set[str]:
    """Pools among ``pool_ids`` whose latest ohlcv_bars materialization has the data version of
    their current collector state (ohlcv_bars stamps it from the rows it read)."""
    if not pool_ids:
        return set()
    tags = context.instance.event_log_storage.get_latest_tags_by_partition(
        AssetKey(OHLCV_ASSET), DagsterEventType.ASSET_MATERIALIZATION, [DATA_VERSION_TAG], asset_partitions=pool_ids)
    return {p for p in pool_ids if tags.get(p, {}).get(DATA_VERSION_TAG) == current[p].run_key_part}


def evaluate_new_bars(context: SensorEvaluationContext, collector_db: CollectorDatabase, settings: Settings):
    """The sensor's body (a plain function so tests and the benchmark can call it)."""
    config = settings.automation.new_bars_sensor
    timeframe = settings.timeframe
    cursor = BarsCursor.from_json(context.cursor, timeframe)
    try:
        progress = collector_db.collector_progress()
        if progress is not None and progress == cursor.progress and cursor.pools:
            return SkipReason(
                f"the collector's ohlcv_collector has not run since the last tick "
                f"(run_count {progress['run_count']}, updated_at {progress['updated_at']})")
        summaries = collector_db.bar_summaries(timeframe, config.revision_window_bars, TIMEFRAME_SECONDS[timeframe])
    except (SQLAlchemyError, OSError) as exc:
        return _unreachable(collector_db, exc)

    current = pool_states(summaries)
    changes = diff(cursor.pools, current)
    up_to_date = _materialized_from(context, changes.new_pools, current)
    if up_to_date:
        # A sensor starting afresh (first tick, lost cursor): pools whose latest ohlcv_bars run read
        # exactly these rows are watched from now on, not re-run.
        changes = replace(changes, new_pools=[p for p in changes.new_pools if p not in up_to_date])
    new_cursor = BarsCursor(timeframe, progress, current).to_json()
    known = set(context.instance.get_dynamic_partitions(POOLS_PARTITION_NAME))
    to_add = sorted(set(current) - known)
    partition_requests = [pool_partitions.build_add_request(to_add)] if to_add else []

    if not changes.to_refresh:
        vanished = f"; {len(changes.vanished)} pools no longer have {timeframe} bars" if changes.vanished else ""
        if up_to_date:
            vanished += f"; {len(up_to_date)} pools first seen, already materialized from these rows"
        return SensorResult(
            skip_reason=SkipReason(f"no new or revised {timeframe} bars in {len(current)} pools{vanished}"),
            cursor=new_cursor, dynamic_partitions_requests=partition_requests)

    model_ready = context.instance.get_latest_materialization_event(AssetKey(MODEL_ASSET)) is not None
    selection = [AssetKey(a) for a in (*NEEDS_NO_MODEL_ASSETS, *(MODEL_DEPENDENT_ASSETS if model_ready else ()))]
    if not model_ready:
        context.log.warning("no q50_model materialization yet: refreshing bars, features and regimes only; "
                            "run train_q50_model (or wait for the nightly schedule) for signals and backtests")
    run_requests = [
        RunRequest(
            # The same collector state always gives the same key: a repeated tick never runs twice.
            run_key=f"{pool_id}:{timeframe}:{current[pool_id].run_key_part}",
            partition_key=pool_id,
            asset_selection=selection,
            tags={TRIGGER_TAG: changes.reason(pool_id)},
        )
        for pool_id in changes.to_refresh
    ]
    context.log.info(
        f"{len(changes.new_pools)} new pools, {len(changes.new_bars)} with new bars, {len(changes.revised)} revised "
        f"in place, {len(changes.vanished)} vanished, {len(up_to_date)} first seen but already materialized from "
        f"these rows; collector progress {progress}")
    return SensorResult(run_requests=run_requests, cursor=new_cursor, dynamic_partitions_requests=partition_requests)


def build_automation(settings: Settings) -> tuple[list, list]:
    """(sensors, schedules) configured from ``settings.automation``."""
    auto = settings.automation

    @sensor(
        name="new_collector_bars",
        job=refresh_pool_job,
        minimum_interval_seconds=auto.new_bars_sensor.interval_seconds,
        default_status=_status(auto.new_bars_sensor.running_by_default),
        description="Polls ohlcv_data through the collector_db resource; one refresh_pool run per pool with new "
        f"bars or with its newest {auto.new_bars_sensor.revision_window_bars} bars revised in place; adds a "
        "partition for every new pool. Skips (with the reason) when nothing changed or the database is unreachable.",
    )
    def new_collector_bars(context: SensorEvaluationContext, collector_db: CollectorDatabase):
        return evaluate_new_bars(context, collector_db, settings)

    @run_status_sensor(
        name="refresh_pools_after_training",
        run_status=DagsterRunStatus.SUCCESS,
        monitored_jobs=[train_q50_model_job, nightly_job],
        request_job=refresh_pool_job,
        default_status=DefaultSensorStatus.RUNNING,
        description="After a successful model training run: every pool through trading history against it.",
    )
    def refresh_pools_after_training(context):
        model_run = context.dagster_run
        pools = context.instance.get_dynamic_partitions(POOLS_PARTITION_NAME)
        return [RunRequest(run_key=f"after-model:{model_run.run_id}:{pool_id}", partition_key=pool_id,
                           tags={TRIGGER_TAG: "model", MODEL_RUN_TAG: model_run.run_id})
                for pool_id in pools]

    @sensor(
        name="portfolio_after_refresh",
        job=portfolio_summary_job,
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.RUNNING,
        description="Once every pool run that followed the latest model training has finished, the portfolio table.",
    )
    def portfolio_after_refresh(context: SensorEvaluationContext):
        model_runs = [
            r for job in (train_q50_model_job.name, nightly_job.name)
            for r in context.instance.get_run_records(
                RunsFilter(job_name=job, statuses=[DagsterRunStatus.SUCCESS]), limit=1)
        ]
        if not model_runs:
            return SkipReason("no successful model training run yet")
        model_run = max(model_runs, key=lambda r: r.create_timestamp).dagster_run
        batch = context.instance.get_run_records(RunsFilter(tags={MODEL_RUN_TAG: model_run.run_id}))
        pool_runs = [r for r in batch if r.dagster_run.job_name == refresh_pool_job.name]
        if not pool_runs:
            return SkipReason(f"no pool runs after model run {model_run.run_id} yet")
        running = [r for r in pool_runs if r.dagster_run.status not in FINISHED_STATUSES]
        if running:
            return SkipReason(f"{len(running)} of {len(pool_runs)} pool runs after model run "
                              f"{model_run.run_id} still queued or running")
        return RunRequest(run_key=f"portfolio:{model_run.run_id}", tags={MODEL_RUN_TAG: model_run.run_id})

    nightly = ScheduleDefinition(
        name="nightly_q50",
        job=nightly_job,
        cron_schedule=f"0 {auto.nightly.hour_utc} * * *",
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING if auto.nightly.running_by_default else DefaultScheduleStatus.STOPPED,
        description="Retrain the walk-forward Q50 model (and its live model) on every pool; the run-status sensor "
        "then re-runs every pool's signals, regimes, backtests and trading history (new backtest run ids; "
        "earlier runs' rows are kept as history).",
    )
    return [new_collector_bars, refresh_pools_after_training, portfolio_after_refresh], [nightly]

