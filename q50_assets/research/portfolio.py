"""Across pools: the portfolio table of the latest backtest of each pool, and the check that its
baselines are comparable. Pure pandas over the rows of ``q50_backtest_results``."""

from __future__ import annotations

import numpy as np
import pandas as pd

from q50_assets.research.backtest_stage import VARIANTS


def portfolio_table(results: pd.DataFrame) -> pd.DataFrame:
    """Across pools, per variant: mean and median OOS return, pools beating buy & hold / shuffled,
    total fees and impact, trades. Equal weight per pool (each backtest has its own capital)."""
    if results.empty:
        return pd.DataFrame()
    by_variant = results.groupby("variant")
    table = pd.DataFrame({
        "pools": by_variant["pool_id"].nunique(),
        "mean_return": by_variant["total_return"].mean(),
        "median_return": by_variant["total_return"].median(),
        "mean_sharpe": by_variant["sharpe"].mean(),
        "mean_max_drawdown": by_variant["max_drawdown"].mean(),
        "trades": by_variant["trades"].sum(),
        "fees_paid": by_variant["fees_paid"].sum(),
        "impact_paid": by_variant["impact_paid"].sum(),
        "mean_exposure": by_variant["exposure"].mean(),
    })
    wide = results.pivot_table(index="pool_id", columns="variant", values="total_return")
    if {"q50", "buy_and_hold", "shuffled"} <= set(wide.columns):
        table["q50_beats_this"] = [
            int((wide["q50"] > wide[v]).sum()) if v != "q50" else np.nan for v in table.index]
    return table.reindex([v for v in VARIANTS if v in table.index])


def portfolio_markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "No backtest results yet."
    lines = ["| variant | pools | mean return | median return | mean Sharpe | mean max DD | trades | fees USD | "
             "impact USD | mean exposure | pools where q50 beats it |", "|---|" + "---|" * 10]
    for variant, r in table.iterrows():
        beats = r.get("q50_beats_this", np.nan)
        lines.append(
            f"| {variant} | {int(r['pools'])} | {100 * r['mean_return']:.2f} % | {100 * r['median_return']:.2f} % | "
            f"{r['mean_sharpe']:.2f} | {100 * r['mean_max_drawdown']:.2f} % | {int(r['trades'])} | "
            f"{r['fees_paid']:,.0f} | {r['impact_paid']:,.0f} | {100 * r['mean_exposure']:.1f} % | "
            f"{'' if pd.isna(beats) else int(beats)} |")
    return "\n".join(lines)


def comparable_baselines(results: pd.DataFrame) -> tuple[list[dict], int]:
    """Pools whose latest backtest cannot be compared fairly: a variant missing, variants on
    different out-of-sample spans, or a return that is not finite or below -100 % (spot cannot
    lose more than it holds). Returns (problems, pools checked)."""
    problems = []
    for pool_id, rows in results.groupby("pool_id"):
        variants = set(rows["variant"])
        if variants != set(VARIANTS):
            problems.append({"pool_id": pool_id, "problem": f"variants {sorted(variants)}"})
            continue
        spans = rows[["oos_start", "oos_end", "bars"]].astype(str).drop_duplicates()
        if len(spans) != 1:
            problems.append({"pool_id": pool_id, "problem": "variants cover different out-of-sample spans"})
        bad = rows[~np.isfinite(rows["total_return"].astype(float)) | (rows["total_return"].astype(float) < -1)]
        if len(bad):
            problems.append({"pool_id": pool_id, "problem": f"impossible total_return in {sorted(bad['variant'])}"})
    return problems, int(results["pool_id"].nunique()) if len(results) else 0


__all__ = ["comparable_baselines", "portfolio_markdown", "portfolio_table"]
