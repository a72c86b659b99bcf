"""Tests of the verdict: the signal's statement from its evidence, the rules' table, the best rule
only among rules with enough round trips, and both statements apart."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from q50_assets.lineage.common.uncertainty import BootstrapConfig
from q50_assets.lineage.portfolio.verdict import (VERDICT_COLUMNS, best_rule, rule_statement, rules_evidence,
                                                  signal_statement, verdict)
from q50_assets_tests.lineage.portfolio.test_portfolio import _results, _with_evidence

BOOT = BootstrapConfig(bootstrap_samples=200, bootstrap_seed=0)


def _table(rows):
    base = {c: np.nan for c in VERDICT_COLUMNS}
    return pd.DataFrame([base | r for r in rows]).set_index("rule")


def test_the_best_rule_is_chosen_only_among_rules_with_an_interval():
    table = _table([
        {"rule": "q50", "pools": 7, "round_trips": 5, "too_few": True, "mean_bar_net": 0.01},
        {"rule": "q50_horizon", "pools": 57, "round_trips": 113, "too_few": False, "mean_bar_net": 2e-4,
         "mean_bar_net_low": -1e-4, "mean_bar_net_high": 5e-4, "mean_bar_gross": 4e-4, "mean_bar_yardstick": 3e-4,
         "yardstick": "buy & hold at the rule's mean exposure", "p_value": 0.02, "p_basis": "shifts", "dsr": 0.4,
         "trials": 6},
        {"rule": "basket_forecast", "pools": 48, "round_trips": 269, "too_few": False, "mean_bar_net": 1e-4,
         "mean_bar_net_low": -3e-4, "mean_bar_net_high": 4e-4, "mean_bar_gross": 2e-4, "mean_bar_yardstick": 2e-4,
         "yardstick": "the same basket chosen by past volatility alone", "p_value": 0.03, "p_basis": "ranking",
         "dsr": 0.2, "trials": 6}])
    # q50's mean is the highest, but 5 round trips carry no interval: it cannot be "the best".
    assert best_rule(table) == "q50_horizon"
    text = rule_statement(table, "q50_horizon")
    assert "+2.0 bp [-1.0, +5.0]" in text and "around zero" in text and "p = 0.020" in text
    assert "6 trials" in text and "costs take +2.0 bp" in text and "(too few round trips)" in text
    assert best_rule(table.loc[["q50"]]) is None
    assert "No rule made enough round trips" in rule_statement(table.loc[["q50"]], None)


def test_rules_table_from_stored_results_counts_the_rules_own_round_trips():
    results = _with_evidence(_results(), ["A", "B"])
    table = rules_evidence(results, trials=3, bar_seconds=3600, bootstrap=BOOT)
    assert list(table.index) == ["q50", "q50_horizon"]  # every rule in the results; no basket given
    row = table.loc["q50"]
    assert row["pools"] == 2 and row["round_trips"] == 6 and row["trials"] == 3
    assert row["too_few"]  # 6 < the minimum for an interval: no interval, no DSR
    assert np.isnan(row["mean_bar_net_low"]) and np.isfinite(row["mean_bar_net"])
    assert row["p_value"] == pytest.approx(0.5, abs=0.5)
    v = verdict(results, trials=3, bar_seconds=3600, bootstrap=BOOT)
    assert v.best is None and "not computed" in v.signal and "**What the signal shows.**" in v.markdown


def _evidence(spread, drift, breakeven, cost):
    decomposition = pd.DataFrame([
        {"ranking": "E[r]", "spread_per_bar": spread, "low": spread / 2, "high": spread * 1.5, "p": 0.01},
        {"ranking": "market drift (mean of all pools)", "spread_per_bar": drift, "low": drift / 2,
         "high": drift * 2, "p": 0.01},
        {"ranking": "E[r] within width terciles", "spread_per_bar": spread / 3, "low": -1e-4, "high": 1e-3, "p": 0.2},
        {"ranking": "E[r] within past-vol terciles", "spread_per_bar": spread / 2, "low": 1e-4, "high": 1e-3,
         "p": 0.05},
        {"ranking": "E[r] timing (minus own past mean)", "spread_per_bar": 0.0, "low": -1e-3, "high": 1e-3,
         "p": 0.5},
        {"ranking": "width q90-q10 alone", "spread_per_bar": 2 * spread, "low": spread, "high": 3 * spread, "p": 0.0},
        {"ranking": "past vol (vol_risk) alone", "spread_per_bar": 2 * spread, "low": spread, "high": 3 * spread,
         "p": 0.0}]).set_index("ranking")
    spreads = pd.DataFrame([{"forecast": "E[r]", "horizon": h, "ic": ic} for h, ic in ((1, 0.03), (8, 0.01))]
                           ).set_index(["forecast", "horizon"])
    summary = {"horizon_headline": 1, "er_top_minus_all": spread, "er_ic": 0.03, "null_p_er_top_minus_all": 0.028,
               "null_p_er_ic": 0.002, "best_horizon": 1, "er_breakeven_per_side": breakeven, "cost_per_side": cost}
    return SimpleNamespace(evidence=SimpleNamespace(summary=summary, decomposition=decomposition, spreads=spreads))


def test_the_signal_statement_names_drift_volatility_timing_and_the_breakeven():
    text, facts = signal_statement(_evidence(0.0076, 0.0059, 0.0072, 0.0038))
    assert "+76.0 bp [+38.0, +114.0]" in text and "p = 0.028" in text
    assert "drifted +59.0 bp" in text and "past volatility alone gives +152.0 bp" in text
    assert "within terciles of width E[r] keeps +25.3 bp" in text and "Timing" in text
    assert "72 bp per side" in text and "38 bp charged" in text and "clears the cost" in text
    assert "1 bar +0.030, 8 bars +0.010" in text
    assert facts["breakeven_per_side"] == pytest.approx(0.0072) and facts["vol_alone_spread"] == pytest.approx(0.0152)
    text, _ = signal_statement(_evidence(0.0076, 0.0059, 0.0030, 0.0038))
    assert "does not clear the cost" in text
