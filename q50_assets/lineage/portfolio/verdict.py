"""The verdict: what the signal shows, apart from what the best rule realises after costs.

Two statements, whatever the numbers are:

1. **The signal** (the ``signal_evidence`` stage, before any rule): the gross spread of the pools
   ranked top by the forecast's E[r] over the mean of all pools, with its interval and its p-value
   against forecasts shifted in time; how much of it the market's drift, the pools' volatility and
   timing explain; the breakeven cost per side at the top group's turnover beside the cost charged;
   the horizon where the spread is largest.
2. **The best rule after costs**: every rule that decides from the forecast (``q50``,
   ``q50_horizon``, the top-k basket) as the equal-weight portfolio of the pools it traded (the
   basket: its own 1/k slots), mean per-bar net return with its block-bootstrap interval, the same
   decisions at zero cost, its p-value against a null that shifts its decisions (or, for the basket,
   its ranking) in time against returns, and its deflated Sharpe at the ledger's trial count. The
   best is the highest mean per-bar net return among the rules with enough round trips for an
   interval; picking it is itself a choice among the trials the DSR counts.

Pure pandas over the stages' outputs; no Dagster, no storage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from q50_assets.lineage.backtest.step import RULES, round_trips_from_records
from q50_assets.lineage.common.uncertainty import BootstrapConfig, headline_table

VERDICT_COLUMNS = ("rule", "pools", "bars", "round_trips", "too_few", "mean_bar_net", "mean_bar_net_low",
                   "mean_bar_net_high", "mean_bar_gross", "mean_bar_yardstick", "yardstick", "p_value", "p_basis",
                   "psr", "dsr", "psr_n", "trials")
RULE_LABELS = {"q50": "q50 (threshold on q50's sign)", "q50_horizon": "q50_horizon (H x E[r] net of the round trip)",
               "basket_forecast": "top-k basket by E[r]"}
DRIFT = "market drift (mean of all pools)"
WIDTH_NEUTRAL = "E[r] within width terciles"
VOL_NEUTRAL = "E[r] within past-vol terciles"
TIMING = "E[r] timing (minus own past mean)"
WIDTH_ALONE = "width q90-q10 alone"
VOL_ALONE = "past vol (vol_risk) alone"


@dataclass
class Verdict:
    signal: str  # statement 1, Markdown
    rule: str  # statement 2, Markdown
    rules: pd.DataFrame  # one row per rule (VERDICT_COLUMNS)
    best: str | None
    facts: dict = field(default_factory=dict)

    @property
    def markdown(self) -> str:
        return f"**What the signal shows.** {self.signal}\n\n**What the best rule realises after costs.** {self.rule}"


def _bp_number(v: float) -> str:
    bp = v * 1e4
    # A rule that barely trades moves equity by thousandths of a bp: keep two significant digits.
    return f"{bp:+,.1f}" if abs(bp) >= 0.05 or bp == 0 else f"{bp:+.2g}"


def _bp(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{_bp_number(v)} bp"


def _iv(estimate: float, low: float, high: float) -> str:
    if not np.isfinite(low) or not np.isfinite(high):
        return _bp(estimate)
    return f"{_bp(estimate)} [{_bp_number(low)}, {_bp_number(high)}]"


def _records(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        import json

        return json.loads(value)
    return list(value)


def rule_round_trips(results: pd.DataFrame, rule: str, pools: list[str]) -> pd.DataFrame:
    """Every round trip ``rule`` stored on its own rows, with its pool."""
    rows = results[(results["variant"] == rule) & results["pool_id"].isin(pools)]
    frames = [round_trips_from_records(_records(r.get("round_trip_records"))).assign(pool_id=r["pool_id"])
              for _, r in rows.iterrows()] if "round_trip_records" in results.columns else []
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=["pool_id", "net_return"])
    # Entry order, ties by pool: the PSR's effective n depends on the order, never on the table's row order.
    return pd.concat(frames, ignore_index=True).sort_values(["entry_filled_at", "pool_id"], kind="stable",
                                                            ignore_index=True)


def _pool_rule_row(rule: str, results: pd.DataFrame, *, trials: int, bar_seconds: int,
                   bootstrap: BootstrapConfig) -> dict | None:
    from q50_assets.lineage.portfolio.portfolio import permutation_summary, stored_evidence, traded_pools

    pools = traded_pools(results, rule)
    bar_returns = stored_evidence(results, pools)[0] if pools else {}
    gross, matched = RULES[rule]
    columns = [c for c in (rule, gross, matched) if bar_returns and all(c in f.columns for f in bar_returns.values())]
    if rule not in columns:
        return None
    trips = rule_round_trips(results, rule, list(bar_returns))
    closed = trips[~trips["open"].astype(bool)] if "open" in trips.columns and len(trips) else trips
    counts = closed.groupby("pool_id").size().rename(rule).to_frame() if len(closed) else pd.DataFrame({rule: []})
    table = headline_table(bar_returns, trials=trials, bar_seconds=bar_seconds, config=bootstrap, variants=columns,
                           round_trips={rule: closed} if len(closed) else None,
                           round_trip_counts=counts.reindex(list(bar_returns)).fillna(0))
    r = table.loc[rule]
    permutation = permutation_summary(results, rule)
    return {"rule": rule, "pools": int(r["pools"]), "bars": int(r["portfolio_bars"]), "round_trips": int(len(closed)),
            "too_few": bool(r["too_few"]), "mean_bar_net": float(r["mean_bar_return"]),
            "mean_bar_net_low": float(r["mean_bar_return_low"]), "mean_bar_net_high": float(r["mean_bar_return_high"]),
            "mean_bar_gross": float(table.loc[gross, "mean_bar_return"]) if gross in table.index else np.nan,
            "mean_bar_yardstick": float(table.loc[matched, "mean_bar_return"]) if matched in table.index else np.nan,
            "yardstick": "buy & hold at the rule's mean exposure",
            "p_value": float(permutation.get("pooled_p_value", np.nan)),
            "p_basis": f"its decisions circularly shifted in time, {permutation.get('draws', 0):,} draws per pool",
            "psr": float(r["psr"]), "dsr": float(r["dsr"]), "psr_n": r["psr_n"], "trials": int(trials)}


def _basket_row(basket, evidence, *, trials: int, bar_seconds: int, bootstrap: BootstrapConfig) -> dict | None:
    if basket is None or getattr(basket, "status", "") != "ok" or getattr(basket, "bar_returns", None) is None:
        return None
    from q50_assets.lineage.basket.rules import FORECAST, VOLATILITY
    from q50_assets.lineage.basket.step import GROSS, NET, variant_name

    net, gross, vol = variant_name(FORECAST, NET), variant_name(FORECAST, GROSS), variant_name(VOLATILITY, NET)
    frame = basket.bar_returns[[net, gross, vol]]
    table = headline_table({"basket": frame}, trials=trials, bar_seconds=bar_seconds, config=bootstrap)
    r = table.loc[net]
    trips = int(basket.metrics.loc[net, "round_trips"]) if basket.metrics is not None else 0
    too_few = trips < bootstrap.min_round_trips_for_interval
    p = np.nan
    if evidence is not None:
        p = float(evidence.evidence.summary.get("null_p_er_top_minus_all", np.nan))
    return {"rule": "basket_forecast", "pools": int(basket.metrics.loc[net, "pools"]), "bars": int(len(frame)),
            "round_trips": trips, "too_few": too_few, "mean_bar_net": float(r["mean_bar_return"]),
            "mean_bar_net_low": np.nan if too_few else float(r["mean_bar_return_low"]),
            "mean_bar_net_high": np.nan if too_few else float(r["mean_bar_return_high"]),
            "mean_bar_gross": float(table.loc[gross, "mean_bar_return"]),
            "mean_bar_yardstick": float(table.loc[vol, "mean_bar_return"]),
            "yardstick": "the same basket chosen by past volatility alone",
            "p_value": p, "p_basis": "its ranking (E[r], top group minus all) with forecasts shifted in time",
            "psr": np.nan if too_few else float(r["psr"]), "dsr": np.nan if too_few else float(r["dsr"]),
            "psr_n": r["psr_n"], "trials": int(trials)}


def rules_evidence(results: pd.DataFrame, basket=None, evidence=None, *, trials: int, bar_seconds: int,
                   bootstrap: BootstrapConfig) -> pd.DataFrame:
    """One row per rule that decides from the forecast (module docstring, statement 2)."""
    rows = []
    present = set(results["variant"]) if len(results) else set()
    for rule in RULES:
        if rule in present:
            row = _pool_rule_row(rule, results, trials=trials, bar_seconds=bar_seconds, bootstrap=bootstrap)
            if row is not None:
                rows.append(row)
    row = _basket_row(basket, evidence, trials=trials, bar_seconds=bar_seconds, bootstrap=bootstrap)
    if row is not None:
        rows.append(row)
    return pd.DataFrame(rows, columns=list(VERDICT_COLUMNS)).set_index("rule")


def best_rule(table: pd.DataFrame) -> str | None:
    """The highest mean per-bar net return among the rules with enough round trips for an interval
    (None when no rule has)."""
    ok = table[~table["too_few"].astype(bool) & np.isfinite(table["mean_bar_net"].astype(float))]
    return None if ok.empty else str(ok["mean_bar_net"].astype(float).idxmax())


def _decomposition_value(decomposition: pd.DataFrame, name: str) -> tuple[float, float, float, float]:
    if name not in decomposition.index:
        return (np.nan,) * 4
    r = decomposition.loc[name]
    return float(r["spread_per_bar"]), float(r["low"]), float(r["high"]), float(r.get("p", np.nan))


def signal_statement(evidence) -> tuple[str, dict]:
    """Statement 1 from the signal_evidence stage's result (None: not run)."""
    if evidence is None:
        return "The signal evidence was not computed (the signal_evidence stage did not run).", {}
    ev = evidence.evidence
    s, d = ev.summary, ev.decomposition
    if "er_top_minus_all" not in s:
        return ("Too few bars with enough pools to rank the forecast across pools "
                f"({s.get('bars_with_min_pools', 0)} bars).", dict(s))
    head = int(s["horizon_headline"])
    er = _decomposition_value(d, "E[r]")
    drift = _decomposition_value(d, DRIFT)
    width = _decomposition_value(d, WIDTH_NEUTRAL)
    vol = _decomposition_value(d, VOL_NEUTRAL)
    timing = _decomposition_value(d, TIMING)
    width_alone = _decomposition_value(d, WIDTH_ALONE)
    vol_alone = _decomposition_value(d, VOL_ALONE)
    spreads = ev.spreads.loc["E[r]"] if "E[r]" in ev.spreads.index.get_level_values(0) else pd.DataFrame()
    best_h = int(s.get("best_horizon", head))
    ic_decay = ", ".join(f"{h} bar{'s' if h > 1 else ''} {row['ic']:+.3f}" for h, row in spreads.iterrows()) \
        if len(spreads) else "n/a"
    breakeven, charged = s.get("er_breakeven_per_side", np.nan), s.get("cost_per_side", np.nan)
    pays = "clears" if np.isfinite(breakeven) and np.isfinite(charged) and breakeven > charged else "does not clear"
    text = (
        f"Ranked across pools at each bar, the top group by the forecast's E[r] earns {_iv(*er[:3])} per bar "
        f"over the mean of all pools, gross, {head} bar after the fill (p = {s.get('null_p_er_top_minus_all', np.nan):.3f} "
        f"against forecasts shifted in time; rank IC {s.get('er_ic', np.nan):+.3f}, p = {s.get('null_p_er_ic', np.nan):.3f}). "
        f"The market itself drifted {_iv(*drift[:3])} per bar, shown apart (the spread is over the mean of all pools, "
        f"so the drift is not in it). Volatility explains much of it: ranking by past volatility alone gives "
        f"{_iv(*vol_alone[:3])} and by the forecast's width alone {_iv(*width_alone[:3])}; within terciles of width "
        f"E[r] keeps {_iv(*width[:3])}, within terciles of past volatility {_iv(*vol[:3])}. Timing (each pool's "
        f"forecast minus its own past mean) gives {_iv(*timing[:3])}. IC by horizon: {ic_decay}; the spread per bar "
        f"is largest at {best_h} bar{'s' if best_h > 1 else ''}. At the top group's turnover the breakeven cost is "
        f"{breakeven * 1e4:,.0f} bp per side at {head} bar against {charged * 1e4:,.0f} bp charged at the intended "
        f"size: the gross spread {pays} the cost.")
    facts = {"signal_spread_per_bar": er[0], "signal_spread_low": er[1], "signal_spread_high": er[2],
             "drift_per_bar": drift[0], "width_neutral_spread": width[0], "vol_neutral_spread": vol[0],
             "timing_spread": timing[0], "vol_alone_spread": vol_alone[0], "breakeven_per_side": breakeven,
             "cost_per_side": charged, "best_horizon": best_h,
             "null_p_spread": s.get("null_p_er_top_minus_all", np.nan)}
    return text, facts


