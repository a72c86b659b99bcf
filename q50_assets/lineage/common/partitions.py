"""Pools are the unit of partitioning (and of parallelism): one dynamic partition per pool id.

Runs cover a range of pools (a batch): ``build_definitions`` gives the per-pool assets a
backfill policy of ``batches.pools_per_run`` pools per run.
"""

from collections.abc import Iterable, Sequence

from dagster import DynamicPartitionsDefinition

POOLS_PARTITION_NAME = "pools"
pool_partitions = DynamicPartitionsDefinition(name=POOLS_PARTITION_NAME)


def pool_batches(ordered: Sequence[str], wanted: Iterable[str], pools_per_run: int) -> list[list[str]]:
    """The wanted pools as contiguous ranges of ``ordered`` (partition order), each at most
    ``pools_per_run`` long: a pool between two wanted ones that is not wanted splits the range,
    so no run touches a pool it was not asked for."""
    if pools_per_run < 1:
        raise ValueError(f"pools_per_run must be >= 1, got {pools_per_run}")
    wanted = set(wanted)
    unknown = wanted - set(ordered)
    if unknown:
        raise ValueError(f"pools without a partition: {sorted(unknown)[:5]}")
    batches: list[list[str]] = []
    current: list[str] = []
    for pool_id in ordered:
        if pool_id in wanted and len(current) < pools_per_run:
            current.append(pool_id)
            continue
        if current:
            batches.append(current)
        current = [pool_id] if pool_id in wanted else []
    if current:
        batches.append(current)
    return batches
