"""Behaviour events: storefront views, carts, purchases and favourites not tied to a served list
(``POST /track``), written by the same writer as feedback.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "behaviour",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(100), unique=True),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_id", sa.String(200)),
        sa.Column("session_id", sa.String(200)),
        sa.Column("item_id", sa.String(200), nullable=False),
        sa.Column("event_type", sa.String(20), nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("price", sa.Float),
    )
    op.create_index("ix_behaviour_ts", "behaviour", ["ts"])
    op.create_index("ix_behaviour_user_id", "behaviour", ["user_id"])


def downgrade() -> None:
    op.drop_table("behaviour")
