"""Pools are the unit of partitioning (and of parallelism): one dynamic partition per pool id.

Runs cover a range of pools (a batch): ``build_definitions`` gives the per-pool assets a
backfill policy of ``batches.pools_per_run`` pools per run.
"""

from dagster import DynamicPartitionsDefinition

POOLS_PARTITION_NAME = "pools"
pool_partitions = DynamicPartitionsDefinition(name=POOLS_PARTITION_NAME)
