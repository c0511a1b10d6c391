"""The event log as it was before migrations: impressions and feedback.

Exactly the tables ``metadata.create_all`` made until then, so a database created that way is
adopted (stamped ``0001``) rather than rebuilt.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "impressions",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_id", sa.String(200)),
        sa.Column("session_id", sa.String(200)),
        sa.Column("experiment", sa.String(100)),
        sa.Column("variant", sa.String(100)),
        sa.Column("model", sa.String(100)),
        sa.Column("model_version", sa.String(50)),
        sa.Column("page", sa.String(20)),
        sa.Column("items", sa.Text, nullable=False),
    )
    op.create_index("ix_impressions_ts", "impressions", ["ts"])
    op.create_index("ix_impressions_user_id", "impressions", ["user_id"])
    op.create_index("ix_impressions_experiment", "impressions", ["experiment"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(100), unique=True),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(64)),
        sa.Column("user_id", sa.String(200)),
        sa.Column("session_id", sa.String(200)),
        sa.Column("item_id", sa.String(200), nullable=False),
        sa.Column("event_type", sa.String(20), nullable=False),
        sa.Column("revenue", sa.Float, nullable=False),
    )
    op.create_index("ix_feedback_ts", "feedback", ["ts"])
    op.create_index("ix_feedback_request_id", "feedback", ["request_id"])


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_table("impressions")
