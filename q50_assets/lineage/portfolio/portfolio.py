"""Across pools: the portfolio table of the latest backtest of each pool, the pooled permutation
p-value, and the check that the baselines are comparable. Pure pandas over the rows of
``q50_backtest_results`` (one per pool and variant, research/backtest_stage.py).

One weighting across pools, the same as the research report's headline, Sharpe and equity curves:
the equal-weight portfolio of the pools present at each bar
(:func:`q50_assets.lineage.common.uncertainty.equal_weight_portfolio`). The table's portfolio
return, Sharpe and drawdown are of that series; the median pool's return and Sharpe sit beside
them as a description of the spread across pools (not another portfolio). The table covers the
SAME pools for every variant: the pools where q50 traded at least once.
Pools where q50 never traded are reported apart (count, and what buy & hold did there), not
dropped from some means and kept in others.

Each trading rule (q50, q50_horizon) also gets its own table over the pools where IT traded: the
rule after costs, the same decisions at zero cost (``cost_drag`` = gross - net return: what costs
took), buy & hold at the rule's own mean exposure and in full, and cash.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from q50_assets.lineage.common.markdown import markdown_table
from q50_assets.lineage.backtest.step import (BUY_AND_HOLD, CASH, GROSS_VARIANTS, Q50, RULES, bar_returns_from_record,
                                              round_trips_from_records, variants_for)
from q50_assets.lineage.backtest.permutation import pooled_p_value
from q50_assets.lineage.common.uncertainty import equal_weight_portfolio
from q50_assets.lineage.portfolio.report import PermutationNull, Report, ReportInputs, render_report
from q50_assets.settings import BacktestSettings

MIN_PERMUTATIONS = 1000


def _null(value) -> np.ndarray:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return np.array([])
    if isinstance(value, str):
        value = json.loads(value)
    return np.asarray(value, dtype="float64")


def traded_pools(results: pd.DataFrame, rule: str = Q50) -> list[str]:
    """Pools where ``rule`` (default q50) traded at least once."""
    rows = results[results["variant"] == rule]
    return sorted(rows.loc[rows["trades"].fillna(0) > 0, "pool_id"])


def _cost_drag(wide: pd.DataFrame, rule: str) -> pd.Series:
    """Per pool, what costs took from ``rule``: its gross variant's total return minus its own."""
    gross = RULES[rule][0]
    if rule not in wide.columns or gross not in wide.columns:
        return pd.Series(dtype="float64")
    return (wide[gross] - wide[rule]).dropna()


def portfolio_figures(bar_returns: dict[str, pd.DataFrame], bar_seconds: int = 3600) -> pd.DataFrame:
    """Per variant, of the equal-weight portfolio of the pools present at each bar (the report's
    series): compounded return, annualised Sharpe (mean / std ddof 1 x sqrt(bars per year), as the
    headline's) and max drawdown; and how many pools it covers."""
    columns = ["portfolio_pools", "portfolio_return", "portfolio_sharpe", "portfolio_max_drawdown"]
    if not bar_returns:
        return pd.DataFrame(columns=columns, dtype="float64")
    portfolio = equal_weight_portfolio(bar_returns)
    bars_per_year = 365 * 24 * 3600 / bar_seconds
    rows = {}
    for variant in portfolio.columns:
        p = portfolio[variant].to_numpy(dtype=np.float64)
        equity = np.cumprod(1.0 + p)
        sd = p.std(ddof=1) if len(p) > 1 else np.nan
        rows[variant] = {"portfolio_pools": len(bar_returns), "portfolio_return": float(equity[-1] - 1.0),
                         "portfolio_sharpe": float(p.mean() / sd * np.sqrt(bars_per_year)) if sd > 0 else np.nan,
                         "portfolio_max_drawdown": float(np.max(1.0 - equity / np.maximum.accumulate(
                             np.r_[1.0, equity])[1:]))}
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns)


