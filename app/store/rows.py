"""A stored job, typed, and its view in the API."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from trainwire.jobs import ErrorCode, JobStatus
from trainwire.models import ForkOrigin, Job, JobError, Webhook, WebhookEvent


@dataclass(frozen=True)
class JobRow:
    """One row of the `jobs` table (see tables.py). `pk` orders jobs by submission and keys
    their losses; `id` is the public name."""

    pk: int
    id: str
    variant: str
    label: str | None
    hyperparameters: dict[str, Any]
    seed: int
    device: str
    status: JobStatus
    steps: int
    created_at: str
    step: int = 0
    assigned_device: str | None = None
    last_loss: float | None = None
    started_at: str | None = None
    finished_at: str | None = None
    environment: dict[str, Any] | None = None
    error_code: str | None = None
    error_message: str | None = None
    attempts: int = 0
    sweep_id: str | None = None
    checkpoint_every: int | None = None
    forked_from_job: str | None = None
    forked_from_step: int | None = None
    checkpoint_error: str | None = None
    webhook_url: str | None = None
    webhook_events: list[str] | None = None

    @classmethod
    def from_mapping(cls, row: Any) -> JobRow:
        values = {f.name: row[f.name] for f in fields(cls) if f.name in row}
        values["status"] = JobStatus(values["status"])
        values["step"] = values.get("step") or 0
        values["attempts"] = values.get("attempts") or 0
        return cls(**values)

    def to_job(self) -> Job:
        """The API's view of the job."""
        error = None
        if self.error_code:
            step = self.step - 1 if self.error_code == ErrorCode.diverged else None
            error = JobError(
                code=ErrorCode(self.error_code), message=self.error_message or "", step=step
            )
        return Job(
            id=self.id,
            variant=self.variant,  # type: ignore[arg-type]
            label=self.label,
            hyperparameters=self.hyperparameters,
            seed=self.seed,
            device=self.device,
            assigned_device=self.assigned_device,
            status=self.status,
            step=self.step,
            steps=self.steps,
            last_loss=self.last_loss,  # stored as NULL where it was not finite
            created_at=self.created_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            environment=self.environment,
            error=error,
            attempts=self.attempts,
            sweep_id=self.sweep_id,
            checkpoint_every=self.checkpoint_every,
            forked_from=None
            if self.forked_from_job is None
            else ForkOrigin(job_id=self.forked_from_job, step=self.forked_from_step or 0),
            checkpoint_error=self.checkpoint_error,
            webhook=webhook_of(self.webhook_url, self.webhook_events),
        )


@dataclass(frozen=True)
class CheckpointRow:
    """One row of the `checkpoints` table: the state of a job after `step` steps."""

    job_pk: int
    step: int
    bytes: int
    sha256: str
    created_at: str


def webhook_of(url: str | None, events: list[str] | None) -> Webhook | None:
    """The API's view of a stored webhook (it has no secret to leave out: the server's is
    its own setting)."""
    if url is None:
        return None
    return Webhook(url=url, events=[WebhookEvent(e) for e in events or ()])
