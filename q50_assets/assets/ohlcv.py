"""Lineage stage 1 - OHLCV: one pool's bars from the collector, validated.

Glue only: the rules live in :mod:`q50_assets.research.bars`; each becomes an asset check.
Blocking rules stop downstream stages in the same run, and the output carries ``safe`` so a
later run of a downstream stage refuses the bars too (``require_safe``).
"""


import json
import warnings

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    BetaWarning,
    DataVersion,
    MetadataValue,
    Output,
    ResourceParam,
    asset,
)

from q50_assets.assets.partitions import pool_partitions
from q50_assets.automation.bar_changes import state_of_rows
from q50_assets.research.bars import (
    BAR_RULES,
    TIMEFRAME_SECONDS,
    VALUE_COLUMNS,
    BarRules,
    RuleOutcome,
    ValidatedBars,
    validate_bars,
)
from q50_assets.resources.database import CollectorDatabase
from q50_assets.settings import Settings

OHLCV_ASSET = "ohlcv_bars"


def bar_rules(settings: Settings) -> BarRules:
    o = settings.ohlcv
    return BarRules(
        timeframe=settings.timeframe,
        min_bars=o.min_bars,
        stored_price_decimals=o.stored_price_decimals,
        min_price_significant_digits=o.min_price_significant_digits,
        max_gap_bars=o.max_gap_bars,
    )


def _check_result(pool_id: str, outcome: RuleOutcome) -> AssetCheckResult:
    metadata = {"pool_id": pool_id, **{k: _meta_value(v) for k, v in outcome.metadata.items()}}
    if not outcome.offending.empty:
        metadata["offending_bars_listed"] = MetadataValue.json(outcome.listed_bars())
    return AssetCheckResult(
        check_name=outcome.name,
        passed=outcome.passed,
        severity=AssetCheckSeverity.ERROR if outcome.blocking else AssetCheckSeverity.WARN,
        metadata=metadata,
        description=outcome.description,
    )


def _meta_value(value):
    if isinstance(value, (list, dict)):
        return MetadataValue.json(value)
    if value is None:
        return MetadataValue.text("none")
    return value


def _materialization_metadata(validated: ValidatedBars) -> dict:
    s = validated.summary()
    failing = [o.name for o in validated.outcomes if not o.passed]
    return {
        "pool_id": s["pool_id"],
        "rows_read": s["rows_read"],
        "complete_bars": s["complete_bars"],
        "partial_bars_held_back": s["partial_bars_held_back"],
        "first_open": MetadataValue.text(s["first_open"] or "none"),
        "last_open": MetadataValue.text(s["last_open"] or "none"),
        "gap_count": s["gap_count"],
        "longest_gap_bars": s["longest_gap_bars"],
        "price_low": MetadataValue.float(s["min_low"]) if s["min_low"] is not None else MetadataValue.text("none"),
        "price_high": MetadataValue.float(s["max_high"]) if s["max_high"] is not None else MetadataValue.text("none"),
        "safe_for_downstream": s["safe"],
        "failing_checks": MetadataValue.text(json.dumps(failing)),
    }


@asset(
    name=OHLCV_ASSET,
    partitions_def=pool_partitions,
    group_name="ohlcv",
    kinds={"sql", "pandas"},
    check_specs=[
        AssetCheckSpec(rule.name, asset=OHLCV_ASSET, blocking=rule.blocking, description=rule.description)
        for rule in BAR_RULES
    ],
    description="One pool's bars of the configured timeframe from the collector's ohlcv_data: UTC bar "
    "opens, float prices, sorted; the newest (still revisable) bar held back; every rule an asset check.",
)
def ohlcv_bars(
    context: AssetExecutionContext, collector_db: CollectorDatabase, settings: ResourceParam[Settings]
):
    pool_id = context.partition_key
    raw = collector_db.read_bars(pool_id, settings.timeframe)
    validated = validate_bars(
        pool_id,
        raw,
        bar_rules(settings),
        colliding_pool_ids=collector_db.lowercase_collisions(pool_id),
        pool_registered=collector_db.pool_registered(pool_id),
    )
    if not validated.safe:
        context.log.warning(
            f"pool {pool_id}: blocking checks failed {validated.blocking_failures}; downstream stages skip it"
        )
    # The collector state this materialization reflects, in the sensor's terms: a sensor starting
    # afresh does not re-run a pool already materialized from exactly these rows.
    state = state_of_rows(raw[["timestamp", *VALUE_COLUMNS]].itertuples(index=False, name=None),
                          settings.automation.new_bars_sensor.revision_window_bars, TIMEFRAME_SECONDS[settings.timeframe])
    with warnings.catch_warnings():  # Output(data_version=) is beta in Dagster 1.13; pyproject pins <1.14
        warnings.simplefilter("ignore", BetaWarning)
        output = Output(validated, metadata=_materialization_metadata(validated),
                        data_version=DataVersion(state.run_key_part if state else "no-rows"))
    yield output
    for outcome in validated.outcomes:
        yield _check_result(pool_id, outcome)
