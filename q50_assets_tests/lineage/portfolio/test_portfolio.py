"""Tests of q50_assets.lineage.portfolio.portfolio: the same pools for every variant, no-trade pools apart,
means beside medians, the pooled permutation p-value, and the comparability check."""

import numpy as np
import pandas as pd
import pytest

from q50_assets.lineage.backtest.step import variants_for
from q50_assets.lineage.portfolio.portfolio import (comparable_baselines, no_trade_summary, permutation_summary,
                                           portfolio_markdown, portfolio_table)

VARIANTS = variants_for((0.5, 2.0))
START, END = pd.Timestamp("2025-08-20", tz="UTC"), pd.Timestamp("2025-09-20", tz="UTC")


def _rows(pool, q50_return, bh_return, trades, null=None, p=0.5):
    rows = []
    for v in VARIANTS:
        ret = {"q50": q50_return, "buy_and_hold": bh_return, "cash": 0.0}.get(v, q50_return / 2)
        rows.append({"pool_id": pool, "variant": v, "total_return": ret, "sharpe": ret * 10 if ret else np.nan,
                     "max_drawdown": 0.1, "trades": trades if v.startswith("q50") else 3, "fees_paid": 1.0,
                     "impact_paid": 2.0, "exposure": 0.1, "mean_position": 0.01, "turnover": 0.5,
                     "mean_holding_bars": 4.0, "oos_start": START, "oos_end": END, "bars": 700,
                     "permutation_statistic": q50_return / 700 if v == "q50" else np.nan,
                     "permutation_p_value": p if v == "q50" else np.nan,
                     "permutation_null": (null if null is not None else list(np.linspace(-1e-4, 1e-4, 1000)))
                     if v == "q50" else None})
    return rows


def _results():
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        _rows("A", 0.02, 0.5, 4, list(rng.normal(0, 1e-5, 1000)), p=0.03)
        + _rows("B", -0.01, -0.4, 2, list(rng.normal(0, 1e-5, 1000)), p=0.8)
        + _rows("C", 0.0, 2.0, 0, list(np.zeros(1000)), p=1.0))


def test_table_covers_the_pools_where_q50_traded_for_every_variant():
    results = _results()
    table = portfolio_table(results, VARIANTS)
    assert list(table.index) == list(VARIANTS)
    assert (table["pools"] == 2).all()  # C (never traded) is left out of every row alike
    assert table.loc["q50", "median_return"] == pytest.approx(0.005)
    assert table.loc["buy_and_hold", "median_return"] == pytest.approx(0.05)
    # No stored per-bar returns: no portfolio figure is made up from per-pool totals of other spans.
    assert table["portfolio_return"].isna().all() and (table["portfolio_pools"] == 0).all()
    assert table.loc["buy_and_hold", "q50_beats_this"] == 1  # B: -1 % beats -40 %
    assert pd.isna(table.loc["q50", "q50_beats_this"])
    apart = no_trade_summary(results)
    assert apart["pools"] == 1 and apart["buy_and_hold_mean_return"] == pytest.approx(2.0)
    md = portfolio_markdown(table, permutation_summary(results), apart)
    assert "| q50_close |" in md and "| buy_and_hold_matched |" in md and "| cash |" in md
    assert "1 pools where q50 never traded" in md and "pooled over 3 pools" in md


def test_pooled_p_value_averages_the_statistic_and_the_null_per_draw():
    results = _results()
    summary = permutation_summary(results)
    q = results[results["variant"] == "q50"].sort_values("pool_id")
    nulls = np.vstack([np.asarray(n) for n in q["permutation_null"]])
    pooled_null = nulls.mean(axis=0)
    pooled = q["permutation_statistic"].mean()
    assert summary["pooled_statistic"] == pytest.approx(pooled)
    assert summary["pooled_p_value"] == pytest.approx((1 + (pooled_null >= pooled - 1e-15).sum()) / 1001)
    assert summary["draws"] == 1000 and summary["pools"] == 3
    assert summary["traded_pools"] == 2 and summary["traded_pools_below_0.05"] == 1


