"""q50_trials: the ledger of every configuration evaluated on a window of out-of-sample data, one
row per (configuration hash, window, variant); the deflated Sharpe counts its trials from here.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from q50_assets.db.types import JsonB, TimestampTZ

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "q50_trials",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("config_hash", sa.String(64), nullable=False),  # sha256 of the settings that change results
        sa.Column("timeframe", sa.String(10), nullable=False),
        sa.Column("window_start", TimestampTZ, nullable=False),  # first out-of-sample bar close
        sa.Column("window_end", TimestampTZ, nullable=False),  # last out-of-sample bar close
        sa.Column("variant", sa.String(40), nullable=False),
        sa.Column("pools", sa.Integer, nullable=False),
        sa.Column("round_trips", sa.Integer),
        sa.Column("mean_round_trip_return", sa.Float),
        sa.Column("mean_bar_return", sa.Float),
        sa.Column("sharpe", sa.Float),
        sa.Column("settings", JsonB, nullable=False),  # the hashed settings themselves, to see what differed
        sa.Column("first_seen_at", TimestampTZ, nullable=False, server_default=sa.func.now()),
        sa.Column("last_seen_at", TimestampTZ, nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("config_hash", "window_start", "window_end", "variant",
                            name="uq_q50_trials_config_window_variant"),
    )
    op.create_index("idx_q50_trials_window", "q50_trials", ["window_start", "window_end"])


def downgrade() -> None:
    op.drop_index("idx_q50_trials_window", table_name="q50_trials")
    op.drop_table("q50_trials")
