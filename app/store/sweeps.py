"""Sweeps in the store: a row per sweep, and its runs (the jobs that carry its id).

A sweep's status, counts and end are not stored: they are read from its runs whenever the sweep
is, so they can never disagree with the jobs (which the consumer alone moves on). Writes go
through the store's one writer, like every other write.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass, fields
from typing import Any, Literal

from sqlalchemy import Connection, delete, insert, select, update

from app.store import idempotency
from app.store.idempotency import Claim, Claimed
from app.store.rows import JobRow, webhook_of
from app.store.store import Store
from app.store.tables import jobs, loss_chunks, sweeps, webhook_deliveries
from trainwire.jobs import FINAL_STATUSES, JobStatus
from trainwire.sweeps import Sweep, SweepCounts, SweepRun, SweepStatus

_FINAL = [s.value for s in FINAL_STATUSES]

DeleteOutcome = Literal["deleted", "not_final", "gone"]


def exact_default(fuse_true: bool) -> bool:
    """`exact` when a sweep does not say: true with `fuse: true`, false with "auto" (which
    fuses only on a GPU, where batched kernels are where the speed is)."""
    return fuse_true


@dataclass(frozen=True)
class SweepRow:
    """One row of the `sweeps` table."""

    pk: int
    id: str
    variant: str
    label: str | None
    hyperparameters: dict[str, Any]
    grid: dict[str, list[Any]]
    seed: int | None
    device: str
    fuse: str  # "auto", "true", "false"
    fused: bool
    exact: bool | None  # null: as `fuse` implies
    cancelled: bool
    created_at: str
    webhook_url: str | None = None
    webhook_events: list[str] | None = None

    @classmethod
    def from_mapping(cls, row: Any) -> SweepRow:
        values = {f.name: row[f.name] for f in fields(cls) if f.name in row}
        values["fused"], values["cancelled"] = bool(values["fused"]), bool(values["cancelled"])
        if values["exact"] is not None:
            values["exact"] = bool(values["exact"])
        return cls(**values)

    @property
    def fused_exact(self) -> bool:
        """Whether fused runs must equal the jobs alone: as asked, else as `fuse` implies."""
        return exact_default(self.fuse == "true") if self.exact is None else self.exact

    def to_sweep(self, runs: list[JobRow]) -> Sweep:
        """The API's view of the sweep, from its runs as they stand."""
        counts = SweepCounts()
        for run in runs:
            setattr(counts, run.status.value, getattr(counts, run.status.value) + 1)
        every_run_final = all(run.status.is_final for run in runs)
        finished = [run.finished_at for run in runs if run.finished_at]
        return Sweep(
            id=self.id,
            variant=self.variant,  # type: ignore[arg-type]
            label=self.label,
            hyperparameters=self.hyperparameters,
            grid=self.grid,
            seed=self.seed,
            device=self.device,
            fuse="auto" if self.fuse == "auto" else self.fuse == "true",
            exact=self.fused_exact,
            fused=self.fused,
            status=sweep_status(self.cancelled, runs),
            counts=counts,
            jobs=[
                SweepRun(
                    id=run.id,
                    hyperparameters=run.hyperparameters,
                    seed=run.seed,
                    status=run.status,
                    step=run.step,
                    steps=run.steps,
                    last_loss=run.last_loss,
                    error=job.error,
                )
                for run in runs
                for job in [run.to_job()]
            ],
            created_at=self.created_at,
            finished_at=max(finished) if every_run_final and finished else None,
            webhook=webhook_of(self.webhook_url, self.webhook_events),
        )


def sweep_status(cancelled: bool, runs: list[JobRow]) -> SweepStatus:
    """queued until a run starts; running while any run is not final; then cancelled (the
    sweep was, or a run was and none failed), failed (a run failed) or succeeded."""
    if not all(run.status.is_final for run in runs):
        started = any(run.started_at is not None for run in runs)
        return SweepStatus.running if started else SweepStatus.queued
    if cancelled:
        return SweepStatus.cancelled
    if any(run.status == JobStatus.failed for run in runs):
        return SweepStatus.failed
    if any(run.status == JobStatus.cancelled for run in runs):
        return SweepStatus.cancelled
    return SweepStatus.succeeded


