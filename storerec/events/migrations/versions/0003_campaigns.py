"""Campaign ledger: one row per member of each loyalty campaign (``storerec campaign``), treated or
held out, so that the frequency cap across campaigns and the holdout survive restarts and can be
reported on (``campaign-report``).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "campaign_sends",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("campaign_id", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("holdout", sa.Boolean, nullable=False),
        sa.Column("holdout_share", sa.Float, nullable=True),
        sa.Column("n_items", sa.Integer, nullable=False),
        sa.UniqueConstraint("campaign_id", "user_id", name="uq_campaign_sends_campaign_user"),
    )
    op.create_index("ix_campaign_sends_user_ts", "campaign_sends", ["user_id", "ts"])


def downgrade() -> None:
    op.drop_table("campaign_sends")
