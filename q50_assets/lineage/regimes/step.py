"""Stage 4 - regime labels per pool: volatility regime from past-only percentiles of ``vol_risk``,
momentum regime from RSI / MACD / Bollinger, and the size multiplier and threshold adjustment the
backtest applies. The rules are :mod:`q50_assets.lineage.regimes.rules`.

Regimes read the feature stage's indicators (the plan's ``use_existing_indicators``), not the
signals, so a model retrain does not change them.
"""

from __future__ import annotations

import pandas as pd

from q50_assets.lineage.regimes.rules import REGIME_LABELS, RegimeConfig, detect_regimes
from q50_assets.lineage.common.batch import (
    each,
)
from q50_assets.lineage.common.gate import Blocked
from q50_assets.settings import Settings

STAGE = "regime_labels"


def pool_regimes(features: pd.DataFrame, config: RegimeConfig) -> pd.DataFrame:
    """One pool's regime rows (index open_time) from its feature frame."""
    columns = [*config.required_columns(), "is_warmup", "is_filled"]
    return detect_regimes(features[columns], config)


def check_regimes(regimes: pd.DataFrame, bar: pd.Timedelta) -> dict[str, pd.DatetimeIndex]:
    """Offending rows per rule: unknown labels, bad multipliers, labels known before the bar closed."""
    numbers = regimes[["position_multiplier", "threshold_adjustment"]]
    return {
        "bad_label": regimes.index[~regimes["regime"].isin(REGIME_LABELS)],
        "bad_number": regimes.index[~((numbers >= 0) & numbers.notna() & (numbers < float("inf"))).all(axis=1)],
        "early": regimes.index[regimes["known_at"] < regimes.index + bar],
    }


def regimes_step(features: dict, settings: Settings, progress=None
                 ) -> tuple[dict[str, pd.DataFrame | Blocked], dict[str, dict]]:
    """A batch of pools' regimes; a pool failing a rule is blocked (its rows never reach the
    table). Returns (regimes or Blocked per pool, offending rows per rule per computed pool)."""
    config = RegimeConfig.of(settings)
    bar = pd.Timedelta(seconds=settings.bar_seconds)
    out, outcomes = {}, {}
    for pool_id, frame in each(features.items(), progress):
        if isinstance(frame, Blocked):
            out[pool_id] = frame
            continue
        regimes = pool_regimes(frame, config)
        bad = outcomes[pool_id] = check_regimes(regimes, bar)
        failed = [name for name, rows in (("labels_allowed", bad["bad_label"].union(bad["bad_number"])),
                                          ("known_at_after_bar_close", bad["early"])) if len(rows)]
        out[pool_id] = Blocked(pool_id, STAGE, f"checks failed: {', '.join(failed)}") if failed else regimes
    return out, outcomes