def portfolio_table(results: pd.DataFrame, variants: tuple[str, ...] | None = None, rule: str = Q50,
                    bar_returns: dict[str, pd.DataFrame] | None = None, bar_seconds: int = 3600) -> pd.DataFrame:
    """Per variant over the pools where ``rule`` (default q50) traded: pools; the equal-weight
    portfolio's return, Sharpe and max drawdown (:func:`portfolio_figures` of ``bar_returns``, the
    pools' stored per-bar returns: NaN without them); the median pool's total return and Sharpe;
    the mean cost drag (rules' rows); trades, fees, impact; mean exposure, position, turnover and
    holding time per pool; and in how many of those pools the rule's return beats the variant's
    (``q50_beats_this``)."""
    if results.empty:
        return pd.DataFrame()
    variants = variants or tuple(v for v in variants_for(BacktestSettings().reserve_sensitivity)
                                 if v in set(results["variant"]))
    pools = traded_pools(results, rule)
    rows = results[results["pool_id"].isin(pools)]
    if rows.empty:
        return pd.DataFrame()
    by_variant = rows.groupby("variant")
    table = pd.DataFrame({
        "pools": by_variant["pool_id"].nunique(),
        "median_return": by_variant["total_return"].median(),
        "median_sharpe": by_variant["sharpe"].median(),
        "trades": by_variant["trades"].sum(),
        "fees_paid": by_variant["fees_paid"].sum(),
        "impact_paid": by_variant["impact_paid"].sum(),
        "mean_exposure": by_variant["exposure"].mean(),
        "mean_position": by_variant["mean_position"].mean(),
        "mean_turnover": by_variant["turnover"].mean(),
        "mean_holding_bars": by_variant["mean_holding_bars"].mean(),
    })
    figures = portfolio_figures({p: f for p, f in (bar_returns or {}).items() if p in set(pools)}, bar_seconds)
    table = figures.reindex(table.index).join(table)
    table["portfolio_pools"] = table["portfolio_pools"].fillna(0).astype(int)
    wide = rows.pivot_table(index="pool_id", columns="variant", values="total_return")
    table["mean_cost_drag"] = [_cost_drag(wide, v).mean() if v in RULES else np.nan for v in table.index]
    if rule in wide.columns:
        table["q50_beats_this"] = [int((wide[rule] > wide[v]).sum()) if v != rule and v in wide.columns else np.nan
                                   for v in table.index]
    return table.reindex([v for v in variants if v in table.index])


def rule_table(results: pd.DataFrame, rule: str, bar_seconds: int = 3600) -> pd.DataFrame:
    """One rule over the pools where it traded: the rule, its decisions at zero cost, buy & hold at
    its mean exposure and in full, cash (:func:`portfolio_table`'s columns, same pools per row: the
    equal-weight portfolio of those pools, from their stored per-bar returns), with the mean and
    median cost drag per pool on the rule's row."""
    if results.empty or rule not in RULES:
        return pd.DataFrame()
    gross, matched = RULES[rule]
    bar_returns = stored_evidence(results, traded_pools(results, rule))[0]
    table = portfolio_table(results, (rule, gross, matched, BUY_AND_HOLD, CASH), rule=rule,
                            bar_returns=bar_returns, bar_seconds=bar_seconds)
    if table.empty:
        return table
    table = table.rename(columns={"q50_beats_this": "rule_beats_this"})
    rows = results[results["pool_id"].isin(traded_pools(results, rule))]
    drag = _cost_drag(rows.pivot_table(index="pool_id", columns="variant", values="total_return"), rule)
    table["median_cost_drag"] = np.nan
    table.loc[rule, "median_cost_drag"] = drag.median() if len(drag) else np.nan
    return table


def rule_tables(results: pd.DataFrame, bar_seconds: int = 3600) -> dict[str, pd.DataFrame]:
    """:func:`rule_table` of every rule present in ``results``."""
    present = set(results["variant"]) if len(results) else set()
    return {rule: rule_table(results, rule, bar_seconds) for rule in RULES if rule in present}


