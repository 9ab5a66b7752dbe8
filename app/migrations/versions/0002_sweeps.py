"""Sweeps, and the sweep each job is a run of.

Revision ID: 0002_sweeps
Revises: 0001
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_sweeps"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(32), nullable=False, unique=True),
        sa.Column("variant", sa.String(32), nullable=False),
        sa.Column("label", sa.String(200)),
        sa.Column("hyperparameters", sa.JSON, nullable=False),
        sa.Column("grid", sa.JSON, nullable=False),
        sa.Column("seed", sa.BigInteger),
        sa.Column("device", sa.String(16), nullable=False),
        sa.Column("fuse", sa.String(8), nullable=False),
        sa.Column("fused", sa.Boolean, nullable=False),
        sa.Column("cancelled", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
    )
    op.create_index("ix_sweeps_variant_pk", "sweeps", ["variant", "pk"])
    # a nullable column: SQLite adds it in place, no copy of the table
    op.add_column("jobs", sa.Column("sweep_id", sa.String(32)))
    op.create_index("ix_jobs_sweep_id_pk", "jobs", ["sweep_id", "pk"])


def downgrade() -> None:
    op.drop_index("ix_jobs_sweep_id_pk", "jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("sweep_id")
    op.drop_index("ix_sweeps_variant_pk", "sweeps")
    op.drop_table("sweeps")
