"""Pools are the unit of partitioning (and of parallelism): one dynamic partition per pool id."""

from dagster import DynamicPartitionsDefinition

POOLS_PARTITION_NAME = "pools"
pool_partitions = DynamicPartitionsDefinition(name=POOLS_PARTITION_NAME)
