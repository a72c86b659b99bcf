"""The evidence the portfolio report is computed from, stored once with the backtest that made it:
each pool's per-bar net returns of every variant on the out-of-sample grid, and the Q50 round
trips (when, how much, in which regime, tier and liquidity) — both on the pool's q50 row.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from q50_assets.db.types import JsonB

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Nullable: a backtest stored before this revision has no per-bar evidence (NULL, not made up);
# the report leaves such pools out and says how many.
RESULTS = (
    ("bar_returns", JsonB),
    ("round_trip_records", JsonB),
)


def upgrade() -> None:
    for name, kind in RESULTS:
        op.add_column("q50_backtest_results", sa.Column(name, kind))


def downgrade() -> None:
    with op.batch_alter_table("q50_backtest_results") as batch:
        for name, _ in reversed(RESULTS):
            batch.drop_column(name)
