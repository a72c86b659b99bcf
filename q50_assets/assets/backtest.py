"""Lineage stage 5 - backtest results: per pool, the Q50 strategy in a real NautilusTrader engine
beside two baselines on the same bars and costs (buy & hold; the same targets shuffled in time),
metrics on the out-of-sample span only; plus a portfolio summary across pools.

Glue only: the stage is :mod:`q50_assets.research.backtest_stage`, the portfolio table
:mod:`q50_assets.research.portfolio`.
"""


import base64

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    MetadataValue,
    Output,
    ResourceParam,
    asset,
)

from q50_assets.assets.partitions import pool_partitions
from q50_assets.assets.regimes import REGIMES_ASSET
from q50_assets.assets.signals import SIGNALS_ASSET
from q50_assets.research.backtest_stage import (BacktestStageConfig, PoolBacktest, bars_match_pipeline,
                                                equity_png, metrics_markdown, run_variants)
from q50_assets.research.bars import TIMEFRAME_SECONDS, ValidatedBars, require_safe
from q50_assets.research.portfolio import comparable_baselines, portfolio_markdown, portfolio_table
from q50_assets.resources.database import CollectorDatabase
from q50_assets.resources.nautilus import NautilusBacktester
from q50_assets.settings import Settings

BACKTEST_ASSET = "backtest_results"
PORTFOLIO_ASSET = "backtest_portfolio"


def backtest_stage_config(settings: Settings, nautilus: NautilusBacktester) -> BacktestStageConfig:
    """The backtest stage's config from the settings and the Nautilus resource."""
    risk = settings.nautilus_trader.risk_management
    bt = settings.nautilus_trader.backtest
    return BacktestStageConfig(spec=nautilus.spec(None), base_position_size=risk.base_position_size,
                               max_position_size=risk.max_position_size, kelly_fraction=bt.kelly_fraction,
                               shuffle_seed=bt.shuffle_seed, buy_and_hold_fraction=bt.buy_and_hold_fraction)


