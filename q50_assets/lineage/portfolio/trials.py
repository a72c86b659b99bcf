"""The trial ledger's rules (pure; the ``q50_trials`` table is written through the port
``ProjectTableStore.record_trials``): which settings make a configuration, its hash, the rows one
run adds, and the deflated Sharpe's trial count.

**A configuration** is every setting that can change a backtest's trades or returns. The hash
covers the sections in :data:`RESULT_SECTIONS` minus the keys in :data:`EXCLUDED_KEYS`; the
sections in :data:`EXCLUDED_SECTIONS` never enter it. Every top-level setting must be in one of
the two lists (a test enforces it), so a new section cannot slip in unclassified.

**A window** is the out-of-sample span a configuration was evaluated on: the first and last bar
close of the pools' stored per-bar returns.

**The trial count** for the deflated Sharpe on a window W: the distinct (configuration hash,
variant) pairs in the ledger whose window overlaps W (they were judged on some of the same
bars: choosing among them is selection on this data), plus ``evaluation.prior_configurations``
(configurations tried elsewhere, declared by hand).
"""

from __future__ import annotations


import numpy as np
import pandas as pd

from q50_assets.lineage.backtest.step import GROSS_VARIANTS

from q50_assets.lineage.common.uncertainty import equal_weight_portfolio
from q50_assets.settings import Settings

from q50_assets.lineage.common.provenance import (EXCLUDED_KEYS, EXCLUDED_SECTIONS, RESULT_SECTIONS,  # noqa: F401
                                                   config_hash, result_settings)

Q50_PREFIX = "q50"


TRIAL_COLUMNS = ("config_hash", "timeframe", "window_start", "window_end", "variant", "pools", "round_trips",
                 "mean_round_trip_return", "mean_bar_return", "sharpe", "settings")


def trial_rows(bar_returns: dict[str, pd.DataFrame], settings: Settings, round_trips: pd.DataFrame | None = None,
               round_trip_counts: pd.DataFrame | None = None,
               portfolios: dict[str, tuple[pd.Series, int]] | None = None) -> pd.DataFrame:
    """One row per q50 variant of this run (q50, q50_close, the reserve sensitivity: each is a
    configuration judged on the data) over the pools' stored per-bar returns: the window, the
    equal-weight portfolio's mean per-bar return and annualised Sharpe (the headline's series),
    round trips (``round_trip_counts``: pool x variant) and the mean net return per round trip
    (q50 only: its round trips are the ones stored). The zero-cost replays of a rule's decisions
    are not configurations of their own. ``portfolios``: rules judged as one portfolio (the top-k
    basket: name -> (its per-bar returns, pools it chose from)), one row each on their own window."""
    if not bar_returns and not portfolios:
        return pd.DataFrame(columns=list(TRIAL_COLUMNS))
    portfolio = equal_weight_portfolio(bar_returns) if bar_returns else pd.DataFrame()
    times = portfolio.index
    bars_per_year = 365 * 24 * 3600 / settings.bar_seconds
    digest, included = config_hash(settings), result_settings(settings)
    rows = []
    for variant in [c for c in portfolio.columns if str(c).startswith(Q50_PREFIX) and c not in GROSS_VARIANTS]:
        p = portfolio[variant].to_numpy(dtype=np.float64)
        sd = p.std(ddof=1) if len(p) > 1 else np.nan
        trips = np.nan
        if round_trip_counts is not None and variant in round_trip_counts.columns:
            trips = int(round_trip_counts[variant].fillna(0).sum())
        mean_trip = np.nan
        if variant == Q50_PREFIX and round_trips is not None and len(round_trips):
            mean_trip = float(round_trips["net_return"].mean())
            trips = len(round_trips) if pd.isna(trips) else trips
        rows.append({"config_hash": digest, "timeframe": settings.timeframe, "window_start": times.min(),
                     "window_end": times.max(), "variant": str(variant), "pools": len(bar_returns),
                     "round_trips": trips, "mean_round_trip_return": mean_trip, "mean_bar_return": float(p.mean()),
                     "sharpe": float(p.mean() / sd * np.sqrt(bars_per_year)) if sd > 0 else np.nan,
                     "settings": included})
    for name, (returns, pools) in (portfolios or {}).items():
        p = returns.to_numpy(dtype=np.float64)
        if not len(p):
            continue
        sd = p.std(ddof=1) if len(p) > 1 else np.nan
        rows.append({"config_hash": digest, "timeframe": settings.timeframe, "window_start": returns.index.min(),
                     "window_end": returns.index.max(), "variant": name, "pools": int(pools),
                     "round_trips": np.nan, "mean_round_trip_return": np.nan, "mean_bar_return": float(p.mean()),
                     "sharpe": float(p.mean() / sd * np.sqrt(bars_per_year)) if sd > 0 else np.nan,
                     "settings": included})
    return pd.DataFrame(rows, columns=list(TRIAL_COLUMNS))


def count_trials(ledger: pd.DataFrame, prior_configurations: int) -> dict[str, int]:
    """The deflated Sharpe's N from the ledger's trials on overlapping windows (module docstring)."""
    pairs = int(ledger[["config_hash", "variant"]].drop_duplicates().shape[0]) if len(ledger) else 0
    configurations = int(ledger["config_hash"].nunique()) if len(ledger) else 0
    return {"ledger_trials": pairs, "ledger_configurations": configurations,
            "prior_configurations": int(prior_configurations), "trials": max(1, pairs + int(prior_configurations))}


__all__ = ["EXCLUDED_KEYS", "EXCLUDED_SECTIONS", "RESULT_SECTIONS", "TRIAL_COLUMNS", "config_hash", "count_trials",
           "result_settings", "trial_rows"]
