"""Materialize the whole asset graph for a set of pools, in this process, through Dagster.

What ``q50 demo``, the benchmarks (P1, P5) and tests run: the graph's own assets in its
dependency order, in batch runs of the graph's jobs - bars, features and regimes per batch of
pools; the pooled model; signals, backtests and trading history per batch; the portfolio. Every
run, materialization and check is recorded in the instance, as if the daemon had launched them.
No stage is computed here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dagster import AssetKey, DagsterInstance, Definitions

from q50_assets.automation.jobs import MODEL_DEPENDENT_ASSETS, NEEDS_NO_MODEL_ASSETS
from q50_assets.automation.runs import execute_batches

QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}

# (phase name, what it covers) in the order the graph needs them.
PHASES = (
    ("bars, features, regimes", NEEDS_NO_MODEL_ASSETS),
    ("model", ("q50_model",)),
    ("signals, backtests, trading history", MODEL_DEPENDENT_ASSETS),
    ("portfolio", ("backtest_portfolio",)),
)


@dataclass
class PhaseRun:
    name: str
    seconds: float = 0.0
    results: list = field(default_factory=list)  # Dagster's ExecuteInProcessResult per run

    @property
    def succeeded(self) -> bool:
        return bool(self.results) and all(r.success for r in self.results)


@dataclass
class LineageRun:
    pools: list[str]
    phases: dict[str, PhaseRun] = field(default_factory=dict)

    def results(self) -> list:
        return [r for phase in self.phases.values() for r in phase.results]


ProgressFn = Callable[[str, int, int], None]  # (phase, pools done, pools in phase)


def materialize_lineage(defs: Definitions, instance: DagsterInstance, pools: Sequence[str], pools_per_run: int,
                        run_config: dict | None = QUIET, progress: ProgressFn | None = None,
                        phases: Sequence[str] | None = None, tags: dict | None = None) -> LineageRun:
    """Every asset for ``pools`` (registered partitions), ``pools_per_run`` pools per run.

    ``phases`` restricts to some of :data:`PHASES` by name. The per-pool phases go on when one
    pool is blocked (the gate is in the data); a run that fails outright is in the results.
    """
    refresh = defs.resolve_job_def("refresh_pools")
    run = LineageRun(list(pools))
    for name, assets in PHASES:
        if phases is not None and name not in phases:
            continue
        phase = run.phases[name] = PhaseRun(name)
        started = time.perf_counter()
        if name == "model":
            phase.results.append(defs.resolve_job_def("train_q50_model").execute_in_process(
                instance=instance, run_config=run_config, tags=tags, raise_on_error=False))
        elif name == "portfolio":
            phase.results.append(defs.resolve_job_def("portfolio_summary").execute_in_process(
                instance=instance, run_config=run_config, tags=tags, raise_on_error=False))
        else:
            done = 0

            def on_batch(batch, _result, name=name):
                nonlocal done
                done += len(batch)
                if progress:
                    progress(name, done, len(pools))

            phase.results = execute_batches(refresh, instance, pools, pools_per_run, [AssetKey(a) for a in assets],
                                            run_config=run_config, tags=tags, on_batch=on_batch)
        phase.seconds = time.perf_counter() - started
        if name == "model" and progress:
            progress(name, len(pools), len(pools))
        if name == "model" and not phase.succeeded:
            break  # nothing downstream can run without a model
    return run
