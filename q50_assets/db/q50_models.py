"""The project's own tables. Created and changed only by the Alembic migrations in
``q50_assets/db/migrations`` (their version table is ``q50_alembic_version``, so a collector
that uses Alembic itself keeps its own ``alembic_version``).

Every table carries the ``q50_`` prefix, so none can collide with a collector table (a collector
that ran its enhanced-history migration has its own ``pool_feature_vectors``).

Foreign keys point at the collector's ``pools.id``: on PostgreSQL the project role needs
``REFERENCES`` (not write) on ``pools`` for the migration to create them.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    func,
)

from q50_assets.db.types import JsonB, TimestampTZ

q50_metadata = MetaData()

_Id = BigInteger().with_variant(Integer, "sqlite")

# The project's feature vectors. Not `pool_feature_vectors`: a collector that ran its
# enhanced-history migration owns a table of that name (read by the trading-history stage).
q50_feature_vectors = Table(
    "q50_feature_vectors",
    q50_metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("pool_id", String(200), ForeignKey("pools.id"), nullable=False),
    Column("timeframe", String(10), nullable=False),
    # Bar OPEN time of the bar the vector was computed from (UTC).
    Column("timestamp", TimestampTZ, nullable=False),
    # Earliest time the vector could be known: the bar's close.
    Column("known_at", TimestampTZ, nullable=False),
    Column("feature_set_version", String(40), nullable=False),
    Column("is_warmup", Boolean, nullable=False),
    Column("feature_values", JsonB, nullable=False),
    Column("created_at", TimestampTZ, nullable=False, server_default=func.now()),
    UniqueConstraint(
        "pool_id", "timeframe", "timestamp", "feature_set_version", name="uq_q50_feature_vectors_key"
    ),
)

q50_trading_history = Table(
    "q50_trading_history",
    q50_metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("pool_id", String(200), ForeignKey("pools.id"), nullable=False),
    Column("timestamp", TimestampTZ, nullable=False),
    Column("q50_signal", Float),
    Column("regime_classification", String(50)),
    Column("position_size", Float),
    Column("nautilus_order_id", String(100)),
    Column("execution_status", String(30), nullable=False),
    # The integration plan's pointer: the collector's pool_feature_vectors.id when
    # risk_management.use_existing_feature_vectors finds the collector's vector for the decision's
    # bar, else q50_feature_vectors.id. feature_vector_table names which, so a reader can join.
    # No foreign key: one can only point at one table (migration 0005 dropped it).
    Column("feature_vector_id", _Id),
    Column("backtest_run_id", String(64), nullable=False),
    Column("side", String(10)),
    Column("quantity", Float),
    Column("price", Float),
    Column("fee", Float),
    Column("created_at", TimestampTZ, nullable=False, server_default=func.now()),
    # Added by migration 0004: price impact paid on the fill (USD) and the fill's time.
    Column("impact", Float),
    Column("filled_at", TimestampTZ),
    # Added by migration 0005: which table feature_vector_id points at, and the project's own
    # vector behind the decision, kept under a real foreign key whatever feature_vector_id names.
    Column("feature_vector_table", String(40)),
    Column("q50_feature_vector_id", _Id, ForeignKey("q50_feature_vectors.id",
                                                     name="fk_q50_trading_history_q50_feature_vector")),
    # Added by migration 0006: when the order was decided (filled fill_latency_bars later), what the
    # cost model expected the fill to cost, and the liquidity it assumed.
    Column("decided_at", TimestampTZ),
    Column("expected_cost_usd", Float),
    Column("reserve_usd", Float),
    Column("reserve_source", String(30)),
    Index("idx_q50_trading_history_pool_time", "pool_id", "timestamp"),
    Index("idx_q50_trading_history_run", "backtest_run_id"),
)

q50_signals = Table(
    "q50_signals",
    q50_metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("pool_id", String(200), ForeignKey("pools.id"), nullable=False),
    Column("timeframe", String(10), nullable=False),
    Column("timestamp", TimestampTZ, nullable=False),
    Column("known_at", TimestampTZ, nullable=False),
    Column("model_run", String(64), nullable=False),
    Column("fold", Integer, nullable=False),
    Column("q10", Float, nullable=False),
    Column("q50", Float, nullable=False),
    Column("q90", Float, nullable=False),
    Column("spread", Float, nullable=False),
    Column("abs_q50", Float, nullable=False),
    Column("prob_up", Float, nullable=False),
    Column("vol_risk", Float),
    Column("enhanced_info_ratio", Float),
    Column("expected_value", Float),
    Column("expected_value_net", Float),
    Column("threshold", Float),
    Column("tradeable", Boolean, nullable=False),
    Column("side", String(10), nullable=False),
    Column("signal_tier", String(2), nullable=False),
    Column("reason", String(60)),
    Column("feature_vector_id", _Id, ForeignKey("q50_feature_vectors.id")),
    Column("created_at", TimestampTZ, nullable=False, server_default=func.now()),
    # Added by migration 0006: the cost model's view of the intended entry (research/signals.py).
    Column("intended_notional_usd", Float),
    Column("expected_cost_usd", Float),
    Column("expected_cost_fraction", Float),
    Column("reserve_usd", Float),
    Column("reserve_source", String(30)),
    UniqueConstraint("pool_id", "timeframe", "timestamp", name="uq_q50_signals_pool_bar"),
    Index("idx_q50_signals_pool_known_at", "pool_id", "timeframe", "known_at"),
)

q50_regime_labels = Table(
    "q50_regime_labels",
    q50_metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("pool_id", String(200), ForeignKey("pools.id"), nullable=False),
    Column("timeframe", String(10), nullable=False),
    Column("timestamp", TimestampTZ, nullable=False),  # bar open
    Column("known_at", TimestampTZ, nullable=False),  # >= bar close
    Column("vol_percentile", Float),
    Column("vol_regime", String(20), nullable=False),
    Column("momentum_regime", String(20), nullable=False),
    Column("regime", String(50), nullable=False),
    Column("position_multiplier", Float, nullable=False),
    Column("threshold_adjustment", Float, nullable=False),
    Column("created_at", TimestampTZ, nullable=False, server_default=func.now()),
    UniqueConstraint("pool_id", "timeframe", "timestamp", name="uq_q50_regime_labels_pool_bar"),
    Index("idx_q50_regime_labels_pool_known_at", "pool_id", "timeframe", "known_at"),
)

q50_backtest_results = Table(
    "q50_backtest_results",
    q50_metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("backtest_run_id", String(64), nullable=False),
    Column("pool_id", String(200), ForeignKey("pools.id"), nullable=False),
    Column("timeframe", String(10), nullable=False),
    # q50 (latency fills), q50_close, q50_reserve_x<k>, buy_and_hold, buy_and_hold_matched, cash
    Column("variant", String(20), nullable=False),
    Column("oos_start", TimestampTZ),  # first bar close of the out-of-sample span
    Column("oos_end", TimestampTZ),
    Column("bars", Integer, nullable=False),
    Column("total_return", Float),
    Column("sharpe", Float),
    Column("sortino", Float),
    Column("max_drawdown", Float),
    Column("win_rate", Float),
    Column("trades", Integer),
    Column("round_trips", Integer),
    Column("fees_paid", Float),
    Column("impact_paid", Float),
    Column("exposure", Float),
    Column("final_equity", Float),
    Column("created_at", TimestampTZ, nullable=False, server_default=func.now()),
    # Added by migration 0006 (research/backtest_stage.py METRIC definitions).
    Column("mean_position", Float),
    Column("turnover", Float),
    Column("mean_holding_bars", Float),
    Column("hit_rate", Float),
    Column("orders_expired", Integer),
    Column("reserve_fallback_share", Float),
    Column("bars_per_year", Float),
    Column("permutation_statistic", Float),
    Column("permutation_p_value", Float),
    Column("permutation_null", JsonB),  # the null draws (q50 rows only), for the pooled p-value
    # Added by migration 0007, q50 rows only: what the portfolio report is computed from.
    Column("bar_returns", JsonB),  # {"close_time": [epoch s], variant: [net return per bar]} on the OOS grid
    Column("round_trip_records", JsonB),  # q50's round trips (research/backtest_stage.py ROUND_TRIP_COLUMNS)
    UniqueConstraint("backtest_run_id", "pool_id", "variant", name="uq_q50_backtest_results_run_pool_variant"),
    Index("idx_q50_backtest_results_pool_created", "pool_id", "created_at"),
)

# Added by migration 0008: every configuration evaluated on a window of out-of-sample data (the
# deflated Sharpe's trials, lineage/portfolio/trials.py). Re-running a configuration on the same
# window touches last_seen_at only.
q50_trials = Table(
    "q50_trials",
    q50_metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("config_hash", String(64), nullable=False),
    Column("timeframe", String(10), nullable=False),
    Column("window_start", TimestampTZ, nullable=False),  # first out-of-sample bar close
    Column("window_end", TimestampTZ, nullable=False),  # last out-of-sample bar close
    Column("variant", String(40), nullable=False),
    Column("pools", Integer, nullable=False),
    Column("round_trips", Integer),
    Column("mean_round_trip_return", Float),
    Column("mean_bar_return", Float),
    Column("sharpe", Float),
    Column("settings", JsonB, nullable=False),
    Column("first_seen_at", TimestampTZ, nullable=False, server_default=func.now()),
    Column("last_seen_at", TimestampTZ, nullable=False, server_default=func.now()),
    UniqueConstraint("config_hash", "window_start", "window_end", "variant", name="uq_q50_trials_config_window_variant"),
    Index("idx_q50_trials_window", "window_start", "window_end"),
)

Q50_TABLE_NAMES = tuple(q50_metadata.tables)
