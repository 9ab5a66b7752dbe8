"""Checkpoints: each job's saved states, and a job's cadence, fork origin and last write error.

The job columns are nullable (SQLite adds them in place): a job stored before reads as one with
no checkpoints, whose cadence is the server's default.

Revision ID: 0006_checkpoints
Revises: 0005_idempotency_keys
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_checkpoints"
down_revision = "0005_idempotency_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "checkpoints",
        sa.Column(
            "job_pk", sa.Integer, sa.ForeignKey("jobs.pk", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("step", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
    )
    op.add_column("jobs", sa.Column("checkpoint_every", sa.Integer))
    op.add_column("jobs", sa.Column("forked_from_job", sa.String(32)))
    op.add_column("jobs", sa.Column("forked_from_step", sa.Integer))
    op.add_column("jobs", sa.Column("checkpoint_error", sa.Text))


def downgrade() -> None:
    op.drop_table("checkpoints")
    columns = ("checkpoint_error", "forked_from_step", "forked_from_job", "checkpoint_every")
    if op.get_bind().dialect.name == "sqlite":
        # in place (SQLite 3.35+): a batch copy of `jobs` would drop the old table, and with
        # it, by ON DELETE CASCADE, every job's losses
        for name in columns:
            op.execute(f"ALTER TABLE jobs DROP COLUMN {name}")
    else:
        for name in columns:
            op.drop_column("jobs", name)
