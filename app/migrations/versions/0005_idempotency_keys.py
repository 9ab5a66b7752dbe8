"""Idempotency keys: the key each POST that created a job or a sweep came with.

Revision ID: 0005_idempotency_keys
Revises: 0004_sweep_exact
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_idempotency_keys"
down_revision = "0004_sweep_exact"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("scope", sa.String(16), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("body_sha256", sa.String(64), nullable=False),
        sa.Column("resource_id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_idempotency_keys_created_at", "idempotency_keys")
    op.drop_table("idempotency_keys")
