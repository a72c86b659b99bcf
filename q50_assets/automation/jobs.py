"""Named jobs."""

from dagster import AssetSelection, define_asset_job

# Everything downstream of the collector for the pools (partitions) a run is given.
refresh_pool_job = define_asset_job(
    "refresh_pool",
    selection=AssetSelection.all(),
    description="OHLCV (and, as stages are added, everything downstream) for one pool.",
)
