"""Where an output came from, named the same way everywhere: the database (never its credentials),
the data window, the model's folds and a hash of the settings that change results.

``config_hash`` is the ``q50_trials`` ledger's key too (lineage/portfolio/trials.py): a report, a
materialization's metadata and a trial with the same hash were made with the same result settings.
"""

from __future__ import annotations

import hashlib
import json

import pandas as pd
from q50_assets.settings import Settings, database_label

# Settings that change trades or returns: the bars used, the model, the signal rules, the trade
# features, the regimes, sizing, costs and fills.
RESULT_SECTIONS = ("timeframe", "ohlcv", "model", "signals", "trades", "nautilus_trader", "rules", "basket")
# Settings that change no trade: where files go, credentials, how runs are batched and automated,
# and the evaluation's yardsticks and intervals (evaluation.prior_configurations is a count of
# trials, not part of one).
EXCLUDED_SECTIONS = ("data_dir", "database", "evaluation", "signal_evidence", "automation", "batches", "execution")
# Inside the result sections: a URL with credentials, the switch that runs backtests at all, and
# the permutation test's draws (its null, not the strategy's returns).
EXCLUDED_KEYS = (
    ("nautilus_trader", "strategy_config", "database_uri"),
    ("nautilus_trader", "enabled"),
    ("nautilus_trader", "backtest", "permutations"),
    ("nautilus_trader", "backtest", "permutation_seed"),
)


def result_settings(settings: Settings) -> dict:
    """The settings that make a configuration (module docstring), as plain JSON values."""
    dumped = settings.model_dump(mode="json")
    unclassified = set(dumped) - set(RESULT_SECTIONS) - set(EXCLUDED_SECTIONS)
    if unclassified:
        raise ValueError(f"settings {sorted(unclassified)} are neither in RESULT_SECTIONS nor EXCLUDED_SECTIONS")
    out = {k: dumped[k] for k in RESULT_SECTIONS}
    for path in EXCLUDED_KEYS:
        node = out
        for key in path[:-1]:
            node = node[key]
        node.pop(path[-1], None)
    return out


def config_hash(settings: Settings) -> str:
    """sha256 of the result settings, keys sorted: equal settings give one hash whatever their order."""
    text = json.dumps(result_settings(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def window_label(start, end) -> str:
    """A data window as 'first to last' in UTC minutes, or 'none'."""
    if start is None or end is None or pd.isna(start) or pd.isna(end):
        return "none"
    fmt = "%Y-%m-%d %H:%M UTC"
    return f"{pd.Timestamp(start).tz_convert('UTC').strftime(fmt)} to {pd.Timestamp(end).tz_convert('UTC').strftime(fmt)}"


def model_folds_label(model) -> str | None:
    """The walk-forward folds behind a trained model's out-of-sample predictions (and its run):
    'N folds, boundaries first to last (model run R)'; None without a model."""
    if model is None or getattr(model, "result", None) is None:
        return None
    folds = model.result.folds
    if folds is None or not len(folds):
        return f"no fold (model run {model.run_id})"
    return (f"{len(folds)} folds, boundaries {window_label(folds['boundary'].min(), folds['boundary'].max())} "
            f"(model run {model.run_id})")


def provenance(settings: Settings, *, window: tuple | None = None, model_folds: str | None = None,
               run_id: str | None = None) -> dict[str, str]:
    """The provenance every report and materialization names (module docstring), as strings."""
    out = {"database": database_label(settings.database_url), "timeframe": settings.timeframe,
           "config_hash": config_hash(settings)[:12]}
    if window is not None:
        out["data_window"] = window_label(*window)
    if model_folds is not None:
        out["model_folds"] = model_folds
    if run_id is not None:
        out["run_id"] = run_id
    return out


def provenance_metadata(settings: Settings, **kwargs) -> dict[str, str]:
    """:func:`provenance` as materialization metadata: one ``made_from_<key>`` entry each."""
    return {f"made_from_{k}": v for k, v in provenance(settings, **kwargs).items()}


__all__ = ["EXCLUDED_KEYS", "EXCLUDED_SECTIONS", "RESULT_SECTIONS", "config_hash", "database_label", "model_folds_label",
           "provenance", "provenance_metadata",
           "result_settings", "window_label"]