def rules_markdown(tables: dict[str, pd.DataFrame], results: pd.DataFrame | None = None) -> str:
    """Each rule gross and net beside buy & hold at its exposure, on the pools where it traded."""
    lines = ["Each rule on the pools where it traded: after costs, the same decisions at zero cost, buy & hold at "
             "the rule's mean exposure and in full, cash. Portfolio = the equal-weight portfolio of those pools present "
             "at each bar; cost drag = gross - net total return per pool (mean and median over the pools)."]
    for rule, table in tables.items():
        lines.append("")
        if table.empty:
            lines.append(f"{rule}: traded in no pool.")
            continue
        pools = int(table.loc[rule, "pools"])
        lines += [f"**{rule}** ({pools} pools)", "",
                  "| variant | portfolio return | portfolio Sharpe | median pool return | mean cost drag | "
                  "median cost drag | trades | fees USD | impact USD | mean position | holding bars | rule beats it in |",
                  "|---|" + "---|" * 11]
        for variant, r in table.iterrows():
            beats = r.get("rule_beats_this", np.nan)
            lines.append(
                f"| {variant} | {_pct(r['portfolio_return'], 3)} | {_num(r['portfolio_sharpe'])} | "
                f"{_pct(r['median_return'], 3)} | "
                f"{'' if pd.isna(r['mean_cost_drag']) else _pct(r['mean_cost_drag'], 3)} | "
                f"{'' if pd.isna(r['median_cost_drag']) else _pct(r['median_cost_drag'], 3)} | "
                f"{int(r['trades'])} | {r['fees_paid']:,.2f} | {r['impact_paid']:,.2f} | "
                f"{_pct_small(r['mean_position'])} | {_num(r['mean_holding_bars'], '{:.1f}')} | "
                f"{'' if pd.isna(beats) else int(beats)} |")
        if results is not None and rule != Q50:
            perm = permutation_summary(results, rule)
            if perm.get("pools"):
                lines += ["", f"Permutation null of {rule}'s timing ({perm['draws']:,} circular shifts per pool, same "
                          f"costs), pooled over {perm['pools']} pools: mean per-bar net return "
                          f"{perm['pooled_statistic']:.3e} vs null mean {perm['pooled_null_mean']:.3e}, "
                          f"p = {perm['pooled_p_value']:.3f}."]
    return "\n".join(lines)


def permutation_summary(results: pd.DataFrame, rule: str = Q50) -> dict:
    """Per pool p-values (the rule's rows, default q50) and the pooled one: the statistic averaged
    over pools, its null averaged over pools per draw index."""
    q50 = results[results["variant"] == rule].sort_values("pool_id")
    stats, nulls, per_pool = [], [], {}
    for _, row in q50.iterrows():
        null = _null(row.get("permutation_null"))
        if len(null) == 0 or pd.isna(row.get("permutation_statistic")):
            continue
        stats.append(float(row["permutation_statistic"]))
        nulls.append(null)
        per_pool[row["pool_id"]] = {"p_value": float(row["permutation_p_value"]), "draws": int(len(null)),
                                    "statistic": float(row["permutation_statistic"]),
                                    "traded": bool(row["trades"] > 0)}
    pooled, p, pooled_null = pooled_p_value(stats, nulls) if stats else (np.nan, np.nan, np.array([]))
    traded = [v["p_value"] for v in per_pool.values() if v["traded"]]
    return {"pools": len(per_pool), "pooled_statistic": pooled, "pooled_p_value": p,
            "pooled_null_mean": float(np.mean(pooled_null)) if len(pooled_null) else np.nan,
            "draws": int(len(pooled_null)), "per_pool": per_pool, "pooled_null": pooled_null,
            "traded_pools_below_0.05": int(sum(v < 0.05 for v in traded)), "traded_pools": len(traded)}


def no_trade_summary(results: pd.DataFrame) -> dict:
    """Pools where q50 never traded (q50 = cash there): how many, and buy & hold on them."""
    pools = set(results["pool_id"]) - set(traded_pools(results))
    bh = results[(results["variant"] == "buy_and_hold") & results["pool_id"].isin(pools)]["total_return"]
    return {"pools": len(pools), "buy_and_hold_mean_return": float(bh.mean()) if len(bh) else np.nan,
            "buy_and_hold_median_return": float(bh.median()) if len(bh) else np.nan}


def _pct(v, digits: int = 2) -> str:
    return "n/a" if pd.isna(v) else f"{100 * v:.{digits}f} %"


def _pct_small(v) -> str:
    """A share that may be tiny (q50's mean position is often a few hundredths of a percent):
    three significant digits instead of two decimals that would print 0.00 %."""
    return "n/a" if pd.isna(v) else f"{100 * v:.3g} %"


