"""A sweep's `exact`: whether its fused runs must equal the jobs alone bit for bit.

A nullable column (SQLite adds it in place): a sweep stored before it reads as its `fuse`
implied then (true for `fuse: true`, false for `fuse: "auto"`).

Revision ID: 0004_sweep_exact
Revises: 0003_loss_chunks
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_sweep_exact"
down_revision = "0003_loss_chunks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sweeps", sa.Column("exact", sa.Boolean))


def downgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        batch.drop_column("exact")