class SweepStore:
    """The sweep operations, over the job store's engine and its writer."""

    def __init__(self, store: Store):
        self.store = store

    # -- writes ---------------------------------------------------------------------------
    def insert_sweep(
        self, values: dict[str, Any], runs: list[dict[str, Any]], claim: Claim | None = None
    ) -> Future[tuple[SweepRow, list[JobRow]] | Claimed]:
        """Store a sweep and all its runs in one transaction: all of them, or none. With an
        idempotency key's claim, as `Store.insert_job`."""

        def op(conn: Connection) -> tuple[SweepRow, list[JobRow]] | Claimed:
            if claim is not None and (earlier := idempotency.take(conn, claim, values["id"])):
                return earlier
            result = conn.execute(insert(sweeps).values(**values))
            sweep = SweepRow.from_mapping({**values, "pk": result.inserted_primary_key[0]})  # type: ignore[index]
            rows = []
            for run in runs:
                run = {**run, "sweep_id": sweep.id}
                pk = conn.execute(insert(jobs).values(**run)).inserted_primary_key[0]  # type: ignore[index]
                rows.append(JobRow.from_mapping({**run, "pk": pk}))
            return sweep, rows

        return self.store.write(op, tentative=True)

    def mark_cancelled(self, sweep_pk: int) -> Future[None]:
        def op(conn: Connection) -> None:
            conn.execute(update(sweeps).where(sweeps.c.pk == sweep_pk).values(cancelled=True))

        return self.store.write(op)

    def delete_sweep(self, sweep_id: str) -> Future[DeleteOutcome]:
        """Delete a sweep, its runs and their losses, if every run is final."""

        def op(conn: Connection) -> DeleteOutcome:
            if conn.execute(select(sweeps.c.pk).where(sweeps.c.id == sweep_id)).first() is None:
                return "gone"
            in_sweep = jobs.c.sweep_id == sweep_id
            if conn.execute(
                select(jobs.c.pk).where(in_sweep, jobs.c.status.not_in(_FINAL))
            ).first():
                return "not_final"
            run_pks = select(jobs.c.pk).where(in_sweep).scalar_subquery()
            conn.execute(delete(loss_chunks).where(loss_chunks.c.job_pk.in_(run_pks)))
            conn.execute(delete(jobs).where(in_sweep))
            conn.execute(delete(sweeps).where(sweeps.c.id == sweep_id))
            conn.execute(
                delete(webhook_deliveries).where(webhook_deliveries.c.sweep_id == sweep_id)
            )
            return "deleted"

        return self.store.write(op, tentative=True)

    # -- reads (any thread) -----------------------------------------------------------------
    def get_sweep(self, sweep_id: str) -> tuple[SweepRow, list[JobRow]] | None:
        """The sweep and its runs in the grid's order, read in one transaction."""
        with self.store.engine.connect() as conn:
            row = conn.execute(select(sweeps).where(sweeps.c.id == sweep_id)).mappings().first()
            if row is None:
                return None
            return SweepRow.from_mapping(row), _runs(conn, [sweep_id])[sweep_id]

    def list_sweeps(
        self,
        limit: int,
        before_pk: int | None,
        variants: list[str] | None,
        *,
        labels: list[str] | None = None,
        id_prefix: str | None = None,
    ) -> list[tuple[SweepRow, list[JobRow]]]:
        """Sweeps newest first with their runs, at most `limit`, older than `before_pk`."""
        stmt = select(sweeps).order_by(sweeps.c.pk.desc()).limit(limit)
        if before_pk is not None:
            stmt = stmt.where(sweeps.c.pk < before_pk)
        if variants:
            stmt = stmt.where(sweeps.c.variant.in_(variants))
        if labels:
            stmt = stmt.where(sweeps.c.label.in_(labels))
        if id_prefix:
            stmt = stmt.where(sweeps.c.id.startswith(id_prefix, autoescape=True))
        with self.store.engine.connect() as conn:
            rows = [SweepRow.from_mapping(r) for r in conn.execute(stmt).mappings()]
            runs = _runs(conn, [r.id for r in rows])
        return [(row, runs[row.id]) for row in rows]


def runs_of(conn: Connection, sweep_id: str) -> list[JobRow]:
    """One sweep's runs, in the grid's order."""
    return _runs(conn, [sweep_id])[sweep_id]


def _runs(conn: Connection, sweep_ids: Iterable[str]) -> dict[str, list[JobRow]]:
    """The runs of each sweep, in the grid's order (the order they were stored in)."""
    ids = list(sweep_ids)
    found: dict[str, list[JobRow]] = {sweep_id: [] for sweep_id in ids}
    if not ids:
        return found
    stmt = select(jobs).where(jobs.c.sweep_id.in_(ids)).order_by(jobs.c.pk)
    for mapping in conn.execute(stmt).mappings():
        row = JobRow.from_mapping(mapping)
        assert row.sweep_id is not None
        found[row.sweep_id].append(row)
    return found