def _num(v, fmt="{:.2f}") -> str:
    return "n/a" if pd.isna(v) else fmt.format(v)


def portfolio_markdown(table: pd.DataFrame, permutation: dict | None = None, no_trade: dict | None = None) -> str:
    if table.empty:
        return "No backtest results yet." if not no_trade or not no_trade["pools"] else (
            f"q50 traded in no pool ({no_trade['pools']} pools with results).")
    lines = ["Pools where q50 traded; every variant on the same pools and out-of-sample bars, after fees and "
             "impact. Portfolio = the equal-weight portfolio of the pools present at each bar (the research "
             "report's headline series); Sharpe annualised from the timeframe on the full time grid. The median "
             "pool describes the spread across pools.", "",
             "| variant | pools | portfolio return | portfolio Sharpe | portfolio max DD | median pool return | "
             "median pool Sharpe | mean cost drag | trades | fees USD | impact USD | exposure | mean position | turnover | "
             "holding bars | q50 beats it in |",
             "|---|" + "---|" * 15]
    for variant, r in table.iterrows():
        beats = r.get("q50_beats_this", np.nan)
        lines.append(
            f"| {variant} | {int(r['pools'])} | {_pct(r['portfolio_return'], 3)} | {_num(r['portfolio_sharpe'])} | "
            f"{_pct(r['portfolio_max_drawdown'], 3)} | {_pct(r['median_return'], 3)} | {_num(r['median_sharpe'])} | "
            f"{'' if pd.isna(r.get('mean_cost_drag', np.nan)) else _pct(r['mean_cost_drag'], 3)} | "
            f"{int(r['trades'])} | {r['fees_paid']:,.2f} | {r['impact_paid']:,.2f} | {_pct_small(r['mean_exposure'])} | "
            f"{_pct_small(r['mean_position'])} | {_num(r['mean_turnover'], '{:.3g}')} | "
            f"{_num(r['mean_holding_bars'], '{:.1f}')} | "
            f"{'' if pd.isna(beats) else int(beats)} |")
    if permutation and permutation.get("pools"):
        lines += ["", f"Permutation null ({permutation['draws']:,} circular shifts of q50's own positions per pool, "
                  f"same costs): pooled over {permutation['pools']} pools, mean per-bar net return "
                  f"{permutation['pooled_statistic']:.3e} vs null mean {permutation['pooled_null_mean']:.3e}, "
                  f"p = {permutation['pooled_p_value']:.3f}; "
                  f"{permutation['traded_pools_below_0.05']} of {permutation['traded_pools']} traded pools "
                  "have p < 0.05 on their own."]
    if no_trade and no_trade["pools"]:
        lines += ["", f"{no_trade['pools']} pools where q50 never traded (it equals cash there), reported apart: "
                  f"buy & hold on them {_pct(no_trade['buy_and_hold_mean_return'])} mean, "
                  f"{_pct(no_trade['buy_and_hold_median_return'])} median."]
    return "\n".join(lines)


def comparable_baselines(results: pd.DataFrame, variants: tuple[str, ...] | None = None) -> tuple[list[dict], int]:
    """Pools whose latest backtest cannot be compared fairly: a variant missing, variants on
    different out-of-sample spans, a return that is not finite or below -100 % (spot cannot lose
    more than it holds), or a q50 row without a permutation null of at least 1,000 draws.
    Returns (problems, pools checked)."""
    problems = []
    expected = set(variants or variants_for(BacktestSettings().reserve_sensitivity))
    for pool_id, rows in results.groupby("pool_id"):
        present = set(rows["variant"])
        if present != expected:
            problems.append({"pool_id": pool_id, "problem": f"variants {sorted(present)}, expected {sorted(expected)}"})
            continue
        spans = rows[["oos_start", "oos_end", "bars"]].astype(str).drop_duplicates()
        if len(spans) != 1:
            problems.append({"pool_id": pool_id, "problem": "variants cover different out-of-sample spans"})
        bad = rows[~np.isfinite(rows["total_return"].astype(float)) | (rows["total_return"].astype(float) < -1)]
        if len(bad):
            problems.append({"pool_id": pool_id, "problem": f"impossible total_return in {sorted(bad['variant'])}"})
        q50 = rows[rows["variant"] == Q50].iloc[0]
        if len(_null(q50.get("permutation_null"))) < MIN_PERMUTATIONS or pd.isna(q50.get("permutation_p_value")):
            problems.append({"pool_id": pool_id, "problem": f"q50 lacks a permutation null of >= {MIN_PERMUTATIONS}"})
    return problems, int(results["pool_id"].nunique()) if len(results) else 0


