"""How pools become runs: contiguous ranges of pool partitions, at most ``pools_per_run`` each.

A run covers a range of partitions (run tags ``dagster/asset_partition_range_start`` / ``_end``);
dynamic partitions are ordered by when they were added, so a range is the pools registered
between two keys. The sensor's refresh of a handful of pools, the nightly refresh of every pool,
Dagster's own backfills and ``q50 demo`` all execute the same batched asset bodies this way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

from dagster import AssetKey, DagsterInstance, RunRequest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from q50_assets.lineage.common.partitions import POOLS_PARTITION_NAME, pool_batches  # noqa: F401  (the runs' batches)


def range_tags(batch: Sequence[str]) -> dict[str, str]:
    return {ASSET_PARTITION_RANGE_START_TAG: batch[0], ASSET_PARTITION_RANGE_END_TAG: batch[-1]}


def batch_run_requests(ordered: Sequence[str], wanted: Iterable[str], pools_per_run: int,
                       selection: Sequence[AssetKey], tags: dict[str, str],
                       run_key: Callable[[list[str]], str] | None = None,
                       job_name: str | None = None) -> list[RunRequest]:
    """One run request per batch of ``wanted`` pools (see :func:`pool_batches`); ``job_name`` when
    the requester targets several jobs."""
    return [
        RunRequest(run_key=run_key(batch) if run_key else None, asset_selection=list(selection), job_name=job_name,
                   tags={**tags, **range_tags(batch), "q50/pools": str(len(batch))})
        for batch in pool_batches(ordered, wanted, pools_per_run)
    ]


def digest(parts: Iterable[str]) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def registered_pools(instance: DagsterInstance) -> list[str]:
    """Every pool partition, in partition (registration) order."""
    return list(instance.get_dynamic_partitions(POOLS_PARTITION_NAME))


def request_pools(tags: dict[str, str], ordered: Sequence[str]) -> list[str]:
    """The pools a batch run covers: its partition range in ``ordered`` (partition order)."""
    start = ordered.index(tags[ASSET_PARTITION_RANGE_START_TAG])
    end = ordered.index(tags[ASSET_PARTITION_RANGE_END_TAG])
    return list(ordered[start:end + 1])