def test_comparable_baselines_names_each_problem():
    results = _results()
    assert comparable_baselines(results, VARIANTS) == ([], 3)
    broken = results.copy()
    broken = broken[~((broken["pool_id"] == "A") & (broken["variant"] == "cash"))]
    broken.loc[(broken["pool_id"] == "B") & (broken["variant"] == "buy_and_hold"), "total_return"] = -1.5
    broken.loc[(broken["pool_id"] == "C") & (broken["variant"] == "q50"), "permutation_null"] = None
    problems, checked = comparable_baselines(broken, VARIANTS)
    assert checked == 3
    by_pool = {p["pool_id"]: p["problem"] for p in problems}
    assert "variants" in by_pool["A"] and "impossible total_return" in by_pool["B"]
    assert "permutation null" in by_pool["C"]
    assert portfolio_table(pd.DataFrame()).empty and portfolio_markdown(pd.DataFrame()) == "No backtest results yet."


def _with_evidence(results: pd.DataFrame, pools: list[str]) -> pd.DataFrame:
    """Stored per-bar returns and round trips on the q50 rows of ``pools`` (as results_rows writes them)."""
    from q50_assets.lineage.backtest.step import ROUND_TRIP_COLUMNS, bar_returns_record, round_trip_records

    rng = np.random.default_rng(1)
    grid = pd.date_range(START, periods=96, freq="h")
    out = results.copy()
    out["bar_returns"], out["round_trip_records"] = None, None
    for pool in pools:
        frame = pd.DataFrame({v: rng.normal(0, 1e-3, len(grid)) for v in VARIANTS}, index=grid).assign(cash=0.0)
        trips = pd.DataFrame([{c: np.nan for c in ROUND_TRIP_COLUMNS} | {
            "entry_decided_at": grid[i], "entry_filled_at": grid[i + 1], "exit_filled_at": grid[i + 3],
            "open": False, "bars_held": 2, "net_return": r, "gross_return": r + 0.005, "notional_usd": 25.0,
            "vol_regime": "low", "momentum_regime": "ranging",
            "signal_tier": "A", "reserve_usd": 50_000.0, "reserve_source": "fallback"}
            for i, r in ((5, 0.01), (30, -0.02), (60, 0.004))])
        row = (out["pool_id"] == pool) & (out["variant"] == "q50")
        out.loc[row, "bar_returns"] = pd.Series([bar_returns_record(frame)], index=out.index[row])
        out.loc[row, "round_trip_records"] = pd.Series([round_trip_records(trips)], index=out.index[row])
    return out


def test_stored_evidence_reads_back_what_the_backtest_wrote():
    from q50_assets.lineage.backtest.step import bar_returns_from_record, bar_returns_record
    from q50_assets.lineage.portfolio.portfolio import stored_evidence

    grid = pd.date_range(START, periods=5, freq="4h")
    frame = pd.DataFrame({"q50": [0.0, 0.01, -0.02, 1e-9, 0.0], "cash": 0.0}, index=grid)
    back = bar_returns_from_record(bar_returns_record(frame))
    pd.testing.assert_frame_equal(back, frame, check_freq=False)

    results = _with_evidence(_results(), ["A"])
    bar_returns, trips, missing = stored_evidence(results, ["A", "B"])
    assert list(bar_returns) == ["A"] and missing == ["B"]  # B's backtest kept no per-bar returns: named
    assert len(trips) == 3 and set(trips["pool_id"]) == {"A"}
    assert trips["entry_filled_at"].dt.tz is not None and trips["net_return"].tolist() == [0.01, -0.02, 0.004]


