"""The webhook outbox: a delivery row is inserted in the transaction of the status change that
causes it (so a stored change always has its notification, and a rolled-back one never has),
then app.webhooks sends it, retries it, and records how that went."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from app.store.rows import JobRow
from app.store.tables import sweeps, webhook_deliveries
from trainwire.jobs import JobStatus
from trainwire.models import WebhookDelivery

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"

# a job's status -> the event it is (queued is none: a submit's answer already says so)
EVENT_OF_STATUS = {
    JobStatus.running: "started",
    JobStatus.paused: "paused",
    JobStatus.succeeded: "succeeded",
    JobStatus.failed: "failed",
    JobStatus.cancelled: "cancelled",
}
# the events a sweep delivers: its own end
SWEEP_EVENTS = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class Due:
    """A pending delivery, as its sender needs it."""

    pk: int
    id: str
    url: str
    payload: str
    attempts: int
    next_attempt: float


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _stamp(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _insert(conn: Connection, url: str, kind: str, event: str, data: Any, **owner: str) -> None:
    at = datetime.now(UTC)
    payload = {
        "type": f"{kind}.{event}",
        "timestamp": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "data": data,
    }
    conn.execute(
        insert(webhook_deliveries).values(
            id=f"msg_{secrets.token_hex(16)}",
            url=url,
            event=payload["type"],
            payload=json.dumps(payload, allow_nan=False, separators=(",", ":")),
            status=PENDING,
            attempts=0,
            next_attempt=at.timestamp(),
            created_at=payload["timestamp"],
            **owner,
        )
    )


def enqueue_status_change(conn: Connection, row: JobRow) -> int:
    """In the transaction that gave the job `row`'s status: its delivery if its webhook wants
    this event, and its sweep's if the change ended a sweep with a webhook. How many."""
    added = 0
    event = EVENT_OF_STATUS.get(row.status)
    if row.webhook_url and event is not None and event in (row.webhook_events or ()):
        data = row.to_job().model_dump(mode="json")
        _insert(conn, row.webhook_url, "job", event, data, job_id=row.id)
        added += 1
    if row.sweep_id is not None and row.status.is_final:
        added += _enqueue_sweep_end(conn, row.sweep_id)
    return added


def _enqueue_sweep_end(conn: Connection, sweep_id: str) -> int:
    from app.store.sweeps import SweepRow, runs_of, sweep_status  # noqa: PLC0415 (a cycle)

    found = conn.execute(
        select(sweeps).where(sweeps.c.id == sweep_id, sweeps.c.webhook_url.is_not(None))
    ).mappings()
    mapping = found.first()
    if mapping is None:
        return 0
    sweep = SweepRow.from_mapping(mapping)
    runs = runs_of(conn, sweep_id)
    if not all(run.status.is_final for run in runs):
        return 0
    event = sweep_status(sweep.cancelled, runs).value
    if event not in (sweep.webhook_events or ()) or not sweep.webhook_url:
        return 0
    already = conn.execute(
        select(func.count())
        .select_from(webhook_deliveries)
        .where(webhook_deliveries.c.sweep_id == sweep_id)
    ).scalar_one()
    if already:  # a sweep ends once
        return 0
    data = sweep.to_sweep(runs).model_dump(mode="json")
    _insert(conn, sweep.webhook_url, "sweep", event, data, sweep_id=sweep_id)
    return 1


def due(conn: Connection, limit: int, offset: int = 0) -> list[Due]:
    """Pending deliveries, soonest first (from the `offset`th on)."""
    d = webhook_deliveries.c
    stmt = (
        select(d.pk, d.id, d.url, d.payload, d.attempts, d.next_attempt)
        .where(d.status == PENDING)
        .order_by(d.next_attempt, d.pk)
        .limit(limit)
        .offset(offset)
    )
    return [Due(*r) for r in conn.execute(stmt).all()]


def record(
    conn: Connection, pk: int, error: str | None, next_attempt: float | None, gave_up: bool
) -> None:
    """An attempt's outcome: delivered (no error), to retry at `next_attempt`, or given up."""
    d = webhook_deliveries.c
    values: dict[str, Any] = {"attempts": d.attempts + 1, "last_error": error}
    if error is None:
        values.update(status=DELIVERED, delivered_at=_now(), next_attempt=None)
    elif gave_up:
        values.update(status=FAILED, next_attempt=None)
    else:
        values.update(next_attempt=next_attempt)
    conn.execute(update(webhook_deliveries).where(d.pk == pk).values(**values))


def listed(
    conn: Connection, *, job_id: str | None = None, sweep_id: str | None = None
) -> list[WebhookDelivery]:
    """A job's or a sweep's deliveries, oldest first."""
    d = webhook_deliveries.c
    where = d.job_id == job_id if job_id is not None else d.sweep_id == sweep_id
    rows = conn.execute(select(webhook_deliveries).where(where).order_by(d.pk)).mappings()
    return [
        WebhookDelivery(
            id=r["id"],
            event=r["event"],
            status=r["status"],
            attempts=r["attempts"],
            last_error=r["last_error"],
            next_attempt_at=_stamp(r["next_attempt"]),
            created_at=r["created_at"],
            delivered_at=r["delivered_at"],
        )
        for r in rows
    ]


def oldest_pending(conn: Connection) -> str | None:
    """When the oldest pending delivery was made (ISO 8601), or None."""
    d = webhook_deliveries.c
    return conn.execute(select(func.min(d.created_at)).where(d.status == PENDING)).scalar_one()
