"""The HTTP API's request and response bodies, shared by the service and the client.

Pydantic models only (no torch, no server code): `from trainwire.models import Job` is cheap.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from trainwire.jobs import ErrorCode, JobStatus, VariantName

# the most threads a request may pin anywhere (a server allows at most its own cores)
MAX_JOB_THREADS = 1024

__all__ = [
    "CheckpointInfo",
    "CheckpointList",
    "ErrorCode",
    "ForkFrom",
    "ForkOrigin",
    "Job",
    "JobCreate",
    "JobError",
    "JobList",
    "JobStatus",
    "Losses",
    "MAX_JOB_THREADS",
    "VariantInfo",
    "VariantName",
    "Waiting",
    "Webhook",
    "WebhookDelivery",
    "WebhookDeliveryList",
    "WebhookEvent",
]

# the longest webhook URL accepted (the service refuses longer ones with a 422)
MAX_WEBHOOK_URL = 2048


class WebhookEvent(StrEnum):
    """A status change a webhook may ask for (`job.<event>` or `sweep.<event>` in a payload)."""

    started = "started"
    paused = "paused"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class Webhook(BaseModel):
    """Where to POST, signed (Standard Webhooks), when the job's or sweep's status changes."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1,
        description="http or https URL of a host the server allows "
        "(TRAINWIRE_WEBHOOK_ALLOWED_HOSTS); at most 2048 characters, no user:password@.",
    )
    events: list[WebhookEvent] = Field(
        default_factory=lambda: [
            WebhookEvent.succeeded,
            WebhookEvent.failed,
            WebhookEvent.cancelled,
        ],
        max_length=5,
        description="The status changes to deliver; absent: succeeded, failed and cancelled. "
        "A sweep delivers its own status only (succeeded, failed, cancelled).",
    )

    @field_validator("events")
    @classmethod
    def _unique(cls, value: list[WebhookEvent]) -> list[WebhookEvent]:
        return list(dict.fromkeys(value))


class WebhookDelivery(BaseModel):
    """One notification of a status change, and how sending it went."""

    id: str = Field(description="Its webhook-id header, the same on every attempt.")
    event: str = Field(description="job.succeeded, sweep.failed, ...")
    status: str = Field(description="pending, delivered or failed (given up).")
    attempts: int
    last_error: str | None = Field(description="Why the last attempt failed; null if none.")
    next_attempt_at: str | None = Field(description="When it is tried next (pending only).")
    created_at: str
    delivered_at: str | None


class WebhookDeliveryList(BaseModel):
    items: list[WebhookDelivery]


class ForkFrom(BaseModel):
    """Where a fork starts: a job's checkpoint (GET /v1/jobs/{id}/checkpoints)."""

    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(max_length=64, description="The job to fork.")
    step: int = Field(
        ge=0,
        le=2**53,
        strict=True,
        description="One of its checkpointed steps: the fork starts from its state after this "
        "many steps, and its own first step is this one.",
    )


class ForkOrigin(BaseModel):
    job_id: str
    step: int


class JobCreate(BaseModel):
    """A training job to run."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "variant": "optim",
                    "hyperparameters": {"steps": 500, "learning_rate": 0.0001},
                    "seed": 1234,
                    "device": "auto",
                    "label": "adam baseline",
                }
            ]
        },
    )

    variant: VariantName = Field(description="Which of the tutorial's eight programs to run.")
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Any of the variant's fields (see GET /v1/variants); missing ones take the "
            "variant's defaults. Unknown fields, or fields the variant does not use, are a 422."
        ),
        examples=[{"steps": 500, "learning_rate": 0.0001}],
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=2**32 - 1,
        strict=True,
        description="Seed of every random draw; absent: the server draws one and records it.",
    )
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda|cuda:\d{1,3})$",
        description="auto (a GPU when there is one and the variant can use it), cpu, cuda, cuda:N.",
    )
    label: str | None = Field(None, max_length=200, description="A name of your choosing.")
    threads: int | None = Field(
        None,
        ge=1,
        le=MAX_JOB_THREADS,
        strict=True,
        description="torch/BLAS threads of the run, at most the server's cores (a CPU job "
        "starts once that many are free). Absent: chosen when the job starts, from the cores "
        "free then. Either way it is recorded in environment.threads and reused by any rerun: "
        "the curves of the torch variants depend on it.",
    )
    checkpoint_every: int | None = Field(
        None,
        ge=0,
        le=2**31 - 1,
        strict=True,
        description="Write the job's state every this many steps (0: only when it is paused "
        "and at its end). Absent: the server's default (TRAINWIRE_CHECKPOINT_EVERY). Never "
        "changes the curve.",
    )
    from_: ForkFrom | None = Field(
        None,
        alias="from",
        description="Fork: start from this job's checkpoint. The hyperparameters given override "
        "the parent's (those that change a tensor's shape, and the seed, must stay); with none "
        "changed, the steps after `step` are the parent's bit for bit.",
    )
    webhook: Webhook | None = Field(
        None, description="Notify this URL of the job's status changes (docs/webhooks.md)."
    )

    @field_validator("label")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        # no database stores it faithfully (PostgreSQL refuses it, C strings end at it)
        if value is not None and "\x00" in value:
            raise ValueError("must not contain the NUL character (\\u0000)")
        return value


class JobError(BaseModel):
    code: ErrorCode = Field(
        description="diverged, out_of_memory, interrupted, timeout, internal, storage or "
        "worker_lost.",
        examples=["diverged"],
    )
    message: str
    step: int | None = Field(None, description="The step it happened at, where there is one.")

    def non_finite_loss(self) -> str | None:
        """What a diverged job's last loss was (`nan`, `inf` or `-inf`), as its message says."""
        if self.code is not ErrorCode.diverged:
            return None
        found = _NON_FINITE_LOSS.search(self.message)
        return found.group(1) if found else None


