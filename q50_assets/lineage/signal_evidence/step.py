"""The signal evidence stage's step, no Dagster: every pool's validated bars and stored signals
in, the forecast's evidence before any rule out (:mod:`q50_assets.lineage.signal_evidence.rules`).
Pools blocked upstream (unsafe bars, or no signal rows) are counted, never silently dropped."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from q50_assets.lineage.common.gate import Blocked
from q50_assets.lineage.signal_evidence.rules import (
    SignalEvidence,
    SignalEvidenceConfig,
    evidence_panel,
    evidence_pngs,
    signal_evidence,
)
from q50_assets.settings import Settings

STAGE = "signal_evidence"


@dataclass
class SignalEvidenceResult:
    """The stage's output: the evidence, its pictures, the pools left out and why, the cost yardstick."""

    evidence: SignalEvidence
    config: SignalEvidenceConfig
    pngs: dict[str, bytes]
    pools_used: int
    pools_left_out: dict[str, str]  # pool -> why
    seconds: float


def cost_per_side(signals: Mapping[str, pd.DataFrame]) -> float:
    """What the one cost model charges per side at the signals' intended size: half the median
    round-trip ``expected_cost_fraction`` over rows with an intended size (all rows if none)."""
    frames = [f for f in signals.values() if f is not None and len(f) and "expected_cost_fraction" in f]
    if not frames:
        return float("nan")
    rows = pd.concat([f[["expected_cost_fraction", "intended_notional_usd"]] for f in frames])
    sized = rows[rows["intended_notional_usd"] > 0]
    use = sized if len(sized) else rows
    return float(np.nanmedian(use["expected_cost_fraction"].to_numpy(dtype=np.float64)) / 2)


def evidence_step(bars: Mapping[str, object], signals: Mapping[str, pd.DataFrame],
                  settings: Settings) -> SignalEvidenceResult:
    """``bars``: per pool the ohlcv stage's ValidatedBars (or Blocked); ``signals``: per pool its
    stored signal rows (index bar open)."""
    started = time.perf_counter()
    config = SignalEvidenceConfig.of(settings)
    usable_bars, left_out = {}, {}
    for pool_id, value in bars.items():
        if isinstance(value, Blocked):
            left_out[pool_id] = f"blocked by {value.stage}: {value.reason}"
        elif not getattr(value, "safe", True):
            left_out[pool_id] = f"bars failed blocking checks: {', '.join(value.blocking_failures)}"
        else:
            usable_bars[pool_id] = getattr(value, "bars", value)
    usable_signals = {}
    for pool_id, frame in signals.items():
        if pool_id not in usable_bars:
            left_out.setdefault(pool_id, "no usable bars")
        elif frame is None or not len(frame):
            left_out[pool_id] = "no signal rows (blocked at the signals stage or before)"
        else:
            usable_signals[pool_id] = frame
    panel = evidence_panel(usable_bars, usable_signals, config)
    evidence = signal_evidence(panel, config, cost_per_side(usable_signals))
    return SignalEvidenceResult(evidence, config, evidence_pngs(evidence), len(usable_signals), left_out,
                                time.perf_counter() - started)
