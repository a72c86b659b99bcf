"""The lineage's stages, in graph order: the one list of them.

Jobs, sensors, the Definitions, the demo's run queue and the benchmarks all read the stages and
their order from :data:`STEPS`; none keeps a list of its own. Import-light on purpose: names and
module paths only, so the pure rules of a stage can import their package without loading Dagster
or any other stage. :func:`assets_definitions` imports the assets when they are needed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from enum import Enum


class Phase(Enum):
    """When a stage runs relative to the pooled model (in this order)."""

    BEFORE_MODEL = "bars, trades, features, regimes"
    MODEL = "model"
    AFTER_MODEL = "signals, backtests, trading history"
    PORTFOLIO = "portfolio"


@dataclass(frozen=True)
class Step:
    asset: str  # the asset key
    package: str  # the stage's folder under q50_assets/lineage (its asset.py defines the asset)
    per_pool: bool  # partitioned by pool (run in batches of pools) or pooled across every pool
    phase: Phase
    definition: str = ""  # the AssetsDefinition's name in the asset module when it is not ``asset``

    @property
    def module(self) -> str:
        return f"{__name__}.{self.package}.asset"

    @property
    def definition_name(self) -> str:
        return self.definition or self.asset


STEPS: tuple[Step, ...] = (
    Step("ohlcv_bars", "ohlcv", per_pool=True, phase=Phase.BEFORE_MODEL),
    Step("pool_trades", "trades", per_pool=True, phase=Phase.BEFORE_MODEL),
    Step("qlib_features", "features", per_pool=True, phase=Phase.BEFORE_MODEL),
    Step("regime_labels", "regimes", per_pool=True, phase=Phase.BEFORE_MODEL),
    Step("q50_model", "model", per_pool=False, phase=Phase.MODEL),
    Step("q50_signals", "signals", per_pool=True, phase=Phase.AFTER_MODEL),
    Step("backtest_results", "backtest", per_pool=True, phase=Phase.AFTER_MODEL),
    # The trading history is the fills of the backtest's engines: one step writes both (the fills
    # are never held twice), so its asset is an output of the backtest's multi-asset.
    Step("q50_trading_history", "backtest", per_pool=True, phase=Phase.AFTER_MODEL, definition="backtest_results"),
    # What the signal earns before any rule, across pools: pooled, after the signals; the portfolio's
    # report shows it beside what the rule realised.
    Step("signal_evidence", "signal_evidence", per_pool=False, phase=Phase.PORTFOLIO),
    # Pooled across pools after their signals: with the portfolio (the unpartitioned phase).
    Step("basket_backtest", "basket", per_pool=False, phase=Phase.PORTFOLIO),
    Step("backtest_portfolio", "portfolio", per_pool=False, phase=Phase.PORTFOLIO),
)


def assets_of(phase: Phase) -> tuple[str, ...]:
    """The asset keys of ``phase``, in lineage order."""
    return tuple(s.asset for s in STEPS if s.phase == phase)


def pool_assets() -> tuple[str, ...]:
    """The per-pool asset keys, in lineage order."""
    return tuple(s.asset for s in STEPS if s.per_pool)


def assets_definitions() -> list:
    """The AssetsDefinitions of :data:`STEPS`, each once, in lineage order (imported here, not at
    import of this package: the stage modules import Dagster, storage and their libraries)."""
    out: list = []
    for step in STEPS:
        definition = getattr(importlib.import_module(step.module), step.definition_name)
        if not any(d is definition for d in out):
            out.append(definition)
    return out
