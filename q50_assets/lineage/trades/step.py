"""Stage 1b - trades: each safe pool's collector trades reconciled with its bars and aggregated
per bar (the fields the flow features read). The rules are :mod:`q50_assets.lineage.trades.rules`.

The trades' checks warn rather than block: a pool whose trades fail one still runs on its bars,
but its trade fields are not stored, so its flow features are missing (NaN), never built on
misplaced trades. A pool blocked upstream stays blocked.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from q50_assets.lineage.trades.rules import TradeAnalysis, TradeRules, analyse_trades
from q50_assets.lineage.common.gate import Blocked
from q50_assets.lineage.common.ports import CollectorSource, FeatureStore
from q50_assets.lineage.ohlcv.rules import ValidatedBars
from q50_assets.lineage.trades.rules import TRADE_FIELDS
from q50_assets.lineage.ohlcv.step import bars_or_blocked
from q50_assets.settings import Settings

STAGE = "pool_trades"


def analyse_pools(raw_by_pool: Mapping[str, pd.DataFrame], bars_by_pool: Mapping[str, pd.DataFrame | Blocked],
                  rules: TradeRules) -> dict[str, TradeAnalysis | Blocked]:
    """Every pool's trade analysis (``raw_by_pool``: collector trades rows per pool; ``bars_by_pool``:
    its complete bars, or the upstream gate)."""
    return {pool_id: (bars if isinstance(bars, Blocked) else analyse_trades(pool_id, raw_by_pool[pool_id], bars, rules))
            for pool_id, bars in bars_by_pool.items()}


def summary(analysis: TradeAnalysis) -> dict:
    """Plain per-pool figures of the stage (metadata in the UI)."""
    coverage = analysis.check("trade_coverage").metadata
    clock = analysis.check("clock_shift").metadata
    return {
        "pool_id": analysis.pool_id,
        **analysis.counts,
        "bars_with_trades": len(analysis.per_bar),
        "flow_features": "written" if analysis.usable else "missing",
        "flow_features_reason": analysis.reason,
        "covered_bars": coverage["covered_bars"],
        "volume_share": coverage["volume_share"],
        "id_epoch_shift": clock["id_epoch_shift"],
        "block_timestamp_shift": clock["block_timestamp_shift"],
    }


def clock_table_markdown(analysis: TradeAnalysis) -> str:
    """Share of trades priced within their bar, per constant shift of each clock."""
    ids, blocks = analysis.clock["id_epoch"], analysis.clock["block_timestamp"]
    lines = ["| shift (h) | id epoch | block_timestamp |", "|---|---|---|"]
    for (_, a), (_, b) in zip(ids.iterrows(), blocks.iterrows()):
        lines.append(f"| {int(a['lag_hours']):+d} | {a['inside_share']:.2f} | {b['inside_share']:.2f} |")
    return "\n".join(lines)


def trades_step(validated: dict[str, ValidatedBars], store: FeatureStore, db: CollectorSource,
                settings: Settings, progress=None) -> dict[str, TradeAnalysis | Blocked]:
    """A batch of pools: the safe pools' trades read in one query and analysed; each pool's trade
    fields written to the store when every check passes, else removed from it. A pool blocked
    upstream stays blocked (the features stage takes it out of the store)."""
    bars = {p: bars_or_blocked(v) for p, v in validated.items()}
    safe = [p for p, b in bars.items() if not isinstance(b, Blocked)]
    raw = db.read_trades_many(safe) if safe else {}
    analyses = analyse_pools(raw, bars, TradeRules.of(settings))
    for pool_id, analysis in analyses.items():
        if isinstance(analysis, Blocked):
            continue
        if analysis.usable:
            store.write_fields(pool_id, analysis.grid, TRADE_FIELDS)
        else:
            store.clear_fields(pool_id, TRADE_FIELDS)
    if progress:
        progress(len(validated))
    return analyses
