"""Lineage stage 5 - backtest results: per pool, the Q50 strategy in real NautilusTrader engines
beside its yardsticks on the same bars and costs, on the out-of-sample span only; plus a
portfolio summary across pools with the pooled permutation p-value.

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
                                                equity_png, metrics_markdown, nautilus_status, results_rows,
                                                run_pool_stage, variants_for)
from q50_assets.research.bars import TIMEFRAME_SECONDS, ValidatedBars, require_safe
from q50_assets.research.portfolio import (comparable_baselines, no_trade_summary, permutation_summary,
                                           portfolio_markdown, portfolio_table)
from q50_assets.resources.database import CollectorDatabase
from q50_assets.resources.nautilus import NautilusBacktester
from q50_assets.settings import Settings

BACKTEST_ASSET = "backtest_results"
PORTFOLIO_ASSET = "backtest_portfolio"


def backtest_stage_config(settings: Settings, nautilus: NautilusBacktester) -> BacktestStageConfig:
    """The backtest stage's config from the settings and the Nautilus resource."""
    risk = settings.nautilus_trader.risk_management
    bt = settings.nautilus_trader.backtest
    return BacktestStageConfig(
        spec=nautilus.spec(), base_position_size=risk.base_position_size, max_position_size=risk.max_position_size,
        kelly_fraction=bt.kelly_fraction, variance_multiplier=settings.signals.variance_multiplier,
        buy_and_hold_fraction=bt.buy_and_hold_fraction, permutations=bt.permutations,
        permutation_seed=bt.permutation_seed, reserve_sensitivity=tuple(bt.reserve_sensitivity),
        timeframe=settings.timeframe)


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
    description="Per pool: the Q50 strategy in NautilusTrader BacktestEngines (decisions bar by bar from the "
    "signal and regime known at each close, sized and charged by one cost model: fee + constant-product impact "
    "at the pool's liquidity at the time; fills one or more bars later), beside the same decisions filled at "
    "the close, the reserve assumption halved and doubled, buy & hold at full and at q50's own exposure, and "
    "cash; per-bar returns on the full time grid out of sample; a permutation null of q50's timing.",
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

    def skipped(result: PoolBacktest):
        context.log.warning(f"pool {pool_id}: {result.status}: {result.reason}")
        yield Output(result, metadata={"pool_id": pool_id, "status": result.status, "reason": result.reason})
        for name in check_names:
            yield AssetCheckResult(check_name=name, passed=True, metadata={"skipped": result.reason})

    if not nautilus.enabled:
        reason = "nautilus_trader.enabled is false: no backtest ran (signals and regimes are unaffected)"
        yield from skipped(PoolBacktest(pool_id, run_id, "disabled", reason))
        return
    available, reason = nautilus_status()
    if not available:
        yield from skipped(PoolBacktest(pool_id, run_id, "unavailable",
                                        f"{reason} (signals and regimes are unaffected)"))
        return

    bars = require_safe(ohlcv_bars)
    bt = settings.nautilus_trader.backtest
    reserves, reserve_rows_ignored = collector_db.pool_reserves(pool_id, bt.fallback_reserve_usd)
    source = settings.nautilus_trader.strategy_config.signal_source
    loader = None
    if source == "database":  # signals made elsewhere, stored in q50_signals of strategy_config.database_uri
        loader = CollectorDatabase(url=settings.signal_database_url).signal_loader(pool_id, settings.timeframe)
    result = run_pool_stage(pool_id, bars, q50_signals, regime_labels, reserves,
                            backtest_stage_config(settings, nautilus), run_id, signal_loader=loader)
    if result.status != "ok":
        yield from skipped(result)
        return

    bars_ok, bars_details = bars_match_pipeline(result)
    processed_ok = all(o.iterations >= len(bars) and o.backtest_end is not None
                       and o.backtest_end >= bars.index[-1] + bar for o in result.outcomes.values())
    min_cash = {name: float(o.equity["cash"].min()) for name, o in result.outcomes.items()}
    cash_ok = all(v >= 0 for v in min_cash.values())

    written = 0
    if bars_ok and processed_ok and cash_ok:  # only verified results reach the table
        written = collector_db.replace_backtest_results(run_id, pool_id, settings.timeframe, results_rows(result))
    png = equity_png(result)
    m = result.metrics
    perm = result.permutation
    yield Output(
        result,
        metadata={
            "pool_id": pool_id,
            "status": "ok",
            "backtest_run_id": run_id,
            "signal_source": source,
            "oos_start": MetadataValue.text(str(result.oos_start)),
            "oos_grid_bars": len(result.bar_returns),
            **{f"{v}_total_return": MetadataValue.float(float(m.loc[v, "total_return"])) for v in m.index},
            "q50_trades": int(m.loc["q50", "trades"]),
            "q50_turnover": MetadataValue.float(float(m.loc["q50", "turnover"])),
            "q50_mean_holding_bars": MetadataValue.float(float(m.loc["q50", "mean_holding_bars"])),
            "q50_orders_expired": int(m.loc["q50", "orders_expired"]),
            "permutation_p_value": MetadataValue.float(float(perm["p_value"])),
            "permutation_draws": int(perm["draws"]),
            "reserve_fallback_share": MetadataValue.float(float(result.reserve["fallback_share"])),
            "reserve_sources": MetadataValue.json(result.reserve["sources"]),
            "reserve_observations": int(result.reserve["observations"]),
            "reserve_rows_ignored": int(reserve_rows_ignored),
            "fallback_reserve_usd": MetadataValue.float(float(bt.fallback_reserve_usd))
            if bt.fallback_reserve_usd is not None else "none (no impact)",
            "rows_written": written,
            "summary": MetadataValue.md(metrics_markdown(m)),
            "equity_curve": MetadataValue.md(
                f"![growth of 1 USD](data:image/png;base64,{base64.b64encode(png).decode()})"),
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
                       description="Every pool in the table has every variant from one backtest run on the same "
                       "out-of-sample span, finite returns >= -100 %, and a permutation null of >= 1,000 draws."),
    ],
    description="Across pools: the latest backtest of each pool, per variant (q50 with latency fills and with "
    "close fills, the reserve sensitivity, buy & hold at full and matched exposure, cash), out of sample, equal "
    "weight per pool, over the pools where q50 traded (the others reported apart), with the pooled permutation "
    "p-value. Read from q50_backtest_results, so pools blocked upstream simply have no row.",
)
def backtest_portfolio(context: AssetExecutionContext, collector_db: CollectorDatabase,
                       settings: ResourceParam[Settings]):
    results = collector_db.latest_backtest_results(settings.timeframe)
    variants = variants_for(tuple(settings.nautilus_trader.backtest.reserve_sensitivity))
    problems, checked = comparable_baselines(results, variants)
    table = portfolio_table(results, variants)
    permutation = permutation_summary(results) if len(results) else {}
    no_trade = no_trade_summary(results) if len(results) else {"pools": 0}
    yield Output(table, metadata={
        "pools": checked,
        "pools_q50_traded": int(table["pools"].max()) if len(table) else 0,
        "pools_q50_never_traded": int(no_trade["pools"]),
        "pooled_permutation_p_value": MetadataValue.float(float(permutation.get("pooled_p_value", float("nan")))),
        "summary": MetadataValue.md(portfolio_markdown(table, permutation, no_trade)),
    })
    yield AssetCheckResult(check_name="comparable_baselines", passed=not problems, severity=AssetCheckSeverity.ERROR,
                           metadata={"pools_checked": checked, "problems": MetadataValue.json(problems[:50])})