def test_research_report_covers_the_traded_pools_and_counts_the_trials():
    from q50_assets.lineage.portfolio.portfolio import research_report, stored_evidence
    from q50_assets.lineage.common.uncertainty import BootstrapConfig

    results = _with_evidence(_results(), ["A", "B", "C"])
    report, facts = research_report(results, trials=6, bar_seconds=3600,
                                    bootstrap=BootstrapConfig(bootstrap_samples=200, bootstrap_seed=0))
    assert facts["pools_in_report"] == 2 and facts["pools_never_traded"] == 1  # C never traded: apart
    headline = report.tables["headline"]
    assert (headline["trials"] == 6).all() and (headline.xs("all pools", level="sample")["pools"] == 2).all()
    # The pooled mean per-bar return of q50 is the mean of the stored bars of A and B.
    stored, _, _ = stored_evidence(results, ["A", "B"])
    expected = pd.concat([stored["A"]["q50"], stored["B"]["q50"]]).mean()
    q50 = headline.loc[("all pools", "q50")]
    assert q50["mean_bar_return"] == pytest.approx(expected)
    # q50's PSR is on its 6 stored round trips: fewer than 10, so no interval and no PSR, said so.
    assert q50["psr_basis"] == "round trips" and q50["round_trips"] == 6 and q50["too_few"]
    assert np.isnan(q50["mean_bar_return_low"]) and np.isnan(q50["psr"])
    assert "too few (6)" in report.markdown
    bh = headline.loc[("all pools", "buy_and_hold")]
    assert bh["mean_bar_return_low"] <= bh["mean_bar_return"] <= bh["mean_bar_return_high"]
    assert bh["psr_basis"] == "non-zero bars" and not bh["too_few"]
    assert {"equity_curves", "permutation_null", "breakdowns"} <= set(report.pngs)
    assert "1 where it never traded are reported apart" in report.markdown

    # One pool: "without the top 5 %" leaves nothing, said so (NaN), not an error.
    one, _ = research_report(results[results["pool_id"] == "A"], trials=6, bar_seconds=3600,
                             bootstrap=BootstrapConfig(bootstrap_samples=200, bootstrap_seed=0))
    trimmed = one.tables["headline"].xs("without top 5 %", level="sample")
    assert (trimmed["pools"] == 0).all() and trimmed["mean_bar_return"].isna().all()

    none, facts = research_report(results[results["pool_id"] == "C"], trials=6, bar_seconds=3600,
                                  bootstrap=BootstrapConfig(bootstrap_samples=200, bootstrap_seed=0))
    assert none is None and facts["pools_in_report"] == 0


def test_each_rule_on_its_own_pools_gross_beside_net_and_buy_and_hold_at_its_exposure():
    from q50_assets.lineage.portfolio.portfolio import rule_table, rule_tables, rules_markdown

    rows = []
    # q50 traded in A only; q50_horizon in A and B. Gross returns exceed net by a known drag.
    for pool, q50, q50_trades, horizon, horizon_trades in (("A", 0.02, 4, 0.03, 2), ("B", 0.0, 0, -0.01, 6),
                                                             ("C", 0.0, 0, 0.0, 0)):
        for v in VARIANTS:
            ret = {"q50": q50, "q50_gross": q50 + 0.005, "q50_horizon": horizon,
                   "q50_horizon_gross": horizon + 0.02, "bh_matched_horizon": -0.002, "cash": 0.0}.get(v, 0.01)
            trades = {"q50": q50_trades, "q50_gross": q50_trades, "q50_horizon": horizon_trades,
                      "q50_horizon_gross": horizon_trades}.get(v, 1)
            rows.append({"pool_id": pool, "variant": v, "total_return": ret, "sharpe": 1.0, "max_drawdown": 0.1,
                         "trades": trades, "fees_paid": 0.0 if v.endswith("_gross") else 1.0, "impact_paid": 0.5,
                         "exposure": 0.1, "mean_position": 0.05, "turnover": 0.5, "mean_holding_bars": 8.0,
                         "oos_start": START, "oos_end": END, "bars": 700,
                         "permutation_statistic": ret / 700 if v in ("q50", "q50_horizon") else np.nan,
                         "permutation_p_value": 0.5 if v in ("q50", "q50_horizon") else np.nan,
                         "permutation_null": list(np.zeros(1000)) if v in ("q50", "q50_horizon") else None})
    results = pd.DataFrame(rows)
    q50 = rule_table(results, "q50")
    assert list(q50.index) == ["q50", "q50_gross", "buy_and_hold_matched", "buy_and_hold", "cash"]
    assert (q50["pools"] == 1).all() and q50.loc["q50", "mean_cost_drag"] == pytest.approx(0.005)
    horizon = rule_table(results, "q50_horizon")
    assert list(horizon.index) == ["q50_horizon", "q50_horizon_gross", "bh_matched_horizon", "buy_and_hold", "cash"]
    assert (horizon["pools"] == 2).all()  # its own pools: A and B, not q50's
    assert horizon.loc["q50_horizon", "median_return"] == pytest.approx(0.01)
    assert horizon.loc["q50_horizon", "mean_cost_drag"] == pytest.approx(0.02)
    assert horizon.loc["q50_horizon", "median_cost_drag"] == pytest.approx(0.02)
    assert horizon.loc["bh_matched_horizon", "rule_beats_this"] == 1  # A: 3 % > -0.2 %; B: -1 % < -0.2 %
    assert pd.isna(horizon.loc["q50_horizon_gross", "mean_cost_drag"])
    # The main table carries the cost drag of each rule over q50's pools.
    main = portfolio_table(results, VARIANTS)
    assert main.loc["q50_horizon", "mean_cost_drag"] == pytest.approx(0.02)
    md = rules_markdown(rule_tables(results), results)
    assert "**q50_horizon** (2 pools)" in md and "| bh_matched_horizon |" in md and "| q50_gross |" in md
    assert "Permutation null of q50_horizon's timing" in md and "pooled over 3 pools" in md


