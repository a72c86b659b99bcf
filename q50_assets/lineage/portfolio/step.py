"""The portfolio stage's step, no Dagster: across pools, the latest backtest of each as the
portfolio table (:mod:`q50_assets.lineage.portfolio.portfolio`) and the research report
(:mod:`q50_assets.lineage.portfolio.report`), written through the report port."""

from __future__ import annotations

import pandas as pd

from q50_assets.lineage.common.costs import FallbackReserve
from q50_assets.lineage.common.ports import ProjectTableStore, ReportSink
from q50_assets.lineage.common.provenance import model_folds_label, provenance
from q50_assets.lineage.common.uncertainty import BootstrapConfig
from q50_assets.lineage.model.evaluation import net_hit_rate
from q50_assets.lineage.model.step import TrainedQ50Model
from q50_assets.lineage.portfolio.trials import trial_rows
from q50_assets.lineage.portfolio.portfolio import (
    comparable_baselines,
    dsr_trials,
    labelled_signals,
    no_trade_summary,
    permutation_summary,
    portfolio_markdown,
    portfolio_table,
    q50_round_trip_counts,
    research_report,
    rule_tables,
    rules_markdown,
    stored_evidence,
    traded_pools,
)
from q50_assets.settings import Settings


def portfolio_summary(results: pd.DataFrame, variants: tuple[str, ...], bar_seconds: int = 3600) -> dict:
    """The portfolio across pools from the latest backtest rows of each (q50_backtest_results): the
    table (its portfolio figures of the same equal-weight series as the report), the comparability
    problems, the permutation null and the pools where q50 never traded."""
    problems, checked = comparable_baselines(results, variants)
    bar_returns = stored_evidence(results, traded_pools(results))[0] if len(results) else {}
    table = portfolio_table(results, variants, bar_returns=bar_returns, bar_seconds=bar_seconds)
    permutation = permutation_summary(results) if len(results) else {}
    no_trade = no_trade_summary(results) if len(results) else {"pools": 0}
    rules = rule_tables(results, bar_seconds)
    markdown = portfolio_markdown(table, permutation, no_trade)
    if rules:
        markdown += "\n\n" + rules_markdown(rules, results)
    return {"table": table, "problems": problems, "pools_checked": checked, "permutation": permutation,
            "no_trade": no_trade, "rules": rules, "markdown": markdown}


def basket_trials(basket) -> dict:
    """The top-k basket as a trial of the ledger: its net per-bar returns (the forecast basket; its
    volatility yardstick and the zero-cost replays choose nothing from the forecast)."""
    if basket is None or getattr(basket, "bar_returns", None) is None:
        return {}
    from q50_assets.lineage.basket.rules import FORECAST
    from q50_assets.lineage.basket.step import NET, variant_name

    name = variant_name(FORECAST, NET)
    if name not in basket.bar_returns.columns:
        return {}
    pools = len(basket.memberships[FORECAST].members.columns) if FORECAST in basket.memberships else 0
    return {"basket_forecast": (basket.bar_returns[name], pools)}


def report_step(results: pd.DataFrame, model: TrainedQ50Model | None, tables: ProjectTableStore, settings: Settings,
                files: ReportSink, fallback: FallbackReserve | None = None, basket=None, signal_evidence=None,
                run_id: str | None = None):
    """The research report over the latest backtests (research/portfolio.py research_report): the
    model's evidence from the model that made the signals, the hit rate of the stored signals net
    of their expected cost (this run's signals only: signals made elsewhere carry no label), and
    the deflated Sharpe counting the configurations tried, and the top-k basket (``basket``: the
    basket stage's result) beside its yardsticks. This run's trials (one per q50 variant,
    lineage/portfolio/trials.py) are recorded in the ledger first; the DSR then counts every trial
    of the ledger on an overlapping window. Writes the HTML page; returns (report or None, facts,
    path or None). ``signal_evidence``: the signal_evidence stage's result (its own section of the
    report), or None. The capacity curve is of the best rule's round trips (the verdict's), with the
    reserve assumed where none was observed (``fallback``, as the signal and backtest steps compute it)."""
    ledger = None
    if len(results):
        pools = traded_pools(results)
        bar_returns, round_trips, _ = stored_evidence(results, pools)
        rows = trial_rows(bar_returns, settings, round_trips, q50_round_trip_counts(results, list(bar_returns)),
                          portfolios=basket_trials(basket))
        if len(rows):
            tables.record_trials(rows)
            ledger = tables.trials_overlapping(rows["window_start"].min(), rows["window_end"].max())
    trials = dsr_trials(settings, ledger)
    bootstrap = BootstrapConfig.of(settings)
    hit_rate = None
    if model is not None and settings.nautilus_trader.strategy_config.signal_source == "qlib" and len(results):
        signals = tables.signal_rows_many(settings.timeframe, sorted(set(results["pool_id"])))
        labelled = labelled_signals(signals, model.result.predictions)
        if len(labelled) and labelled["label"].notna().any():
            hit_rate = net_hit_rate(labelled, cost_column="expected_cost_fraction", time_column="known_at",
                                    bar_seconds=settings.bar_seconds, config=bootstrap)
    window = ((pd.to_datetime(results["oos_start"], utc=True).min(), pd.to_datetime(results["oos_end"], utc=True).max())
              if len(results) and {"oos_start", "oos_end"} <= set(results.columns) else (None, None))
    made_from = provenance(settings, window=window, model_folds=model_folds_label(model), run_id=run_id)
    report, facts = research_report(results, trials=trials["trials"], bar_seconds=settings.bar_seconds,
                                    bootstrap=bootstrap, model=model.evidence if model is not None else None,
                                    hit_rate=hit_rate, trials_ledger=ledger, basket=basket,
                                    signal_evidence=signal_evidence,
                                    capacity_settings={"fee_rate": settings.signals.swap_fee,
                                                       "max_reserve_fraction":
                                                           settings.nautilus_trader.backtest.max_reserve_fraction},
                                    assumed_reserve=fallback.describe() if fallback is not None else "",
                                    provenance=made_from)
    facts["provenance"] = made_from
    facts["trials_detail"] = trials
    facts["fallback"] = fallback
    path = files.write(report) if report is not None else None
    return report, facts, path
