"""pool_feature_vectors and q50_trading_history

Only the project's tables: collector tables (pools, ohlcv_data, ...) are referenced, never
created, altered or dropped.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from q50_assets.db.types import JsonB, TimestampTZ

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "pool_feature_vectors",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("pool_id", sa.String(200), sa.ForeignKey("pools.id"), nullable=False),
        sa.Column("timeframe", sa.String(10), nullable=False),
        sa.Column("timestamp", TimestampTZ, nullable=False),
        sa.Column("known_at", TimestampTZ, nullable=False),
        sa.Column("feature_set_version", sa.String(40), nullable=False),
        sa.Column("is_warmup", sa.Boolean, nullable=False),
        sa.Column("feature_values", JsonB, nullable=False),
        sa.Column("created_at", TimestampTZ, nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint(
            "pool_id", "timeframe", "timestamp", "feature_set_version", name="uq_pool_feature_vectors_key"
        ),
    )
    op.create_table(
        "q50_trading_history",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("pool_id", sa.String(200), sa.ForeignKey("pools.id"), nullable=False),
        sa.Column("timestamp", TimestampTZ, nullable=False),
        sa.Column("q50_signal", sa.Float),
        sa.Column("regime_classification", sa.String(50)),
        sa.Column("position_size", sa.Float),
        sa.Column("nautilus_order_id", sa.String(100)),
        sa.Column("execution_status", sa.String(30), nullable=False),
        sa.Column("feature_vector_id", _Id, sa.ForeignKey("pool_feature_vectors.id")),
        sa.Column("backtest_run_id", sa.String(64), nullable=False),
        sa.Column("side", sa.String(10)),
        sa.Column("quantity", sa.Float),
        sa.Column("price", sa.Float),
        sa.Column("fee", sa.Float),
        sa.Column("created_at", TimestampTZ, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("idx_q50_trading_history_pool_time", "q50_trading_history", ["pool_id", "timestamp"])
    op.create_index("idx_q50_trading_history_run", "q50_trading_history", ["backtest_run_id"])


def downgrade() -> None:
    op.drop_index("idx_q50_trading_history_run", table_name="q50_trading_history")
    op.drop_index("idx_q50_trading_history_pool_time", table_name="q50_trading_history")
    op.drop_table("q50_trading_history")
    op.drop_table("pool_feature_vectors")
