"""Webhooks: each job's and sweep's webhook, and the outbox of their deliveries.

The job and sweep columns are nullable (SQLite adds them in place): what was stored before has
no webhook.

Revision ID: 0007_webhooks
Revises: 0006_checkpoints
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_webhooks"
down_revision = "0006_checkpoints"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("jobs", "sweeps"):
        op.add_column(table, sa.Column("webhook_url", sa.String(2048)))
        op.add_column(table, sa.Column("webhook_events", sa.JSON))
    op.create_table(
        "webhook_deliveries",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(40), nullable=False, unique=True),
        sa.Column("job_id", sa.String(32)),
        sa.Column("sweep_id", sa.String(32)),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("next_attempt", sa.Float),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("delivered_at", sa.String(32)),
    )
    op.create_index(
        "ix_webhook_deliveries_status_next", "webhook_deliveries", ["status", "next_attempt"]
    )
    op.create_index("ix_webhook_deliveries_job_id", "webhook_deliveries", ["job_id"])
    op.create_index("ix_webhook_deliveries_sweep_id", "webhook_deliveries", ["sweep_id"])


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table in ("sweeps", "jobs"):
        for name in ("webhook_events", "webhook_url"):
            if sqlite:
                # in place (SQLite 3.35+): a batch copy of `jobs` would drop the old table and,
                # by ON DELETE CASCADE, every job's losses with it
                op.execute(f"ALTER TABLE {table} DROP COLUMN {name}")
            else:
                op.drop_column(table, name)