def _record(value):
    if isinstance(value, str):
        return json.loads(value)
    return value


def stored_evidence(results: pd.DataFrame, pools: list[str]) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, list[str]]:
    """From the q50 rows of ``pools``: each pool's per-bar returns of every variant, every Q50
    round trip (with its pool), and the pools whose backtest stored no such evidence (written
    before it was kept: left out of the report, and named)."""
    q50 = results[(results["variant"] == Q50) & results["pool_id"].isin(pools)].sort_values("pool_id")
    bar_returns, trips, missing = {}, [], []
    for _, row in q50.iterrows():
        record = _record(row.get("bar_returns")) if "bar_returns" in row.index else None
        if not record:
            missing.append(row["pool_id"])
            continue
        bar_returns[row["pool_id"]] = bar_returns_from_record(record)
        pool_trips = round_trips_from_records(_record(row.get("round_trip_records")) or [])
        trips.append(pool_trips.assign(pool_id=row["pool_id"]))
    round_trips = pd.concat(trips, ignore_index=True) if trips else None
    return bar_returns, round_trips, missing


def _utc(values) -> pd.DatetimeIndex:
    index = pd.DatetimeIndex(values)
    return index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")


def labelled_signals(signals: dict[str, pd.DataFrame], predictions: pd.DataFrame) -> pd.DataFrame:
    """Every pool's stored signals beside the realised label of the bar they were made for (the
    model's out-of-sample predictions carry it; NaN where it is not known yet, or where the signal
    came from elsewhere): what :func:`research.evaluation.net_hit_rate` scores."""
    frames = [frame.assign(pool_id=pool_id) for pool_id, frame in signals.items() if frame is not None and len(frame)]
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames).reset_index().rename(columns={"index": "open_time"})
    key = pd.MultiIndex.from_arrays([out["pool_id"].astype(str), _utc(out["open_time"])])
    if "label" in predictions and len(predictions):
        labels = predictions["label"].set_axis(pd.MultiIndex.from_arrays(
            [predictions.index.get_level_values(0).astype(str), _utc(predictions.index.get_level_values(1))]))
        out["label"] = labels.reindex(key).to_numpy()
    else:
        out["label"] = np.nan
    return out


def q50_round_trip_counts(results: pd.DataFrame, pools: list[str]) -> pd.DataFrame | None:
    """Round trips per pool (index) and q50 variant (columns) from the results rows (None when the
    rows carry no ``round_trips``). Only the q50 variants: the minimum of round trips for an
    interval is about a strategy's trades; buy & hold is exposed on every bar by construction."""
    if "round_trips" not in results.columns:
        return None
    rows = results[results["pool_id"].isin(pools) & results["variant"].astype(str).str.startswith(Q50)]
    if rows.empty:
        return None
    return rows.pivot_table(index="pool_id", columns="variant", values="round_trips", aggfunc="sum")


