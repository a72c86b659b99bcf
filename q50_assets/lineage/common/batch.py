"""What every batched asset shares: the pools of the run, per-pool metadata, per-pool check
results, progress. Glue only.

A run covers a range of pool partitions (``context.partition_keys``); each pool still gets its
own materialization metadata and its own result for every check, recorded against that pool's
partition (the check specs carry the pools partitions), so the UI shows which pools fail which
check. Per-pool check results are ``AssetCheckEvaluation`` events with ``partition`` set: an
``AssetCheckResult`` in a run over several partitions would be recorded for no partition at all.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
from dagster import (
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    DagsterEventType,
    MetadataValue,
    Output,
    PreviewWarning,
)
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluation,
    AssetCheckEvaluationTargetMaterializationData,
)

from q50_assets.lineage.common.partitions import pool_partitions
from q50_assets.lineage.common.gate import Blocked

# Progress of a batch, for whoever drives runs in-process (q50 demo, the benchmarks): one record
# per reporting step, with extra fields stage / done / total.
progress_log = logging.getLogger("q50_assets.progress")


def pool_check_spec(asset: str, name: str, description: str, blocks_pool: bool) -> AssetCheckSpec:
    """A check evaluated per pool. ``blocks_pool``: a failure keeps the pool out of every downstream
    stage (in the data; the run and the other pools of its batch go on)."""
    with warnings.catch_warnings():  # partitioned check specs are a preview feature in Dagster 1.13
        warnings.simplefilter("ignore", PreviewWarning)
        return AssetCheckSpec(name, asset=asset, description=description + (" Blocks the pool downstream."
                                                                             if blocks_pool else " Warning only."),
                              partitions_def=pool_partitions, blocking=False,
                              metadata={"blocks_pool_downstream": blocks_pool})


def meta_value(value):
    """A plain value as Dagster metadata (lists and dicts as JSON, None as text)."""
    if isinstance(value, MetadataValue):
        return value
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (list, dict, tuple)):
        return MetadataValue.json(list(value) if isinstance(value, tuple) else value)
    if value is None:
        return MetadataValue.text("none")
    if isinstance(value, bool | int | float | str):
        return value
    return MetadataValue.text(str(value))


def add_pool_metadata(context: AssetExecutionContext, pool_id: str, metadata: Mapping, asset: str | None = None) -> None:
    context.add_asset_metadata({k: meta_value(v) for k, v in metadata.items()}, partition_key=pool_id,
                               asset_key=AssetKey(asset) if asset else None)


def blocked_metadata(blocked: Blocked) -> dict:
    return {"pool_id": blocked.pool_id, "status": "blocked", "blocked_by": blocked.stage, "reason": blocked.reason}


class PoolChecks:
    """Collects one batch's per-pool check results; :meth:`events` emits them after the output
    (so each result points at the materialization of its pool that the run just recorded)."""

    def __init__(self, context: AssetExecutionContext):
        self.context = context
        self.results: list[tuple[str, str, str, bool, AssetCheckSeverity, dict, str | None]] = []
        self.selected = {(k.asset_key.to_user_string(), k.name) for k in context.selected_asset_check_keys}

    def add(self, asset: str, name: str, pool_id: str, passed: bool, metadata: Mapping, blocks_pool: bool = True,
            description: str | None = None) -> None:
        severity = AssetCheckSeverity.ERROR if blocks_pool else AssetCheckSeverity.WARN
        self.results.append((asset, name, pool_id, bool(passed), severity,
                             {"pool_id": pool_id, **{k: meta_value(v) for k, v in metadata.items()}}, description))

    def failed(self, pool_id: str, blocking_only: bool = True) -> list[str]:
        return [name for _, name, p, passed, severity, _, _ in self.results
                if p == pool_id and not passed and (severity == AssetCheckSeverity.ERROR or not blocking_only)]

    def events(self) -> Iterator:
        context = self.context
        assets_def = context.assets_def
        # Every selected check's output once (Dagster expects them); the results follow per pool.
        for spec in assets_def.check_specs:
            if (spec.asset_key.to_user_string(), spec.name) in self.selected:
                yield Output(None, output_name=assets_def.get_output_name_for_asset_check_key(spec.key))
        targets = {}
        for asset in {r[0] for r in self.results}:
            targets[asset] = context.instance.event_log_storage.get_latest_storage_id_by_partition(
                AssetKey(asset), DagsterEventType.ASSET_MATERIALIZATION, {r[2] for r in self.results if r[0] == asset})
        now = time.time()
        for asset, name, pool_id, passed, severity, metadata, description in self.results:
            if (asset, name) not in self.selected:
                continue
            storage_id = targets[asset].get(pool_id)
            target = (AssetCheckEvaluationTargetMaterializationData(run_id=context.run.run_id, storage_id=storage_id,
                                                                    timestamp=now) if storage_id else None)
            yield AssetCheckEvaluation(asset_key=AssetKey(asset), check_name=name, passed=passed, metadata=metadata,
                                       target_materialization_data=target, severity=severity,
                                       description=description, blocking=False, partition=pool_id)


def report_progress(context: AssetExecutionContext | None, stage: str, done: int, total: int) -> None:
    """One batch's progress (pools done of the batch) to the run's log and the progress logger."""
    progress_log.info("%s: %d/%d pools", stage, done, total, extra={"stage": stage, "done": done, "total": total})
    if context is not None and (done == total or done % 25 == 0):
        context.log.debug(f"{stage}: {done}/{total} pools of this run")


def progress_callback(context: AssetExecutionContext | None, stage: str, total: int):
    def callback(done: int) -> None:
        report_progress(context, stage, done, total)
    return callback


def each(items: Iterable, callback=None) -> Iterator:
    """Iterate, calling ``callback(done)`` after every item."""
    for i, item in enumerate(items, 1):
        yield item
        if callback is not None:
            callback(i)


def fallback_metadata(fallback) -> dict:
    """The batch's assumed reserve (``lineage/common/costs.py FallbackReserve``) as asset metadata:
    its value as a number (plotted across runs), how it was made and from how many pools."""
    if fallback is None:
        return {"fallback_reserve": "not computed (no pool to price)"}
    return {"fallback_reserve_usd": (MetadataValue.float(float(fallback.usd)) if fallback.usd is not None
                                     else "none (no impact)"),
            "fallback_reserve_statistic": fallback.statistic,
            "fallback_reserve_pools": int(fallback.pools),
            "fallback_reserve_observations": int(fallback.observations),
            "fallback_reserve": fallback.describe()}
