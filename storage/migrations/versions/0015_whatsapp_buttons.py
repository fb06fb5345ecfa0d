"""whatsapp buttons: the Content SIDs of the quick replies Rapport made, kept across restarts

Revision ID: 0015_whatsapp_buttons
Revises: 0014_whatsapp
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015_whatsapp_buttons"
down_revision: str | None = "0014_whatsapp"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "whatsapp_content",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("content_sid", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    op.drop_table("whatsapp_content")
