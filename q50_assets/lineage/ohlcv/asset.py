"""Lineage stage 1 - OHLCV: each pool's bars from the collector, validated, a batch of pools per run.

Glue only: the rules live in :mod:`q50_assets.lineage.ohlcv.rules` and the batch step in
:mod:`q50_assets.lineage.ohlcv.step`. Every rule is an asset check with one result per pool. A pool
failing a blocking rule is marked unsafe in the output (``ValidatedBars.safe``): later stages
skip it and say so; the other pools of the batch go on.
"""

from dagster import AssetExecutionContext, MetadataValue, Output, ResourceParam, asset

from q50_assets.lineage.common.batch import PoolChecks, add_pool_metadata, pool_check_spec, progress_callback
from q50_assets.lineage.common.partitions import pool_partitions
from q50_assets.lineage.common.ports import CollectorSource
from q50_assets.lineage.ohlcv.rules import BAR_RULES, RuleOutcome
from q50_assets.lineage.ohlcv.step import summary
from q50_assets.lineage.common.provenance import provenance_metadata
from q50_assets.settings import Settings
from q50_assets.lineage.ohlcv.step import ohlcv_step

OHLCV_ASSET = "ohlcv_bars"


def _check_metadata(outcome: RuleOutcome) -> dict:
    metadata = dict(outcome.metadata)
    if not outcome.offending.empty:
        metadata["offending_bars_listed"] = MetadataValue.json(outcome.listed_bars())
    return metadata


@asset(
    name=OHLCV_ASSET,
    partitions_def=pool_partitions,
    group_name="ohlcv",
    kinds={"sql", "pandas"},
    check_specs=[pool_check_spec(OHLCV_ASSET, rule.name, rule.description, rule.blocking) for rule in BAR_RULES],
    description="Each pool's bars of the configured timeframe from the collector's ohlcv_data: UTC bar "
    "opens, float prices, sorted; the newest (still revisable) bar held back; every rule an asset check "
    "per pool. A pool failing a blocking rule is marked unsafe and skipped downstream.",
)
def ohlcv_bars(context: AssetExecutionContext, collector: ResourceParam[CollectorSource], settings: ResourceParam[Settings]):
    pool_ids = list(context.partition_keys)
    validated, states = ohlcv_step(pool_ids, collector, settings,
                                   progress_callback(context, OHLCV_ASSET, len(pool_ids)))
    checks = PoolChecks(context)
    for pool_id, v in validated.items():
        if not v.safe:
            context.log.warning(f"pool {pool_id}: blocking checks failed {v.blocking_failures}; "
                                "downstream stages skip it")
        # collector_state: the rows this materialization reflects, in the new-bars sensor's terms,
        # so a sensor starting afresh does not re-run a pool already materialized from them.
        add_pool_metadata(context, pool_id, {**summary(v), "collector_state": states[pool_id]})
        for outcome in v.outcomes:
            checks.add(OHLCV_ASSET, outcome.name, pool_id, outcome.passed, _check_metadata(outcome),
                       blocks_pool=outcome.blocking, description=outcome.description)
    safe = sum(v.safe for v in validated.values())
    yield Output(validated, metadata={"pools": len(pool_ids), "pools_safe": safe, "pools_blocked": len(pool_ids) - safe,
                                      **provenance_metadata(settings, run_id=context.run.run_id)})
    yield from checks.events()