def research_report(results: pd.DataFrame, *, trials: int, bar_seconds: int, bootstrap, model=None,
                    hit_rate: dict | None = None, trials_ledger: pd.DataFrame | None = None, basket=None,
                    signal_evidence=None, capacity_settings: dict | None = None,
                    assumed_reserve: str = "", provenance: dict | None = None) -> tuple[Report | None, dict]:
    """The research report (research/report.py) over the pools where q50 traded -- the same pools
    as the portfolio table -- from what their backtests stored; the pooled permutation null over
    every pool with one; the verdict (lineage/portfolio/verdict.py) and the capacity curve of its
    best rule's round trips (``capacity_settings``: the cost model's fee_rate and
    max_reserve_fraction; None: no curve). Returns (report or None when no pool traded, facts for
    the caption)."""
    pools = traded_pools(results)
    bar_returns, round_trips, missing = stored_evidence(results, pools)
    permutation = permutation_summary(results) if len(results) else {}
    facts = {"pools_in_report": len(bar_returns), "pools_without_stored_evidence": missing,
             "pools_never_traded": len(set(results["pool_id"])) - len(pools) if len(results) else 0,
             "trials": int(trials)}
    if not bar_returns:
        return None, facts
    null = None
    if permutation.get("draws"):
        null = PermutationNull(statistic=float(permutation["pooled_statistic"]), draws=permutation["pooled_null"],
                               p_value=float(permutation["pooled_p_value"]))
    intro = (f"Pools where q50 traded at least once (the portfolio table's pools); {facts['pools_never_traded']} "
             f"where it never traded are reported apart. The deflated Sharpe counts {trials} configurations tried.")
    if missing:
        intro += f" Left out, their backtest stored no per-bar returns (run before they were kept): {', '.join(missing)}."
    from q50_assets.lineage.portfolio.verdict import verdict

    judged = verdict(results, basket=basket, evidence=signal_evidence, trials=trials, bar_seconds=bar_seconds,
                     bootstrap=bootstrap)
    facts["verdict"] = judged.facts
    from q50_assets.lineage.portfolio.verdict import verdict_display

    table = verdict_display(judged.rules)
    facts["verdict_markdown"] = judged.markdown + ("\n\n" + markdown_table(table) if len(table) else "")
    capacity = None
    capacity_rule = judged.best if judged.best in RULES else Q50  # the basket stores no round trips
    if capacity_settings is not None:
        from q50_assets.lineage.portfolio.capacity import capacity_curve
        from q50_assets.lineage.portfolio.verdict import rule_round_trips

        trips = rule_round_trips(results, capacity_rule, traded_pools(results, capacity_rule))
        if len(trips):
            capacity = capacity_curve(trips, variant=capacity_rule, bar_seconds=bar_seconds, config=bootstrap,
                                      **capacity_settings)
    facts["capacity"] = capacity
    inputs = ReportInputs(
        intro=intro, bar_returns=bar_returns, trials=trials, permutation=null, verdict=judged,
        rule_tables=rule_tables(results, bar_seconds),
        permutation_statistic=f"mean per-bar net return of q50, averaged over {permutation.get('pools', 0)} pools",
        round_trips=round_trips, round_trip_counts=q50_round_trip_counts(results, list(bar_returns)),
        trials_ledger=trials_ledger, model=model, hit_rate=hit_rate, bar_seconds=bar_seconds, bootstrap=bootstrap,
        basket=basket, signal_evidence=signal_evidence, capacity=capacity, assumed_reserve=assumed_reserve,
        provenance=provenance,
        title="Q50: out-of-sample evidence, after every cost")
    return render_report(inputs), facts


__all__ = ["MIN_PERMUTATIONS", "labelled_signals", "research_report", "stored_evidence", "comparable_baselines", "no_trade_summary", "permutation_summary",
           "portfolio_figures", "portfolio_markdown", "portfolio_table", "rule_table", "rule_tables", "rules_markdown",
           "traded_pools"]


def dsr_trials(settings, ledger: pd.DataFrame | None = None) -> dict[str, int]:
    """Configurations tried, for the deflated Sharpe: the distinct (configuration hash, variant)
    pairs of the ``q50_trials`` ledger on windows overlapping this one, this run's included
    (lineage/portfolio/trials.py), plus those declared as tried elsewhere
    (evaluation.prior_configurations). Without a ledger (nothing to report yet): this run's q50
    variants (latency and close fills, each reserve assumption, the horizon rule; not the zero-cost
    replays) plus the prior ones."""
    from q50_assets.lineage.backtest.step import variants_for
    from q50_assets.lineage.portfolio.trials import count_trials

    # A gross variant replays a rule's own decisions at zero cost: no configuration of its own.
    q50_variants = sum(v.startswith("q50") and v not in GROSS_VARIANTS
                       for v in variants_for(tuple(settings.nautilus_trader.backtest.reserve_sensitivity)))
    prior = settings.evaluation.prior_configurations
    if ledger is None:
        return {"q50_variants_this_run": q50_variants, "prior_configurations": prior, "ledger_trials": 0,
                "trials": q50_variants + prior}
    return {"q50_variants_this_run": q50_variants, **count_trials(ledger, prior)}
