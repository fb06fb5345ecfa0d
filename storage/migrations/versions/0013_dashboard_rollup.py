"""dashboard: the daily roll-up table and the indexes its per-day queries walk

Revision ID: 0013_dashboard
Revises: 0012_faults
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_dashboard"
down_revision: str | None = "0012_faults"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = (
    ("ix_outreach_event_at", "outreach_event", ["at"]),
    ("ix_switch_request_created_at", "switch_request", ["created_at"]),
    ("ix_plan_decline_declined_at", "plan_decline", ["declined_at"]),
    ("ix_customer_opted_out_at", "customer", ["opted_out_at"]),
    ("ix_conversation_started_at", "conversation", ["started_at"]),
    ("ix_broadcast_recipient_customer_id", "broadcast_recipient", ["customer_id"]),
)


def upgrade() -> None:
    op.create_table(
        "dashboard_day",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("metric", sa.String(length=32), nullable=False),
        sa.Column("dim1", sa.String(length=200), nullable=False),
        sa.Column("dim2", sa.String(length=64), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.Numeric(16, 2), nullable=False),
        sa.PrimaryKeyConstraint("day", "metric", "dim1", "dim2"),
    )
    op.create_index("ix_dashboard_metric_day", "dashboard_day", ["metric", "day"])
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in INDEXES:
        op.drop_index(name, table_name=table)
    op.drop_index("ix_dashboard_metric_day", table_name="dashboard_day")
    op.drop_table("dashboard_day")