# the runner's message for a diverged job: "the loss became inf at step 4; ..."
_NON_FINITE_LOSS = re.compile(r"\bthe loss became (nan|-?inf)\b")


class Waiting(BaseModel):
    """Why a queued job has not started, from what the service knows when it is asked."""

    reason: str = Field(
        description="queue: jobs ahead of it on its device; workers: every worker for its "
        "device is busy; cores: a worker is free, but the cores the job runs on are held by "
        "running jobs; starting: a worker is taking it now.",
        examples=["cores"],
    )
    ahead: int = Field(description="Queued jobs that start before it on its device.")
    running: int = Field(description="Jobs running now on its device.")
    workers: int = Field(description="Workers for its device (most jobs running at once).")
    estimated_start_seconds: float | None = Field(
        description="A rough estimate of when it starts: the steps of the jobs ahead and the "
        "steps left of the running ones, at the mean seconds per step of the jobs finished so "
        "far, shared among the workers; null until a job has finished."
    )
    message: str = Field(
        description="The same, in a sentence.",
        examples=["waiting for free cores: 1 running job holds the 2 cores of this host"],
    )


class Job(BaseModel):
    """A job and where it stands."""

    id: str
    variant: VariantName
    label: str | None
    hyperparameters: dict[str, Any] = Field(description="Every field, defaults resolved.")
    seed: int
    device: str = Field(description="The device asked for.")
    assigned_device: str | None = Field(description="Where it runs or ran: cpu or cuda:N.")
    status: JobStatus
    step: int = Field(description="How many steps have finished (and been stored).")
    steps: int
    last_loss: float | None = Field(description="Loss of the last finished step; null if none.")
    created_at: str
    started_at: str | None
    finished_at: str | None
    environment: dict[str, Any] | None = Field(
        description="Versions and device the run used, to reproduce the curve later."
    )
    error: JobError | None
    attempts: int = Field(0, description="Times a worker started this job (more after a crash).")
    sweep_id: str | None = Field(None, description="The sweep this job is a run of; null if none.")
    waiting: Waiting | None = Field(
        None,
        description="While queued, why it waits and a rough estimate of when it starts (in "
        "GET answers; null otherwise, and in stream events).",
    )
    checkpoint_every: int | None = Field(
        None, description="Steps between its checkpoints (0: only when paused and at the end)."
    )
    forked_from: ForkOrigin | None = Field(
        None, description="A fork: the job and checkpointed step it started from."
    )
    checkpoint_error: str | None = Field(
        None,
        description="Why its last checkpoint could not be written (the job goes on; the next "
        "one tries again); null once one is written.",
    )
    webhook: Webhook | None = Field(None, description="Where its status changes are sent.")


class CheckpointInfo(BaseModel):
    step: int = Field(
        description="The state after this many steps (the last one: the final weights)."
    )
    bytes: int
    sha256: str = Field(description="Of the file's bytes (GET .../checkpoints/{step}).")
    created_at: str


class CheckpointList(BaseModel):
    items: list[CheckpointInfo]


class JobList(BaseModel):
    items: list[Job]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null: none.")


class Losses(BaseModel):
    job_id: str
    steps: list[int]
    losses: list[float | None] = Field(description="null where the loss was NaN or infinite.")
    next_after: int | None = Field(
        description="Pass as ?after= for the next page; null when this page reached the end."
    )


class VariantInfo(BaseModel):
    name: VariantName
    title: str
    description: str
    devices: list[str]
    available_devices: list[str] | None = Field(
        None,
        description="The devices of `devices` that this server's workers have now (on a Ray "
        "cluster: its nodes' CPUs and GPUs).",
    )
    defaults: dict[str, Any] = Field(description="Every hyperparameter it takes, with its default.")
    hyperparameters_schema: dict[str, Any] = Field(
        description="JSON schema of its hyperparameters: types, ranges and descriptions."
    )
