"""Lineage stage 7 - the portfolio: across pools, the latest backtest of each per variant, with the
pooled permutation p-value and the research report.

Glue only: the table and the report are :mod:`q50_assets.lineage.portfolio.portfolio` and
:mod:`q50_assets.lineage.portfolio.report`.
"""

import pandas as pd
from dagster import (
    ResourceParam,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    MetadataValue,
    Output,
    asset,
)

from q50_assets.lineage.backtest.asset import BACKTEST_ASSET
from q50_assets.lineage.backtest.step import Q50, RULES
from q50_assets.lineage.basket.asset import BASKET_ASSET
from q50_assets.lineage.basket.step import BasketResult
from q50_assets.lineage.common.conditions import once_settled_after
from q50_assets.lineage.model.asset import MODEL_ASSET
from q50_assets.lineage.signal_evidence.asset import EVIDENCE_ASSET
from q50_assets.lineage.model.step import TrainedQ50Model
from q50_assets.lineage.portfolio.report import headline_markdown, markdown_with_pictures
from q50_assets.lineage.common.batch import fallback_metadata
from q50_assets.lineage.common.costs import NoReserveObservations
from q50_assets.lineage.common.ports import CollectorSource, ProjectTableStore, ReportSink
from q50_assets.lineage.portfolio.report import capacity_markdown
from q50_assets.lineage.signals.step import reserve_assumption
from q50_assets.lineage.backtest.step import BacktestStageConfig
from q50_assets.settings import Settings
from q50_assets.lineage.portfolio.step import portfolio_summary, report_step

PORTFOLIO_ASSET = "backtest_portfolio"


def _report_metadata(report, facts: dict, path) -> dict:
    """The report in the asset's metadata: the whole page (markdown with its pictures), where its
    HTML file is, the trial count, and q50's headline numbers as floats (plotted across runs)."""
    meta = {**{f"made_from_{k}": str(v) for k, v in (facts.get("provenance") or {}).items()},
            "dsr_trials": int(facts["trials"]), "dsr_trials_detail": MetadataValue.json(facts["trials_detail"]),
            **fallback_metadata(facts.get("fallback")),
            "pools_in_report": int(facts["pools_in_report"]),
            "pools_without_stored_evidence": MetadataValue.json(facts["pools_without_stored_evidence"])}
    if report is None:
        meta["report"] = MetadataValue.md("No pool where q50 traded: nothing to report.")
        return meta
    meta["report"] = MetadataValue.md(markdown_with_pictures(report))
    meta["headline"] = MetadataValue.md(headline_markdown(report))
    if facts.get("verdict_markdown"):
        meta["verdict"] = MetadataValue.md(facts["verdict_markdown"])
    verdict = facts.get("verdict") or {}
    if verdict:
        meta["verdict_best_rule"] = str(verdict.get("best_rule"))
        for key in ("signal_spread_per_bar", "drift_per_bar", "vol_alone_spread", "timing_spread", "breakeven_per_side",
                    "cost_per_side", "best_mean_bar_net", "best_low", "best_high"):
            if key in verdict:  # returns per bar and costs per side, in basis points
                meta[f"verdict_{key}_bp"] = MetadataValue.float(round(float(verdict[key]) * 1e4, 2))
        for key in ("null_p_spread", "best_p_value", "best_dsr"):
            if key in verdict:
                meta[f"verdict_{key}"] = MetadataValue.float(round(float(verdict[key]), 4))
    meta["report_html"] = MetadataValue.path(str(path))
    capacity = facts.get("capacity")
    if capacity is not None:
        meta["capacity"] = MetadataValue.md(f"{capacity.variant}, {capacity.trips} round trips: net edge per round "
                                            "trip by trade size and reserve multiplier\n\n"
                                            + capacity_markdown(capacity))
    headline = report.tables["headline"]
    for (sample, variant), row in headline.iterrows():
        if variant not in (Q50, "buy_and_hold_matched") or sample != "all pools":
            continue
        for column in ("mean_bar_return", "mean_bar_return_low", "mean_bar_return_high", "sharpe", "sharpe_low",
                       "sharpe_high", "hit_rate", "psr", "dsr", "round_trips", "psr_n", "psr_n_effective"):
            meta[f"{variant}_{column}"] = MetadataValue.float(float(row[column]))
    return meta


