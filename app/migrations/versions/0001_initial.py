"""Jobs and losses.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(32), nullable=False, unique=True),
        sa.Column("variant", sa.String(32), nullable=False),
        sa.Column("label", sa.String(200)),
        sa.Column("hyperparameters", sa.JSON, nullable=False),
        sa.Column("seed", sa.BigInteger, nullable=False),
        sa.Column("device", sa.String(16), nullable=False),
        sa.Column("assigned_device", sa.String(16)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("steps", sa.Integer, nullable=False),
        sa.Column("last_loss", sa.Float),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("started_at", sa.String(32)),
        sa.Column("finished_at", sa.String(32)),
        sa.Column("environment", sa.JSON),
        sa.Column("error_code", sa.String(32)),
        sa.Column("error_message", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False),
    )
    op.create_index("ix_jobs_status_pk", "jobs", ["status", "pk"])
    op.create_index("ix_jobs_variant_pk", "jobs", ["variant", "pk"])
    op.create_table(
        "losses",
        sa.Column(
            "job_pk", sa.Integer, sa.ForeignKey("jobs.pk", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("step", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("loss", sa.Float),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("losses")
    op.drop_table("jobs")
