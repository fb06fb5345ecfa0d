"""whatsapp: the customer's WhatsApp session (last inbound message) and opt-in times

Revision ID: 0014_whatsapp
Revises: 0013_dashboard
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014_whatsapp"
down_revision: str | None = "0013_dashboard"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("customer", sa.Column("whatsapp_session_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("customer", sa.Column("whatsapp_opt_in_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    for column in ("whatsapp_opt_in_at", "whatsapp_session_at"):
        op.drop_column("customer", column)  # SQLite 3.35+ drops a column in place
