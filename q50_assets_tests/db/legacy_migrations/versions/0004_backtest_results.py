"""q50_backtest_results (metrics per backtest run, pool and variant); impact and fill time on
q50_trading_history

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from q50_assets.db.types import TimestampTZ

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "q50_backtest_results",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("backtest_run_id", sa.String(64), nullable=False),
        sa.Column("pool_id", sa.String(200), sa.ForeignKey("pools.id"), nullable=False),
        sa.Column("timeframe", sa.String(10), nullable=False),
        sa.Column("variant", sa.String(20), nullable=False),
        sa.Column("oos_start", TimestampTZ),
        sa.Column("oos_end", TimestampTZ),
        sa.Column("bars", sa.Integer, nullable=False),
        sa.Column("total_return", sa.Float),
        sa.Column("sharpe", sa.Float),
        sa.Column("sortino", sa.Float),
        sa.Column("max_drawdown", sa.Float),
        sa.Column("win_rate", sa.Float),
        sa.Column("trades", sa.Integer),
        sa.Column("round_trips", sa.Integer),
        sa.Column("fees_paid", sa.Float),
        sa.Column("impact_paid", sa.Float),
        sa.Column("exposure", sa.Float),
        sa.Column("final_equity", sa.Float),
        sa.Column("created_at", TimestampTZ, nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("backtest_run_id", "pool_id", "variant", name="uq_q50_backtest_results_run_pool_variant"),
    )
    op.create_index("idx_q50_backtest_results_pool_created", "q50_backtest_results", ["pool_id", "created_at"])
    # Nullable columns: plain ADD COLUMN works on SQLite and PostgreSQL alike.
    op.add_column("q50_trading_history", sa.Column("impact", sa.Float))
    op.add_column("q50_trading_history", sa.Column("filled_at", TimestampTZ))


def downgrade() -> None:
    with op.batch_alter_table("q50_trading_history") as batch:
        batch.drop_column("filled_at")
        batch.drop_column("impact")
    op.drop_index("idx_q50_backtest_results_pool_created", table_name="q50_backtest_results")
    op.drop_table("q50_backtest_results")