def _rule_metadata(rules: dict) -> dict:
    """Per rule, over the pools where it traded: pools, the equal-weight portfolio's net and gross
    return, the mean cost drag per pool (numbers: plotted across runs)."""
    meta = {}
    for rule, table in rules.items():
        if table.empty:
            meta[f"{rule}_pools_traded"] = 0
            continue
        gross = RULES[rule][0]
        meta[f"{rule}_pools_traded"] = int(table.loc[rule, "pools"])
        for name, value in (("portfolio_return", table.loc[rule, "portfolio_return"]),
                            ("gross_portfolio_return", table.loc[gross, "portfolio_return"]),
                            ("mean_cost_drag", table.loc[rule, "mean_cost_drag"])):
            meta[f"{rule}_{name}"] = MetadataValue.float(float(value))
    return meta


@asset(
    name=PORTFOLIO_ASSET,
    ins={"backtest_results": AssetIn(BACKTEST_ASSET, input_manager_key="q50_tables"),
         "q50_model": AssetIn(MODEL_ASSET), "basket_backtest": AssetIn(BASKET_ASSET),
         # What the signal earns before any rule: its own section of the report.
         "signal_evidence": AssetIn(EVIDENCE_ASSET)},
    group_name="backtest",
    kinds={"pandas"},
    automation_condition=once_settled_after(BACKTEST_ASSET),
    check_specs=[
        AssetCheckSpec("comparable_baselines", asset=PORTFOLIO_ASSET, blocking=True,
                       description="Every pool in the table has every variant from one backtest run on the same "
                       "out-of-sample span, finite returns >= -100 %, and a permutation null of >= 1,000 draws."),
    ],
    description="Across pools: the latest backtest of each pool, per variant (q50 with latency fills and with "
    "close fills, the reserve sensitivity, buy & hold at full and matched exposure, cash), out of sample, equal "
    "weight per pool, over the pools where q50 traded (the others reported apart), with the pooled permutation "
    "p-value. Read from q50_backtest_results, so pools blocked upstream simply have no row. Metadata: the research "
    "report (headline with block-bootstrap intervals, PSR and deflated Sharpe, equity curves, the permutation null, "
    "the model's skill and reliability, the hit rate net of cost, where the edge lives, the top-k basket "
    "beside the same basket by past volatility and buy & hold), also written as an HTML "
    "page under the data dir.",
)
def backtest_portfolio(context: AssetExecutionContext, backtest_results: dict, q50_model: TrainedQ50Model,
                       basket_backtest: BasketResult, signal_evidence, settings: ResourceParam[Settings],
                       project_tables: ResourceParam[ProjectTableStore],
                       report_files: ResourceParam[ReportSink], collector: ResourceParam[CollectorSource]):
    frames = [frame.reset_index() for frame in backtest_results.values() if len(frame)]
    results = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["pool_id", "variant", "total_return", "oos_start", "oos_end", "bars", "trades"])
    summary = portfolio_summary(results, BacktestStageConfig.of(settings).variants, settings.bar_seconds)
    table, permutation, no_trade = summary["table"], summary["permutation"], summary["no_trade"]
    try:  # what the backtests assumed where the collector observed no reserve (the same rule)
        fallback = reserve_assumption(collector, settings)
    except NoReserveObservations:
        fallback = None
    report, facts, path = report_step(results, q50_model, project_tables, settings, report_files, fallback,
                                      basket=basket_backtest, signal_evidence=signal_evidence,
                                      run_id=context.run.run_id)
    if path is not None:
        context.log.info(f"research report: {path}")
    yield Output(table, metadata={
        "pools": summary["pools_checked"],
        "pools_q50_traded": int(table["pools"].max()) if len(table) else 0,
        "pools_q50_never_traded": int(no_trade["pools"]),
        "pooled_permutation_p_value": MetadataValue.float(float(permutation.get("pooled_p_value", float("nan")))),
        **_rule_metadata(summary["rules"]),
        "summary": MetadataValue.md(summary["markdown"]),
        **_report_metadata(report, facts, path),
    })
    yield AssetCheckResult(check_name="comparable_baselines", passed=not summary["problems"],
                           severity=AssetCheckSeverity.ERROR,
                           metadata={"pools_checked": summary["pools_checked"],
                                     "problems": MetadataValue.json(summary["problems"][:50])})
