"""Costs at the intended size on q50_signals; decision-grade backtest metrics (exposure, turnover,
holding time, expired orders, reserve assumption, permutation null) on q50_backtest_results; the
decision and its expected cost on q50_trading_history

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

from q50_assets.db.types import JsonB, TimestampTZ

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Nullable columns only: plain ADD COLUMN works on SQLite and PostgreSQL alike, and rows written
# before this revision keep NULL (unknown), never a made-up value.
SIGNALS = (
    ("intended_notional_usd", sa.Float),
    ("expected_cost_usd", sa.Float),
    ("expected_cost_fraction", sa.Float),
    ("reserve_usd", sa.Float),
    ("reserve_source", sa.String(30)),
)
RESULTS = (
    ("mean_position", sa.Float),
    ("turnover", sa.Float),
    ("mean_holding_bars", sa.Float),
    ("hit_rate", sa.Float),
    ("orders_expired", sa.Integer),
    ("reserve_fallback_share", sa.Float),
    ("bars_per_year", sa.Float),
    ("permutation_statistic", sa.Float),
    ("permutation_p_value", sa.Float),
    ("permutation_null", JsonB),
)
HISTORY = (
    ("decided_at", TimestampTZ),
    ("expected_cost_usd", sa.Float),
    ("reserve_usd", sa.Float),
    ("reserve_source", sa.String(30)),
)


def upgrade() -> None:
    for table, columns in (("q50_signals", SIGNALS), ("q50_backtest_results", RESULTS),
                           ("q50_trading_history", HISTORY)):
        for name, kind in columns:
            op.add_column(table, sa.Column(name, kind))


def downgrade() -> None:
    for table, columns in (("q50_trading_history", HISTORY), ("q50_backtest_results", RESULTS),
                           ("q50_signals", SIGNALS)):
        with op.batch_alter_table(table) as batch:
            for name, _ in reversed(columns):
                batch.drop_column(name)