def rule_statement(table: pd.DataFrame, best: str | None) -> str:
    if table.empty:
        return "No rule traded."
    if best is None:
        counts = ", ".join(f"{RULE_LABELS.get(r, r)} {int(row['round_trips'])}" for r, row in table.iterrows())
        return (f"No rule made enough round trips for an interval (round trips: {counts}); nothing can be said "
                "about what a rule realises after costs.")
    r = table.loc[best]
    above = "above" if r["mean_bar_net_low"] > 0 else "below" if r["mean_bar_net_high"] < 0 else "around"
    others = "; ".join(f"{RULE_LABELS.get(n, n)} {_iv(o['mean_bar_net'], o['mean_bar_net_low'], o['mean_bar_net_high'])}"
                       f"{' (too few round trips)' if o['too_few'] else ''}" for n, o in table.iterrows() if n != best)
    return (
        f"The best of {len(table)} rules by mean per-bar net return is {RULE_LABELS.get(best, best)}: "
        f"{_iv(r['mean_bar_net'], r['mean_bar_net_low'], r['mean_bar_net_high'])} per bar over {int(r['pools'])} pools "
        f"and {int(r['round_trips']):,} round trips, its interval {above} zero; the same decisions at zero cost "
        f"{_bp(r['mean_bar_gross'])}, so costs take {_bp(r['mean_bar_gross'] - r['mean_bar_net'])} per bar; its "
        f"yardstick ({r['yardstick']}) {_bp(r['mean_bar_yardstick'])}. Against a null of {r['p_basis']}: "
        f"p = {r['p_value']:.3f}. Deflated Sharpe {r['dsr']:.3f} at {int(r['trials'])} trials (the ledger's, with "
        f"those declared before). Other rules: {others or 'none'}.")


