"""Lineage stage 1b - trades: the collector's trades of one pool, reconciled with its bars and
aggregated per bar into the pool's QLib store, where the flow features are QLib expressions.

Glue only: the rules live in :mod:`q50_assets.research.trades`; each becomes an asset check. The
checks warn rather than block: a pool whose trades fail one still runs on its bars, but its trade
fields are removed from the store, so its flow features are missing (NaN, counted by qlib_features).
"""

import math

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    MetadataValue,
    Output,
    ResourceParam,
    asset,
)

from q50_assets.assets.partitions import pool_partitions
from q50_assets.research.bars import TIMEFRAME_SECONDS, ValidatedBars, require_safe
from q50_assets.research.trades import TRADE_CHECKS, TRADE_FIELDS, TradeAnalysis, TradeRules, analyse_trades
from q50_assets.resources.database import CollectorDatabase
from q50_assets.resources.qlib_store import QlibStore
from q50_assets.settings import Settings

TRADES_ASSET = "pool_trades"

_CHECK_DESCRIPTIONS = {
    "trade_rows_valid": "Every trades row has an epoch-suffixed id, a buy/sell side and positive volume and amounts.",
    "prices_within_bar_range": "Trade prices (derived from amounts and USD volume) lie within their bar's low-high.",
    "volume_within_bar_volume": "Summed trade volume per bar stays a lower bound of the bar's volume.",
    "clock_shift": "The id's epoch fits the bars unshifted (lags -12..+12 h tried); block_timestamp's shift is named.",
    "trade_coverage": "The collected trades span enough bars and explain enough of their volume for flow features.",
}


def trade_rules(settings: Settings) -> TradeRules:
    t = settings.trades
    return TradeRules(bar_seconds=TIMEFRAME_SECONDS[settings.timeframe],
                      stored_price_decimals=settings.ohlcv.stored_price_decimals,
                      min_volume_coverage=t.min_volume_coverage, min_covered_bars=t.min_covered_bars,
                      flow_features=t.flow_features)


def _meta(value):
    if isinstance(value, (list, dict)):
        return MetadataValue.json(value)
    if isinstance(value, float):
        return MetadataValue.float(value) if math.isfinite(value) else MetadataValue.text("n/a")
    return value


def clock_table_markdown(analysis: TradeAnalysis) -> str:
    """Share of trades priced within their bar, per constant shift of each clock."""
    ids, blocks = analysis.clock["id_epoch"], analysis.clock["block_timestamp"]
    lines = ["| shift (h) | id epoch | block_timestamp |", "|---|---|---|"]
    for (_, a), (_, b) in zip(ids.iterrows(), blocks.iterrows()):
        lines.append(f"| {int(a['lag_hours']):+d} | {a['inside_share']:.2f} | {b['inside_share']:.2f} |")
    return "\n".join(lines)


@asset(
    name=TRADES_ASSET,
    partitions_def=pool_partitions,
    group_name="trades",
    kinds={"sql", "qlib"},
    check_specs=[AssetCheckSpec(name, asset=TRADES_ASSET, blocking=False, description=_CHECK_DESCRIPTIONS[name])
                 for name in TRADE_CHECKS],
    description="The pool's collector trades placed by the id's epoch (block_timestamp is +6 h), priced in the "
    "pool token (from amounts and USD volume), reconciled with the bars and aggregated per bar: trade count, buy "
    "and sell USD, unique wallets, VWAP. Written to the pool's QLib store over the span the trades cover when every "
    "check passes; otherwise removed, so flow features are missing rather than zero.",
)
def pool_trades(
    context: AssetExecutionContext,
    ohlcv_bars: ValidatedBars,
    collector_db: CollectorDatabase,
    qlib_store: QlibStore,
    settings: ResourceParam[Settings],
):
    pool_id = context.partition_key
    bars = require_safe(ohlcv_bars)
    analysis = analyse_trades(pool_id, collector_db.read_trades(pool_id), bars, trade_rules(settings))
    if analysis.usable:
        qlib_store.write_fields(pool_id, analysis.grid, TRADE_FIELDS)
    else:
        qlib_store.clear_fields(pool_id, TRADE_FIELDS)
    coverage = analysis.check("trade_coverage").metadata
    clock = analysis.check("clock_shift").metadata
    yield Output(
        analysis,
        metadata={
            "pool_id": pool_id,
            **analysis.counts,
            "bars_with_trades": len(analysis.per_bar),
            "flow_features": "written" if analysis.usable else "missing",
            "flow_features_reason": analysis.reason,
            "covered_bars": coverage["covered_bars"],
            "volume_share": _meta(coverage["volume_share"]),
            "id_epoch_shift": clock["id_epoch_shift"],
            "block_timestamp_shift": clock["block_timestamp_shift"],
            "clock_shift_table": MetadataValue.md(clock_table_markdown(analysis)),
        },
    )
    for check in analysis.checks:
        yield AssetCheckResult(
            check_name=check.name,
            passed=check.passed,
            severity=AssetCheckSeverity.WARN,
            description=check.description,
            metadata={"pool_id": pool_id, **{k: _meta(v) for k, v in check.metadata.items()}},
        )
