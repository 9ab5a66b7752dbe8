"""Losses in chunks: one row per batch of consecutive steps instead of one per step.

The rows of `losses` become `loss_chunks` rows of up to 4,096 consecutive steps each (a gap
starts a new chunk), packed as little-endian float64 with NaN for a NULL loss; downgrade
unpacks them again. Both copy a job at a time, a page of steps at a time.

Revision ID: 0003_loss_chunks
Revises: 0002_sweeps
Create Date: 2026-11-30
"""

import math
import struct
from collections.abc import Iterator

import sqlalchemy as sa
from alembic import op

revision = "0003_loss_chunks"
down_revision = "0002_sweeps"
branch_labels = None
depends_on = None

CHUNK_STEPS = 4096
PAGE = 100_000

_losses = sa.table("losses", sa.column("job_pk"), sa.column("step"), sa.column("loss"))
_chunks = sa.table(
    "loss_chunks",
    sa.column("job_pk"),
    sa.column("first_step"),
    sa.column("end_step"),
    sa.column("losses", sa.LargeBinary),
)


def _pack(values: list[float | None]) -> bytes:
    return struct.pack(f"<{len(values)}d", *(math.nan if v is None else v for v in values))


def _unpack(blob: bytes) -> list[float | None]:
    return [None if v != v else v for v in struct.unpack(f"<{len(blob) // 8}d", blob)]


def upgrade() -> None:
    op.create_table(
        "loss_chunks",
        sa.Column(
            "job_pk", sa.Integer, sa.ForeignKey("jobs.pk", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("first_step", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("end_step", sa.Integer, nullable=False),
        sa.Column("losses", sa.LargeBinary, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_loss_chunks_job_pk_end_step", "loss_chunks", ["job_pk", "end_step"])
    conn = op.get_bind()
    for pk in conn.execute(sa.select(_losses.c.job_pk).distinct()).scalars().all():
        first, values = 0, list[float | None]()
        for step, loss in _rows(conn, pk):
            if values and (step != first + len(values) or len(values) == CHUNK_STEPS):
                _insert_chunk(conn, pk, first, values)
                values = []
            if not values:
                first = step
            values.append(loss)
        if values:
            _insert_chunk(conn, pk, first, values)
    op.drop_table("losses")


def _rows(conn: sa.Connection, pk: int) -> Iterator[tuple[int, float | None]]:
    after = -1
    while True:
        page = conn.execute(
            sa.select(_losses.c.step, _losses.c.loss)
            .where(_losses.c.job_pk == pk, _losses.c.step > after)
            .order_by(_losses.c.step)
            .limit(PAGE)
        ).all()
        yield from ((int(step), loss) for step, loss in page)
        if len(page) < PAGE:
            return
        after = page[-1][0]


def _insert_chunk(conn: sa.Connection, pk: int, first: int, values: list[float | None]) -> None:
    conn.execute(
        sa.insert(_chunks).values(
            job_pk=pk, first_step=first, end_step=first + len(values), losses=_pack(values)
        )
    )


def downgrade() -> None:
    op.create_table(
        "losses",
        sa.Column(
            "job_pk", sa.Integer, sa.ForeignKey("jobs.pk", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("step", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("loss", sa.Float),
        sqlite_with_rowid=False,
    )
    conn = op.get_bind()
    pks = conn.execute(sa.select(_chunks.c.job_pk).distinct()).scalars().all()
    for pk in pks:
        end = -1
        while True:
            page = conn.execute(
                sa.select(_chunks.c.first_step, _chunks.c.losses)
                .where(_chunks.c.job_pk == pk, _chunks.c.end_step > end)
                .order_by(_chunks.c.end_step)
                .limit(64)
            ).all()
            for first, blob in page:
                values = _unpack(blob)
                conn.execute(
                    sa.insert(_losses),
                    [{"job_pk": pk, "step": first + i, "loss": v} for i, v in enumerate(values)],
                )
                end = first + len(values)
            if len(page) < 64:
                break
    op.drop_index("ix_loss_chunks_job_pk_end_step", "loss_chunks")
    op.drop_table("loss_chunks")
