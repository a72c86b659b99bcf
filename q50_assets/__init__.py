"""q50_assets: a Dagster lineage from a GeckoTerminal collector database to Q50 backtests."""
