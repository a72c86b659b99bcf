"""The GeckoTerminal collector's tables, as its PostgreSQL models define them.

Names, types and keys follow the collector (snogcel/geckoterminal_collector,
``database/postgresql_models.py``). This project only READS these tables; the one
exception is :mod:`q50_assets.db.sample_loader`, which plays the collector. They live
in their own ``MetaData`` so Alembic never sees them: our migrations cannot create,
alter or drop a collector table.

Prices are mapped with ``asdecimal=False`` so reads give floats on both backends.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from q50_assets.db.types import JsonB, TimestampTZ

collector_metadata = MetaData()

dexes = Table(
    "dexes",
    collector_metadata,
    Column("id", String(100), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("network", String(50), nullable=False, index=True),
    Column("created_at", TimestampTZ),
    Column("last_updated", TimestampTZ),
    Column("metadata_json", JsonB),
)

tokens = Table(
    "tokens",
    collector_metadata,
    Column("id", String(200), primary_key=True),
    Column("address", String(100), nullable=False),
    Column("name", String(200)),
    Column("symbol", String(50), index=True),
    Column("decimals", Integer),
    Column("network", String(50), nullable=False, index=True),
    Column("created_at", TimestampTZ),
    Column("last_updated", TimestampTZ),
    Column("metadata_json", JsonB),
    UniqueConstraint("network", "address", name="uq_tokens_network_address"),
)

pools = Table(
    "pools",
    collector_metadata,
    Column("id", String(200), primary_key=True),
    Column("address", String(100), nullable=False),
    Column("name", String(200)),
    Column("dex_id", String(100), ForeignKey("dexes.id"), nullable=False, index=True),
    Column("base_token_id", String(200), ForeignKey("tokens.id"), index=True),
    Column("quote_token_id", String(200), ForeignKey("tokens.id"), index=True),
    Column("reserve_usd", Numeric(20, 2, asdecimal=False)),
    Column("created_at", TimestampTZ),
    Column("last_updated", TimestampTZ),
    Column("activity_score", Numeric(10, 2, asdecimal=False), index=True),
    Column("discovery_source", String(50), index=True),
    Column("collection_priority", String(20), index=True),
    Column("auto_discovered_at", TimestampTZ),
    Column("last_activity_check", TimestampTZ),
    Column("metadata_json", JsonB),
)

ohlcv_data = Table(
    "ohlcv_data",
    collector_metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("pool_id", String(200), ForeignKey("pools.id"), nullable=False),
    Column("timeframe", String(10), nullable=False),
    # Epoch seconds of the bar OPEN: authoritative (the dump's `datetime` carries a -06 offset).
    Column("timestamp", BigInteger, nullable=False),
    Column("datetime", TimestampTZ, nullable=False),
    Column("open_price", Numeric(20, 8, asdecimal=False), nullable=False),
    Column("high_price", Numeric(20, 8, asdecimal=False), nullable=False),
    Column("low_price", Numeric(20, 8, asdecimal=False), nullable=False),
    Column("close_price", Numeric(20, 8, asdecimal=False), nullable=False),
    Column("volume_usd", Numeric(20, 2, asdecimal=False), nullable=False),
    Column("metadata_json", JsonB),
    UniqueConstraint("pool_id", "timeframe", "timestamp", name="uq_ohlcv_pool_timeframe_timestamp"),
    Index("idx_ohlcv_pool_timeframe_datetime", "pool_id", "timeframe", "datetime"),
    Index("idx_ohlcv_timeframe", "timeframe"),
)

trades = Table(
    "trades",
    collector_metadata,
    # solana_{block}_{txhash}_{logidx}_{epoch}: the epoch suffix is the true trade time
    # (block_timestamp is shifted +6 h by the collector).
    Column("id", String(200), primary_key=True),
    Column("pool_id", String(200), ForeignKey("pools.id"), nullable=False, index=True),
    Column("block_number", BigInteger, nullable=False, index=True),
    Column("tx_hash", String(100), nullable=False, index=True),
    Column("tx_from_address", String(100)),
    Column("from_token_amount", Numeric(30, 10, asdecimal=False)),
    Column("to_token_amount", Numeric(30, 10, asdecimal=False)),
    Column("price_usd", Numeric(20, 8, asdecimal=False)),
    Column("volume_usd", Numeric(20, 2, asdecimal=False), index=True),
    Column("side", String(10)),
    Column("block_timestamp", TimestampTZ, nullable=False, index=True),
    Column("metadata_json", JsonB),
)

collection_metadata = Table(
    "collection_metadata",
    collector_metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("collector_type", String(100), nullable=False, unique=True),
    Column("last_run", TimestampTZ),
    Column("last_success", TimestampTZ),
    Column("run_count", Integer),
    Column("error_count", Integer),
    Column("last_error", Text),
    Column("metadata_json", JsonB),
    Column("created_at", TimestampTZ),
    Column("updated_at", TimestampTZ),
)

watchlist = Table(
    "watchlist",
    collector_metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("pool_id", String(200), ForeignKey("pools.id"), nullable=False, unique=True),
    Column("token_symbol", String(50)),
    Column("token_name", String(200)),
    Column("network_address", String(100)),
    Column("is_active", Boolean, nullable=False),
    Column("created_at", TimestampTZ),
    Column("updated_at", TimestampTZ),
    Column("metadata_json", JsonB),
)

# Insert order that satisfies the foreign keys.
COLLECTOR_TABLES = (dexes, tokens, pools, ohlcv_data, trades, collection_metadata, watchlist)
COLLECTOR_TABLE_NAMES = tuple(t.name for t in COLLECTOR_TABLES)


# Liquidity history the collector keeps where it has it: its base ``new_pools_history`` (one row
# per pool and collection) and, after its enhanced-history migration, ``new_pools_history_enhanced``.
# Many collector databases have neither, so they live in their own MetaData: nothing here ever
# creates them, and readers look them up first (``CollectorReader.reserve_observations_many``).
# Only the columns this project reads are declared; the collector's tables have more.
collector_history_metadata = MetaData()

new_pools_history = Table(
    "new_pools_history",
    collector_history_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("pool_id", String(255), nullable=False),
    Column("reserve_in_usd", Numeric(20, 4, asdecimal=False)),
    # When the collector observed the row (naive, UTC): the earliest time its reserve is known.
    Column("collected_at", TimestampTZ),
)

new_pools_history_enhanced = Table(
    "new_pools_history_enhanced",
    collector_history_metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("pool_id", String(200), nullable=False),
    Column("timestamp", BigInteger, nullable=False),  # epoch seconds of the interval
    Column("collection_interval", String(10)),
    Column("reserve_in_usd", Numeric(20, 4, asdecimal=False)),
    Column("collected_at", TimestampTZ, nullable=False),
)

COLLECTOR_HISTORY_TABLES = (new_pools_history, new_pools_history_enhanced)

# --- Tables of the collector's enhanced-history migration ----------------------------------------
# (its ``migrate_to_enhanced_history.py``, model ``enhanced_new_pools_history_model.py``). Only a
# collector that ran it has them, so they live in their own MetaData: the sample loader never
# creates them, and the project reads ``pool_feature_vectors`` only after checking it exists.
collector_enhanced_metadata = MetaData()

# Which of its columns are features and which are forward-looking targets is decided in
# q50_assets.lineage.features.formulas (COLLECTOR_VECTOR_FEATURES, COLLECTOR_VECTOR_TARGETS).
collector_feature_vectors = Table(
    "pool_feature_vectors",
    collector_enhanced_metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("pool_id", String(200), nullable=False, index=True),
    # Epoch seconds of the bar OPEN the vector describes.
    Column("timestamp", BigInteger, nullable=False, index=True),
    Column("feature_set_version", String(20), nullable=False),
    Column("rsi_14", Numeric(5, 4, asdecimal=False)),
    Column("macd_signal", Numeric(10, 6, asdecimal=False)),
    Column("bollinger_position", Numeric(5, 4, asdecimal=False)),
    Column("volume_sma_ratio", Numeric(10, 6, asdecimal=False)),
    Column("liquidity_stability", Numeric(5, 4, asdecimal=False)),
    Column("liquidity_growth_rate", Numeric(10, 6, asdecimal=False)),
    Column("depth_imbalance", Numeric(5, 4, asdecimal=False)),
    Column("trader_diversity_score", Numeric(5, 4, asdecimal=False)),
    Column("whale_activity_indicator", Numeric(5, 4, asdecimal=False)),
    Column("retail_activity_score", Numeric(5, 4, asdecimal=False)),
    Column("bid_ask_spread_normalized", Numeric(5, 4, asdecimal=False)),
    Column("market_impact_score", Numeric(5, 4, asdecimal=False)),
    Column("arbitrage_opportunity", Numeric(5, 4, asdecimal=False)),
    Column("hour_of_day", Integer),
    Column("day_of_week", Integer),
    Column("is_weekend", Boolean),
    Column("price_return_1h", Numeric(10, 6, asdecimal=False)),
    Column("price_return_4h", Numeric(10, 6, asdecimal=False)),
    Column("price_return_24h", Numeric(10, 6, asdecimal=False)),
    Column("volume_change_1h", Numeric(10, 6, asdecimal=False)),
    Column("drawdown_risk", Numeric(5, 4, asdecimal=False)),
    Column("volatility_regime", String(20)),
    Column("feature_vector_json", JsonB),
    # When the collector wrote the vector: the earliest time anything in it was known.
    Column("created_at", TimestampTZ),
    UniqueConstraint("pool_id", "timestamp", "feature_set_version", name="uq_feature_vectors_pool_timestamp_version"),
)

COLLECTOR_ENHANCED_TABLE_NAMES = ("new_pools_history_enhanced", "pool_feature_vectors", "qlib_data_exports")
# Columns that identify the collector's pool_feature_vectors (whatever else a later collector adds).
COLLECTOR_VECTOR_KEY_COLUMNS = ("id", "pool_id", "timestamp", "feature_set_version", "created_at")