def verdict(results: pd.DataFrame, *, basket=None, evidence=None, trials: int, bar_seconds: int,
            bootstrap: BootstrapConfig) -> Verdict:
    """Both statements (module docstring) and the rules' table behind the second."""
    signal, facts = signal_statement(evidence)
    table = rules_evidence(results, basket, evidence, trials=trials, bar_seconds=bar_seconds, bootstrap=bootstrap)
    best = best_rule(table)
    facts.update({"best_rule": best, "rules": list(table.index)})
    if best is not None:
        r = table.loc[best]
        facts.update({"best_mean_bar_net": float(r["mean_bar_net"]), "best_low": float(r["mean_bar_net_low"]),
                      "best_high": float(r["mean_bar_net_high"]), "best_p_value": float(r["p_value"]),
                      "best_dsr": float(r["dsr"]), "trials": int(r["trials"])})
    return Verdict(signal, rule_statement(table, best), table, best, facts)


def verdict_display(table: pd.DataFrame) -> pd.DataFrame:
    """The rules' table as strings (bp per bar, intervals in brackets)."""
    rows = []
    for rule, r in table.iterrows():
        rows.append({"rule": RULE_LABELS.get(rule, rule), "pools": int(r["pools"]),
                     "round trips": f"{int(r['round_trips']):,}",
                     "net per bar": _iv(r["mean_bar_net"], r["mean_bar_net_low"], r["mean_bar_net_high"])
                     + (" (too few for an interval)" if r["too_few"] else ""),
                     "gross per bar": _bp(r["mean_bar_gross"]), "yardstick per bar": _bp(r["mean_bar_yardstick"]),
                     "yardstick": r["yardstick"], "p (null)": f"{r['p_value']:.3f}" if np.isfinite(r["p_value"]) else "n/a",
                     "DSR": f"{r['dsr']:.3f}" if np.isfinite(r["dsr"]) else "n/a", "trials": int(r["trials"])})
    return pd.DataFrame(rows).set_index("rule") if rows else pd.DataFrame()


__all__ = ["VERDICT_COLUMNS", "Verdict", "best_rule", "rule_round_trips", "rule_statement", "rules_evidence",
           "signal_statement", "verdict", "verdict_display"]
