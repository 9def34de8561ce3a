"""Delivery leases, worker heartbeats and dispatch times: SQL is the source of truth for
pending work (a reconciler re-sends what the queue lost) and for delivery.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("delivery_attempts", sa.Integer(), server_default="0", nullable=False))
        batch.create_index("ix_jobs_conversation_id_id", ["conversation_id", "id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_conversation_id_id")
        for column in ("delivery_attempts", "lease_until", "heartbeat_at", "dispatched_at"):
            batch.drop_column(column)
