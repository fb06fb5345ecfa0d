"""claim leases: who holds an outbox row in ``sending`` and until when; when to look a send up

Revision ID: 0012_faults
Revises: 0011_handoff
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_faults"
down_revision: str | None = "0011_handoff"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("message", sa.Column("claimed_by", sa.String(length=64), nullable=True))
    op.add_column("message", sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("message", sa.Column("reconcile_since", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    for column in ("reconcile_since", "lease_expires_at", "claimed_by"):
        op.drop_column("message", column)  # SQLite 3.35+ drops a column in place
