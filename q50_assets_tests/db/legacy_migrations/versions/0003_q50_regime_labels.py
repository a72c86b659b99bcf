"""q50_regime_labels: one row per pool and bar, with the time the label becomes known

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from q50_assets.db.types import TimestampTZ

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "q50_regime_labels",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("pool_id", sa.String(200), sa.ForeignKey("pools.id"), nullable=False),
        sa.Column("timeframe", sa.String(10), nullable=False),
        sa.Column("timestamp", TimestampTZ, nullable=False),
        sa.Column("known_at", TimestampTZ, nullable=False),
        sa.Column("vol_percentile", sa.Float),
        sa.Column("vol_regime", sa.String(20), nullable=False),
        sa.Column("momentum_regime", sa.String(20), nullable=False),
        sa.Column("regime", sa.String(50), nullable=False),
        sa.Column("position_multiplier", sa.Float, nullable=False),
        sa.Column("threshold_adjustment", sa.Float, nullable=False),
        sa.Column("created_at", TimestampTZ, nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("pool_id", "timeframe", "timestamp", name="uq_q50_regime_labels_pool_bar"),
    )
    op.create_index(
        "idx_q50_regime_labels_pool_known_at", "q50_regime_labels", ["pool_id", "timeframe", "known_at"]
    )


def downgrade() -> None:
    op.drop_index("idx_q50_regime_labels_pool_known_at", table_name="q50_regime_labels")
    op.drop_table("q50_regime_labels")
