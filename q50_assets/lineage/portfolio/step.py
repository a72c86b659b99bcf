"""The portfolio stage's step, no Dagster: across pools, the latest backtest of each as the
portfolio table (:mod:`q50_assets.lineage.portfolio.portfolio`) and the research report
(:mod:`q50_assets.lineage.portfolio.report`), written through the report port."""

from __future__ import annotations

import pandas as pd

from q50_assets.lineage.backtest.step import Q50
from q50_assets.lineage.common.costs import FallbackReserve
from q50_assets.lineage.common.ports import ProjectTableStore, ReportSink
from q50_assets.lineage.common.uncertainty import BootstrapConfig
from q50_assets.lineage.model.evaluation import net_hit_rate
from q50_assets.lineage.model.step import TrainedQ50Model
from q50_assets.lineage.portfolio.portfolio import (
    comparable_baselines,
    dsr_trials,
    labelled_signals,
    no_trade_summary,
    permutation_summary,
    portfolio_markdown,
    portfolio_table,
    research_report,
    stored_evidence,
    traded_pools,
)
from q50_assets.lineage.portfolio.capacity import CapacityCurve, capacity_curve
from q50_assets.settings import Settings


def portfolio_summary(results: pd.DataFrame, variants: tuple[str, ...]) -> dict:
    """The portfolio across pools from the latest backtest rows of each (q50_backtest_results): the
    table, the comparability problems, the permutation null and the pools where q50 never traded."""
    problems, checked = comparable_baselines(results, variants)
    table = portfolio_table(results, variants)
    permutation = permutation_summary(results) if len(results) else {}
    no_trade = no_trade_summary(results) if len(results) else {"pools": 0}
    return {"table": table, "problems": problems, "pools_checked": checked, "permutation": permutation,
            "no_trade": no_trade, "markdown": portfolio_markdown(table, permutation, no_trade)}


def capacity_step(results: pd.DataFrame, settings: Settings, variant: str = Q50,
                  bootstrap: BootstrapConfig | None = None) -> CapacityCurve | None:
    """The capacity curve (portfolio/capacity.py) of ``variant``'s stored round trips over the pools
    of the report, at the configured fee and impact cap; None without any stored round trip (the
    backtest stores q50's)."""
    if not len(results):
        return None
    _, trips, _ = stored_evidence(results, traded_pools(results))
    if trips is None or not len(trips):
        return None
    return capacity_curve(trips, fee_rate=settings.signals.swap_fee,
                          max_reserve_fraction=settings.nautilus_trader.backtest.max_reserve_fraction, variant=variant,
                          bar_seconds=settings.bar_seconds, config=bootstrap or BootstrapConfig.of(settings))


def report_step(results: pd.DataFrame, model: TrainedQ50Model | None, tables: ProjectTableStore, settings: Settings,
                files: ReportSink, fallback: FallbackReserve | None = None, capacity_variant: str = Q50):
    """The research report over the latest backtests (research/portfolio.py research_report): the
    model's evidence from the model that made the signals, the hit rate of the stored signals net
    of their expected cost (this run's signals only: signals made elsewhere carry no label), and
    the deflated Sharpe counting the configurations tried, the capacity curve of
    ``capacity_variant`` and the reserve assumed where none was observed (``fallback``, as the
    signal and backtest steps compute it). Writes the HTML page; returns (report or None, facts,
    path or None)."""
    trials = dsr_trials(settings)
    bootstrap = BootstrapConfig.of(settings)
    hit_rate = None
    if model is not None and settings.nautilus_trader.strategy_config.signal_source == "qlib" and len(results):
        signals = tables.signal_rows_many(settings.timeframe, sorted(set(results["pool_id"])))
        labelled = labelled_signals(signals, model.result.predictions)
        if len(labelled) and labelled["label"].notna().any():
            hit_rate = net_hit_rate(labelled, cost_column="expected_cost_fraction", time_column="known_at",
                                    bar_seconds=settings.bar_seconds, config=bootstrap)
    capacity = capacity_step(results, settings, capacity_variant, bootstrap)
    report, facts = research_report(results, trials=trials["trials"], bar_seconds=settings.bar_seconds,
                                    bootstrap=bootstrap, model=model.evidence if model is not None else None,
                                    hit_rate=hit_rate, capacity=capacity,
                                    assumed_reserve=fallback.describe() if fallback is not None else "")
    facts["trials_detail"] = trials
    facts["capacity"] = capacity
    facts["fallback"] = fallback
    path = files.write(report) if report is not None else None
    return report, facts, path
