"""Lineage stage 1b - trades: a batch of pools' collector trades (one query), each pool's reconciled
with its bars and aggregated per bar into its QLib store, where the flow features are QLib
expressions.

Glue only: the rules live in :mod:`q50_assets.lineage.trades.rules`, the batch step's pieces in
:mod:`q50_assets.lineage.trades.step`; each rule is a check with one result per pool. The checks warn
rather than block: a pool whose trades fail one still runs on its bars, but its trade fields are
removed from the store, so its flow features are missing (NaN, counted by qlib_features).
"""

import math

from dagster import AssetExecutionContext, MetadataValue, Output, ResourceParam, asset

from q50_assets.lineage.common.batch import PoolChecks, add_pool_metadata, blocked_metadata, pool_check_spec, progress_callback
from q50_assets.lineage.common.partitions import pool_partitions
from q50_assets.lineage.common.ports import CollectorSource, FeatureStore
from q50_assets.lineage.trades.rules import TRADE_CHECKS
from q50_assets.lineage.common.gate import Blocked
from q50_assets.lineage.trades.step import STAGE, clock_table_markdown, summary
from q50_assets.settings import Settings
from q50_assets.lineage.trades.step import trades_step

TRADES_ASSET = STAGE

_CHECK_DESCRIPTIONS = {
    "trade_rows_valid": "Every trades row has an epoch-suffixed id, a buy/sell side and positive volume and amounts.",
    "prices_within_bar_range": "Trade prices (derived from amounts and USD volume) lie within their bar's low-high.",
    "volume_within_bar_volume": "Summed trade volume per bar stays a lower bound of the bar's volume.",
    "clock_shift": "The id's epoch fits the bars unshifted (lags -12..+12 h tried); block_timestamp's shift is named.",
    "trade_coverage": "The collected trades span enough bars and explain enough of their volume for flow features.",
}


def _meta(value):
    if isinstance(value, float):
        return MetadataValue.float(value) if math.isfinite(value) else MetadataValue.text("n/a")
    return value


@asset(
    name=TRADES_ASSET,
    partitions_def=pool_partitions,
    group_name="trades",
    kinds={"sql", "qlib"},
    check_specs=[pool_check_spec(TRADES_ASSET, name, _CHECK_DESCRIPTIONS[name], False) for name in TRADE_CHECKS],
    description="Each pool's collector trades placed by the id's epoch (block_timestamp is +6 h), priced in the "
    "pool token (from amounts and USD volume), reconciled with the bars and aggregated per bar: trade count, buy "
    "and sell USD, unique wallets, VWAP. Written to the pool's QLib store over the span the trades cover when every "
    "check passes; otherwise removed, so flow features are missing rather than zero. Pools blocked upstream are "
    "skipped.",
)
def pool_trades(context: AssetExecutionContext, ohlcv_bars: dict, collector: ResourceParam[CollectorSource],
                qlib_store: ResourceParam[FeatureStore], settings: ResourceParam[Settings]):
    pool_ids = list(context.partition_keys)
    analyses = trades_step(ohlcv_bars, qlib_store, collector, settings,
                           progress_callback(context, TRADES_ASSET, len(pool_ids)))
    checks = PoolChecks(context)
    for pool_id in pool_ids:
        analysis = analyses[pool_id]
        if isinstance(analysis, Blocked):  # blocked upstream: not analysed, so not checked
            add_pool_metadata(context, pool_id, blocked_metadata(analysis))
            continue
        add_pool_metadata(context, pool_id, {**{k: _meta(v) for k, v in summary(analysis).items()},
                                             "clock_shift_table": MetadataValue.md(clock_table_markdown(analysis))})
        for check in analysis.checks:
            checks.add(TRADES_ASSET, check.name, pool_id, check.passed,
                       {k: _meta(v) for k, v in check.metadata.items()}, blocks_pool=False,
                       description=check.description)
    analysed = [a for a in analyses.values() if not isinstance(a, Blocked)]
    yield Output(analyses, metadata={"pools": len(pool_ids), "pools_analysed": len(analysed),
                                     "pools_with_flow_fields": sum(a.usable for a in analysed)})
    yield from checks.events()