@asset(
    name=BACKTEST_ASSET,
    partitions_def=pool_partitions,
    group_name="backtest",
    kinds={"nautilustrader"},
    check_specs=[
        AssetCheckSpec("bars_match_pipeline", asset=BACKTEST_ASSET, blocking=True,
                       description="The bars Nautilus consumed equal the pipeline's OHLCV for the pool: count, "
                       "first and last bar close, sum of closes (every variant)."),
        AssetCheckSpec("engine_processed_every_bar", asset=BACKTEST_ASSET, blocking=True,
                       description="Each engine's iterations and last timestamp cover every bar given "
                       "(Nautilus can stop early without raising)."),
        AssetCheckSpec("cash_never_negative", asset=BACKTEST_ASSET, blocking=True,
                       description="USD cash after every bar's trade is >= 0 in every variant."),
    ],
    description="Per pool: the Q50 strategy in a NautilusTrader BacktestEngine (targets from the signal and "
    "regime known at each bar's close), beside buy & hold and the same targets shuffled in time, on the same "
    "bars, fee and AMM price impact. Metrics on the out-of-sample span only; equity picture and table in metadata.",
)
def backtest_results(
    context: AssetExecutionContext,
    ohlcv_bars: ValidatedBars,
    q50_signals: pd.DataFrame,
    regime_labels: pd.DataFrame,
    nautilus: NautilusBacktester,
    collector_db: CollectorDatabase,
    settings: ResourceParam[Settings],
):
    pool_id = context.partition_key
    run_id = context.run.run_id
    bar = pd.Timedelta(seconds=TIMEFRAME_SECONDS[settings.timeframe])
    check_names = ("bars_match_pipeline", "engine_processed_every_bar", "cash_never_negative")

    if not nautilus.enabled:
        reason = "nautilus_trader.enabled is false: no backtest ran (signals and regimes are unaffected)"
        context.log.warning(f"pool {pool_id}: {reason}")
        yield Output(PoolBacktest(pool_id, run_id, "disabled", reason),
                     metadata={"pool_id": pool_id, "status": "disabled", "reason": reason})
        for name in check_names:
            yield AssetCheckResult(check_name=name, passed=True, metadata={"skipped": reason})
        return

    bars = require_safe(ohlcv_bars)
    reserve_usd = collector_db.pool_reserve_usd(pool_id)
    reserve_source = "collector"
    if reserve_usd is None:
        reserve_usd = settings.nautilus_trader.backtest.fallback_reserve_usd
        reserve_source = "fallback_reserve_usd" if reserve_usd is not None else "none (no impact)"
    result = run_variants(pool_id, bars, q50_signals, regime_labels, reserve_usd,
                          backtest_stage_config(settings, nautilus), run_id)
    if result.status != "ok":
        yield Output(result, metadata={"pool_id": pool_id, "status": result.status, "reason": result.reason})
        for name in check_names:
            yield AssetCheckResult(check_name=name, passed=True, metadata={"skipped": result.reason})
        return

    bars_ok, bars_details = bars_match_pipeline(result)
    processed_ok = all(o.iterations >= len(bars) and o.backtest_end is not None
                       and o.backtest_end >= bars.index[-1] + bar for o in result.outcomes.values())
    min_cash = {name: float(o.equity["cash"].min()) for name, o in result.outcomes.items()}
    cash_ok = all(v >= 0 for v in min_cash.values())

    written = 0
    if bars_ok and processed_ok and cash_ok:  # only verified results reach the table
        written = collector_db.replace_backtest_results(run_id, pool_id, settings.timeframe,
                                                         result.metrics.reset_index())
    png = equity_png(result)
    q50 = result.metrics.loc["q50"]
    yield Output(
        result,
        metadata={
            "pool_id": pool_id,
            "status": "ok",
            "backtest_run_id": run_id,
            "oos_start": MetadataValue.text(str(result.oos_start)),
            "oos_bars": int((bars.index + bar >= result.oos_start).sum()),
            "q50_total_return": MetadataValue.float(float(q50["total_return"])),
            "buy_and_hold_total_return": MetadataValue.float(float(result.metrics.loc["buy_and_hold", "total_return"])),
            "shuffled_total_return": MetadataValue.float(float(result.metrics.loc["shuffled", "total_return"])),
            "q50_trades": int(q50["trades"]),
            "impact_applied": result.outcomes["q50"].impact_applied,
            "reserve_usd": MetadataValue.float(float(reserve_usd)) if reserve_usd is not None else "none",
            "reserve_source": reserve_source,
            "rows_written": written,
            "summary": MetadataValue.md(metrics_markdown(result.metrics)),
            "equity_curve": MetadataValue.md(
                f"![equity curve](data:image/png;base64,{base64.b64encode(png).decode()})"),
        },
    )
    yield AssetCheckResult(check_name="bars_match_pipeline", passed=bars_ok, severity=AssetCheckSeverity.ERROR,
                           metadata={"pool_id": pool_id, "bars": MetadataValue.json(bars_details)})
    yield AssetCheckResult(
        check_name="engine_processed_every_bar", passed=processed_ok, severity=AssetCheckSeverity.ERROR,
        metadata={"pool_id": pool_id, "bars_given": len(bars),
                  "iterations": MetadataValue.json({n: o.iterations for n, o in result.outcomes.items()})})
    yield AssetCheckResult(check_name="cash_never_negative", passed=cash_ok, severity=AssetCheckSeverity.ERROR,
                           metadata={"pool_id": pool_id, "min_cash_usd": MetadataValue.json(min_cash)})


@asset(
    name=PORTFOLIO_ASSET,
    deps=[AssetKey(BACKTEST_ASSET)],
    group_name="backtest",
    kinds={"pandas"},
    check_specs=[
        AssetCheckSpec("comparable_baselines", asset=PORTFOLIO_ASSET, blocking=True,
                       description="Every pool in the table has q50, buy & hold and shuffled results from one "
                       "backtest run on the same out-of-sample span, with finite returns >= -100 %."),
    ],
    description="Across pools: the latest backtest of each pool, per variant (q50, buy & hold, shuffled), "
    "out of sample, equal weight per pool. Read from q50_backtest_results, so pools blocked upstream "
    "simply have no row.",
)
def backtest_portfolio(context: AssetExecutionContext, collector_db: CollectorDatabase,
                       settings: ResourceParam[Settings]):
    results = collector_db.latest_backtest_results(settings.timeframe)
    problems, checked = comparable_baselines(results)
    table = portfolio_table(results)
    yield Output(table, metadata={"pools": checked, "summary": MetadataValue.md(portfolio_markdown(table))})
    yield AssetCheckResult(check_name="comparable_baselines", passed=not problems, severity=AssetCheckSeverity.ERROR,
                           metadata={"pools_checked": checked, "problems": MetadataValue.json(problems[:50])})
