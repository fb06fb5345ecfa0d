"""outreach: proactive flag and claim time on messages, outreach events, billing delivery

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN (no batch copy on SQLite): a table rebuild would drop the message_fts triggers.
    op.add_column("message", sa.Column("marketing", sa.Boolean(), server_default="0", nullable=False))
    op.add_column("message", sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "outreach_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("plan_id", sa.String(length=64), nullable=True),
        sa.Column("message_id", sa.Integer(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["customer.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["message_id"], ["message.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_outreach_event_customer_at", "outreach_event", ["customer_id", "at"])
    op.create_table(
        "billing_delivery",
        sa.Column("switch_request_id", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["switch_request_id"], ["switch_request.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("switch_request_id"),
    )


def downgrade() -> None:
    op.drop_table("billing_delivery")
    op.drop_index("ix_outreach_event_customer_at", table_name="outreach_event")
    op.drop_table("outreach_event")
    op.drop_column("message", "claimed_at")  # SQLite 3.35+ drops a column in place
    op.drop_column("message", "marketing")
