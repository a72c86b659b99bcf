"""The sensor and the nightly schedule: what re-runs the lineage without a person clicking.

* ``new_collector_bars`` polls the collector database (through the database resource) and asks
  for a ``refresh_pools`` run per batch of pools with new bars or with recent bars revised in place.
* ``nightly_q50`` refreshes every pool's bars, trades, features and regimes at
  ``automation.nightly.hour_utc`` (in batches); the model then retrains, and every pool's signals,
  backtests and trading history follow, by the automation conditions declared on the assets
  (built in ``lineage/common/conditions.py``, evaluated by ``q50_automation``).
"""

from __future__ import annotations

from dataclasses import replace

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    AssetSelection,
    AutomationConditionSensorDefinition,
    DagsterEventType,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    schedule,
    sensor,
)
from sqlalchemy.exc import SQLAlchemyError

from q50_assets.lineage.model.asset import MODEL_ASSET
from q50_assets.lineage.ohlcv.asset import OHLCV_ASSET
from q50_assets.lineage.common.partitions import pool_partitions
from q50_assets.lineage.ohlcv.bar_changes import BarsCursor, diff, pool_states
from q50_assets.lineage.common.conditions import NIGHTLY, TRIGGER_TAG
from q50_assets.automation.jobs import MODEL_DEPENDENT_ASSETS, NEEDS_NO_MODEL_ASSETS, refresh_pools_job
from q50_assets.automation.runs import batch_run_requests, digest, registered_pools
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


def evaluate_new_bars(context: SensorEvaluationContext, collector: CollectorReader, settings: Settings):
    """The sensor's body (a plain function so tests and the benchmark can call it)."""
    config = settings.automation.new_bars_sensor
    timeframe = settings.timeframe
    cursor = BarsCursor.from_json(context.cursor, timeframe)
    try:
        progress = collector.collector_progress()
        if progress is not None and progress == cursor.progress and cursor.pools:
            return SkipReason(
                f"the collector's ohlcv_collector has not run since the last tick "
                f"(run_count {progress['run_count']}, updated_at {progress['updated_at']})")
        summaries = collector.bar_summaries(timeframe, config.revision_window_bars, TIMEFRAME_SECONDS[timeframe])
    except (SQLAlchemyError, OSError) as exc:
        return _unreachable(collector, exc)

    current = pool_states(summaries)
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
        context.log.warning("no q50_model materialization yet: refreshing bars, trades, features and regimes "
                            "only; run train_q50_model (or wait for the nightly schedule) for signals and backtests")
    order = [*known, *to_add]  # partition order once the new pools are added (they go last)
    run_requests = []
    # Pools changed for the same reason go together; within a reason, contiguous ranges.
    for reason in ("new_pool", "new_bars", "revised"):
        pools = [p for p in changes.to_refresh if changes.reason(p) == reason]
        run_requests += batch_run_requests(
            order, pools, settings.batches.pools_per_run, selection, {TRIGGER_TAG: reason},
            # The same collector state always gives the same key: a repeated tick never runs twice.
            run_key=lambda batch: f"{timeframe}:{batch[0]}..{batch[-1]}:{len(batch)}:"
                                  f"{digest(f'{p}={current[p].run_key_part}' for p in batch)}")
    context.log.info(
        f"{len(changes.new_pools)} new pools, {len(changes.new_bars)} with new bars, {len(changes.revised)} revised "
        f"in place, {len(changes.vanished)} vanished, {len(up_to_date)} first seen but already materialized from "
        f"these rows; {len(run_requests)} runs of at most {settings.batches.pools_per_run} pools; "
        f"collector progress {progress}")
    return SensorResult(run_requests=run_requests, cursor=new_cursor, dynamic_partitions_requests=partition_requests)


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
        job=refresh_pools_job,
        minimum_interval_seconds=auto.new_bars_sensor.interval_seconds,
        default_status=_status(auto.new_bars_sensor.running_by_default),
        description="Polls ohlcv_data through the collector resource; refresh_pools runs (batches of at most "
        f"{settings.batches.pools_per_run} pools) for pools with new bars or with their newest "
        f"{auto.new_bars_sensor.revision_window_bars} bars revised in place; adds a partition for every new pool. "
        "Skips (with the reason) when nothing changed or the database is unreachable.",
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
