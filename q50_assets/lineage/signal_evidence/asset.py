"""Lineage stage - signal evidence: what the Q50 forecast earns before any rule, ranked across
pools bar by bar (quantile returns by horizon, rank IC decay, turnover and breakeven cost, a
signal-level null, the volatility and timing decomposition), with intervals.

Glue only: the step is :mod:`q50_assets.lineage.signal_evidence.step`, every definition
:mod:`q50_assets.lineage.signal_evidence.rules`.
"""

import math

from dagster import (
    AllPartitionMapping,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    MetadataValue,
    Output,
    ResourceParam,
    asset,
)

from q50_assets.lineage.common.conditions import once_settled_after
from q50_assets.lineage.ohlcv.asset import OHLCV_ASSET
from q50_assets.lineage.common.markdown import markdown_table
from q50_assets.lineage.signal_evidence.rules import evidence_markdown
from q50_assets.lineage.signal_evidence.step import STAGE, evidence_step
from q50_assets.lineage.signals.asset import SIGNALS_ASSET
from q50_assets.lineage.common.provenance import provenance
from q50_assets.settings import Settings

EVIDENCE_ASSET = STAGE
MIN_BARS = 48  # fewer bars with enough pools than two days of hours say nothing about a ranking


def _f(v: float, digits: int) -> MetadataValue:
    return MetadataValue.float(round(float(v), digits) if v is not None and math.isfinite(v) else float("nan"))


@asset(
    name=EVIDENCE_ASSET,
    ins={"ohlcv_bars": AssetIn(OHLCV_ASSET, partition_mapping=AllPartitionMapping()),
         "q50_signals": AssetIn(SIGNALS_ASSET, partition_mapping=AllPartitionMapping(), input_manager_key="q50_tables")},
    group_name="signals",
    kinds={"pandas"},
    automation_condition=once_settled_after(SIGNALS_ASSET),
    check_specs=[
        AssetCheckSpec("enough_bars", asset=EVIDENCE_ASSET, blocking=False,
                       description=f"At least {MIN_BARS} bars have signal_evidence.min_pools pools with a signal and a "
                       "forward return: fewer say nothing about a cross-sectional ranking."),
        AssetCheckSpec("signal_beats_null", asset=EVIDENCE_ASSET, blocking=False,
                       description="E[r]'s top-minus-all spread at the headline horizon beats the signal-level null "
                       "(p < 0.05). A failure is a finding, not a fault: the signal earns nothing a random timing "
                       "would not."),
    ],
    description="Across pools, per bar: the Q50 forecast (E[r] and q50) in quantile groups, gross forward returns "
    "from the fill bar over several horizons, top-minus-all and top-minus-bottom spreads, rank IC decay, top-group "
    "turnover and the breakeven cost per side beside the cost charged, a signal-level null (circular shifts per "
    "pool) and the decomposition (market drift, volatility-neutral, timing, width and past volatility alone), each "
    "with a block-bootstrap interval. Before any trading rule.",
)
def signal_evidence(context: AssetExecutionContext, ohlcv_bars: dict, q50_signals: dict,
                    settings: ResourceParam[Settings]):
    result = evidence_step(ohlcv_bars, q50_signals, settings)
    ev, s = result.evidence, result.evidence.summary
    meta = {"pools_used": result.pools_used, "pools_left_out": len(result.pools_left_out),
            "pools_left_out_why": MetadataValue.json(dict(list(result.pools_left_out.items())[:50])),
            "bars_with_min_pools": s["bars_with_min_pools"], "pool_bars": s["pool_bars"],
            "seconds": round(result.seconds, 2),
            "cost_charged_bp_per_side": _f(1e4 * s["cost_per_side"], 1)}
    if "er_ic" in s:
        meta.update({
            "er_rank_ic": _f(s["er_ic"], 4),
            "er_top_minus_all_bp": _f(1e4 * s["er_top_minus_all"], 1),
            "er_top_minus_all_low_bp": _f(1e4 * s["er_top_minus_all_low"], 1),
            "er_top_minus_all_high_bp": _f(1e4 * s["er_top_minus_all_high"], 1),
            "market_drift_bp_per_bar": _f(1e4 * s["drift_per_bar"], 1),
            "er_top_turnover": _f(s["er_turnover"], 3),
            "er_breakeven_bp_per_side": _f(1e4 * s["er_breakeven_per_side"], 1),
            "breakeven_bp_per_side_min": _f(1e4 * s["breakeven_min"], 1),
            "breakeven_bp_per_side_max": _f(1e4 * s["breakeven_max"], 1),
            "best_horizon_bars": s["best_horizon"],
            "null_p_er_top_minus_all": _f(s["null_p_er_top_minus_all"], 4),
            "null_p_er_ic": _f(s["null_p_er_ic"], 4),
            "null_p_q50_top_minus_all": _f(s["null_p_q50_top_minus_all"], 4),
        })
    meta["evidence"] = MetadataValue.md(evidence_markdown(ev, result.config, result.pngs))
    meta["exclusions"] = MetadataValue.md(markdown_table(ev.exclusions))
    meta.update({f"made_from_{k}": v for k, v in provenance(settings, run_id=context.run.run_id).items()})
    yield Output(result, metadata=meta)
    bars = s["bars_with_min_pools"]
    yield AssetCheckResult(check_name="enough_bars", passed=bars >= MIN_BARS, severity=AssetCheckSeverity.WARN,
                           metadata={"bars_with_min_pools": bars, "required": MIN_BARS,
                                     "min_pools": result.config.min_pools})
    p = s.get("null_p_er_top_minus_all", float("nan"))
    yield AssetCheckResult(check_name="signal_beats_null", passed=bool(p < 0.05), severity=AssetCheckSeverity.WARN,
                           metadata={"p_value": _f(p, 4), "draws": result.config.null_draws})
