"""The lineage's batch steps for a set of pools, without Dagster: the yardstick a run through
Dagster is compared with (``python -m benchmarks``: the core stages, the scale curve and the
nightly's functions side), so Dagster's share of a run's time can be told from the work itself.

It runs what the assets run, in the order of :data:`q50_assets.lineage.STEPS`: each stage's batch
step, a batch of pools at a time (``batches.pools_per_run``), every value written to and read back
from the store its asset uses (the same IO managers' ``store_values`` / ``load_values``, looked up
from the Definitions' assets), so both sides do the same work on the same storage. What it does
not do is Dagster's part: runs, events, per-pool metadata and check results. Of the pooled stages
after the pools' backtests, the signal evidence and the basket run here too (their values are kept
in ``FunctionsRun.evidence`` and ``FunctionsRun.basket``); the portfolio stage reads every pool's
latest backtest and writes the report; it is left to Dagster.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from dagster import AssetKey

from q50_assets.lineage import STEPS, Phase, assets_definitions
from q50_assets.lineage.backtest.step import backtest_step
from q50_assets.lineage.basket.step import basket_step
from q50_assets.lineage.common.gate import Blocked
from q50_assets.lineage.common.partitions import pool_batches
from q50_assets.lineage.features.step import features_step
from q50_assets.lineage.model.step import model_step
from q50_assets.lineage.ohlcv.step import ohlcv_step
from q50_assets.lineage.regimes.step import regimes_step
from q50_assets.lineage.signal_evidence.step import evidence_step
from q50_assets.lineage.signals.step import signals_step
from q50_assets.lineage.trades.step import trades_step
from q50_assets.lineage.trading_history.step import history_step
from q50_assets.settings import Settings

@dataclass
class FunctionsRun:
    """What the run computed: per stage the seconds spent, and the counts a benchmark reports."""

    seconds: dict[str, float] = field(default_factory=dict)
    validated: dict = field(default_factory=dict)  # pool -> ValidatedBars
    analyses: dict = field(default_factory=dict)  # pool -> TradeAnalysis or Blocked
    model: object = None  # TrainedQ50Model
    results: dict = field(default_factory=dict)  # pool -> PoolBacktest or Blocked
    trading_history_rows: int = 0
    basket: object = None  # BasketResult of every pool run
    evidence: object = None  # SignalEvidenceResult


def stores_of(resources: Mapping[str, object]) -> dict[str, object]:
    """Asset -> the store (IO manager resource) its values are written to, as the Definitions say."""
    out = {}
    for assets_def in assets_definitions():
        for key in assets_def.keys:
            out[key.to_user_string()] = resources[assets_def.get_io_manager_key_for_asset_key(AssetKey(key.path))]
    return out


def run_without_dagster(pool_ids: list[str], resources: Mapping[str, object], settings: Settings,
                        run_id: str = "functions") -> FunctionsRun:
    """Every stage up to the trading history for ``pool_ids`` (see the module doc); ``resources``
    are the Definitions' (``build_resources``). A stage's seconds include reading its inputs
    back and storing its output, as a Dagster step's do."""
    run = FunctionsRun(seconds={s.asset: 0.0 for s in STEPS})

    def call(stage: str, fn, *args):
        started = time.perf_counter()
        out = fn(*args)
        run.seconds[stage] += time.perf_counter() - started
        return out

    stores = stores_of(resources)
    collector, tables, store = resources["collector"], resources["project_tables"], resources["qlib_store"]

    def keep(asset: str, values: dict) -> None:
        call(asset, stores[asset].store_values, asset, values)

    def load(asset: str, batch: list[str], into: str) -> dict:
        return call(into, stores[asset].load_values, asset, batch)

    batches = pool_batches(pool_ids, pool_ids, settings.batches.pools_per_run)
    for phase in Phase:
        if phase == Phase.BEFORE_MODEL:
            for batch in batches:
                validated, _states = call("ohlcv_bars", ohlcv_step, batch, collector, settings)
                keep("ohlcv_bars", validated)
                run.validated.update(validated)
                analyses = call("pool_trades", trades_step, load("ohlcv_bars", batch, "pool_trades"), store, collector,
                                settings)
                keep("pool_trades", analyses)
                run.analyses.update(analyses)
                frames, *_ = call("qlib_features", features_step, load("ohlcv_bars", batch, "qlib_features"), store,
                                  collector, tables, settings)
                keep("qlib_features", frames)
                regimes, _ = call("regime_labels", regimes_step, load("qlib_features", batch, "regime_labels"), settings)
                keep("regime_labels", regimes)
        elif phase == Phase.MODEL:
            run.model = call("q50_model", model_step, store, settings, run_id, collector)
        elif phase == Phase.AFTER_MODEL:
            for batch in batches:
                signals, _ = call("q50_signals", signals_step, run.model, load("qlib_features", batch, "q50_signals"),
                                  collector, settings)
                keep("q50_signals", signals)
                inputs = [load(asset, batch, "backtest_results") for asset in ("ohlcv_bars", "q50_signals", "regime_labels")]
                results = call("backtest_results", backtest_step, *inputs, collector, settings, f"{run_id}-{batch[0]}",
                               resources.get("signal_db")).results
                keep("backtest_results", results)
                run.results.update(results)
                histories = call("q50_trading_history", history_step, results, collector,
                                 settings.nautilus_trader.risk_management.use_existing_feature_vectors)
                run.trading_history_rows += sum(call("q50_trading_history", stores["q50_trading_history"].store_values,
                                                     "q50_trading_history", histories).values())
        elif phase == Phase.PORTFOLIO:
            # The pooled signal evidence over every pool's stored bars and signals, as its asset reads them.
            run.evidence = call("signal_evidence", evidence_step, load("ohlcv_bars", pool_ids, "signal_evidence"),
                                load("q50_signals", pool_ids, "signal_evidence"), settings)
            # The pooled basket over every pool's stored bars and signals, as its asset reads them.
            ohlcv, signals = load("ohlcv_bars", pool_ids, "basket_backtest"), load("q50_signals", pool_ids,
                                                                                  "basket_backtest")
            run.basket = call("basket_backtest", basket_step, ohlcv, signals, collector, settings, run_id)
    run.seconds = {k: round(v, 3) for k, v in run.seconds.items() if v}
    return run


def q50_fills(run: FunctionsRun) -> dict[str, int]:
    """Per pool whose backtest ran, the Q50 strategy's fills."""
    return {p: len(r.outcomes["q50"].fills) for p, r in run.results.items()
            if not isinstance(r, Blocked) and r.status == "ok"}
