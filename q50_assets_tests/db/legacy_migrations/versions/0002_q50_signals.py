"""q50_signals: one row per pool and bar, keyed by the time the signal becomes known

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from q50_assets.db.types import TimestampTZ

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "q50_signals",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("pool_id", sa.String(200), sa.ForeignKey("pools.id"), nullable=False),
        sa.Column("timeframe", sa.String(10), nullable=False),
        sa.Column("timestamp", TimestampTZ, nullable=False),  # bar open
        sa.Column("known_at", TimestampTZ, nullable=False),  # >= bar close
        sa.Column("model_run", sa.String(64), nullable=False),
        sa.Column("fold", sa.Integer, nullable=False),
        sa.Column("q10", sa.Float, nullable=False),
        sa.Column("q50", sa.Float, nullable=False),
        sa.Column("q90", sa.Float, nullable=False),
        sa.Column("spread", sa.Float, nullable=False),
        sa.Column("abs_q50", sa.Float, nullable=False),
        sa.Column("prob_up", sa.Float, nullable=False),
        sa.Column("vol_risk", sa.Float),
        sa.Column("enhanced_info_ratio", sa.Float),
        sa.Column("expected_value", sa.Float),
        sa.Column("expected_value_net", sa.Float),
        sa.Column("threshold", sa.Float),
        sa.Column("tradeable", sa.Boolean, nullable=False),
        sa.Column("side", sa.String(10), nullable=False),
        sa.Column("signal_tier", sa.String(2), nullable=False),
        sa.Column("reason", sa.String(60)),
        sa.Column("feature_vector_id", _Id, sa.ForeignKey("pool_feature_vectors.id")),
        sa.Column("created_at", TimestampTZ, nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("pool_id", "timeframe", "timestamp", name="uq_q50_signals_pool_bar"),
    )
    op.create_index("idx_q50_signals_pool_known_at", "q50_signals", ["pool_id", "timeframe", "known_at"])


def downgrade() -> None:
    op.drop_index("idx_q50_signals_pool_known_at", table_name="q50_signals")
    op.drop_table("q50_signals")