def test_gross_replays_are_not_configurations_tried():
    from q50_assets.lineage.portfolio.portfolio import dsr_trials
    from q50_assets.settings import Settings

    trials = dsr_trials(Settings())
    # q50, q50_close, two reserve assumptions, q50_horizon; q50_gross and q50_horizon_gross are not trials.
    assert trials["q50_variants_this_run"] == 5


def test_portfolio_table_headline_and_equity_curve_use_one_weighting():
    """Pools A and B traded; their stored bar returns cover different spans (B's second half is
    cut off). The portfolio table's return and Sharpe, the report's headline mean and Sharpe and the
    equity curve are all of the one equal-weight series of the pools present at each bar: they agree."""
    from q50_assets.lineage.common.uncertainty import BootstrapConfig, equal_weight_portfolio
    from q50_assets.lineage.portfolio.portfolio import research_report, stored_evidence, traded_pools

    results = _with_evidence(_results(), ["A", "B"])
    bar_returns, _, _ = stored_evidence(results, traded_pools(results))
    bar_returns["B"] = bar_returns["B"].iloc[:40]
    row = (results["pool_id"] == "B") & (results["variant"] == "q50")
    from q50_assets.lineage.backtest.step import bar_returns_record
    results.loc[row, "bar_returns"] = pd.Series([bar_returns_record(bar_returns["B"])], index=results.index[row])

    portfolio = equal_weight_portfolio(bar_returns)["q50"]
    table = portfolio_table(results, VARIANTS, bar_returns=bar_returns)
    report, _ = research_report(results, trials=2, bar_seconds=3600,
                                bootstrap=BootstrapConfig(bootstrap_samples=200, bootstrap_seed=0))
    headline = report.tables["headline"].loc[("all pools", "q50")]
    equity = np.prod(1.0 + portfolio.to_numpy())
    assert table.loc["q50", "portfolio_return"] == pytest.approx(equity - 1.0)
    assert table.loc["q50", "portfolio_sharpe"] == pytest.approx(headline["sharpe"])
    assert headline["mean_bar_return"] == pytest.approx(portfolio.mean())
    # The pool-bar weighted mean (the old headline) differs here: B's 40 bars would weigh as much as A's 96.
    pooled = pd.concat([bar_returns["A"]["q50"], bar_returns["B"]["q50"]]).mean()
    assert headline["mean_bar_return"] != pytest.approx(pooled)
    assert table.loc["q50", "portfolio_pools"] == 2
    assert "equal-weight portfolio of the pools present at each bar" in report.markdown
