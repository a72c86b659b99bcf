"""Lineage stage 6b - the top-k basket across pools: the forecast's top pools each bar beside the
same basket chosen by past volatility alone and buy & hold, through NautilusTrader, gross and net.

Glue only: the rules are :mod:`q50_assets.lineage.basket.rules`, the step
:mod:`q50_assets.lineage.basket.step`, the table and picture :mod:`q50_assets.lineage.portfolio.report`.
"""

import base64

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

from q50_assets.lineage.basket.rules import FORECAST, VOLATILITY
from q50_assets.lineage.basket.step import STAGE, BasketResult, basket_step, variant_name
from q50_assets.lineage.common.conditions import once_settled_after
from q50_assets.lineage.common.ports import CollectorSource
from q50_assets.lineage.ohlcv.asset import OHLCV_ASSET
from q50_assets.lineage.common.markdown import markdown_table
from q50_assets.lineage.portfolio.report import basket_display, basket_png
from q50_assets.lineage.signals.asset import SIGNALS_ASSET
from q50_assets.lineage.common.provenance import provenance
from q50_assets.settings import Settings

BASKET_ASSET = STAGE


def basket_metadata(result: BasketResult) -> dict:
    """Headline numbers (floats, rounded, units in the names), the table and the picture."""
    meta = {"status": result.status, "candidate_rows": result.candidate_rows,
            "not_candidates": MetadataValue.json(result.not_candidates),
            "pools_not_candidates": len(result.blocked),
            "top_k": result.config.top_k, "rebalance_bars": result.config.rebalance_bars,
            "cost_filter": result.config.cost_filter,
            "capital_usd": MetadataValue.float(round(result.config.basket_capital_usd, 2)),
            "seconds": MetadataValue.float(round(result.seconds, 2))}
    if result.reason:
        meta["reason"] = result.reason
    if result.metrics is None:
        return meta
    meta["span"] = MetadataValue.text(f"{result.span_start} to {result.span_end}")
    meta["buy_and_hold_fraction"] = MetadataValue.float(round(result.matched_exposure, 4))
    for name, row in result.metrics.iterrows():
        key = str(name).replace(" ", "_")
        meta[f"{key}_total_return_pct"] = MetadataValue.float(round(100 * float(row["total_return"]), 3))
        for col in ("mean_bar_return", "mean_bar_return_low", "mean_bar_return_high"):
            meta[f"{key}_{col}_bp"] = MetadataValue.float(round(1e4 * float(row[col]), 3))
        meta[f"{key}_sharpe"] = MetadataValue.float(round(float(row["sharpe"]), 3))
        meta[f"{key}_cost_usd"] = MetadataValue.float(round(float(row["cost_usd"]), 2))
    meta["table"] = MetadataValue.md(markdown_table(basket_display(result.metrics)))
    png = basket_png(result.bar_returns)
    meta["picture"] = MetadataValue.md(f"![basket](data:image/png;base64,{base64.b64encode(png).decode()})")
    return meta


@asset(
    name=BASKET_ASSET,
    # Every pool's validated bars and signals: a cross-section needs all of them at each bar.
    ins={"ohlcv_bars": AssetIn(OHLCV_ASSET, partition_mapping=AllPartitionMapping()),
         "q50_signals": AssetIn(SIGNALS_ASSET, partition_mapping=AllPartitionMapping(),
                                input_manager_key="q50_tables")},
    group_name="backtest",
    kinds={"nautilustrader", "pandas"},
    automation_condition=once_settled_after(SIGNALS_ASSET),
    check_specs=[
        AssetCheckSpec("basket_held_enough_bars", asset=BASKET_ASSET, blocking=False,
                       description="The forecast basket and its volatility yardstick each held a pool on at least "
                       "basket.min_held_bars bars of the span (fewer: the comparison says little)."),
    ],
    description="Across pools: every basket.rebalance_bars bars the top basket.top_k pools by the forecast's "
    "E[r] = 0.3 q10 + 0.4 q50 + 0.3 q90 among those with a signal known at the bar (optionally only where E[r] "
    "over the holding clears the round trip), beside the same basket ranked by past vol_risk alone (no forecast) "
    "and equal-weight buy & hold of every candidate pool; each pool in its own NautilusTrader engine of "
    "capital / k (next-bar fills, fee + AMM impact at its liquidity, volume cap), gross and net; each slot weighs "
    "1/k and the basket compounds; intervals by block bootstrap.",
)
def basket_backtest(context: AssetExecutionContext, ohlcv_bars: dict, q50_signals: dict,
                    collector: ResourceParam[CollectorSource], settings: ResourceParam[Settings]):
    result = basket_step(ohlcv_bars, q50_signals, collector, settings, context.run.run_id)
    if result.status != "ok":
        context.log.warning(f"basket: {result.status}: {result.reason}")
    made_from = provenance(settings, window=(result.span_start, result.span_end), run_id=context.run.run_id)
    yield Output(result, metadata={**basket_metadata(result), **{f"made_from_{k}": v for k, v in made_from.items()}})
    need = settings.basket.min_held_bars
    held = ({b: int(result.metrics.loc[variant_name(b, "net"), "bars_held"]) for b in (FORECAST, VOLATILITY)}
            if result.metrics is not None else {FORECAST: 0, VOLATILITY: 0})
    yield AssetCheckResult(check_name="basket_held_enough_bars", passed=all(v >= need for v in held.values()),
                           severity=AssetCheckSeverity.WARN,
                           metadata={"bars_held": MetadataValue.json(held), "min_held_bars": need,
                                     "status": result.status})
