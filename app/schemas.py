"""Request and response bodies of the HTTP API."""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from workers.variants import VARIANTS

VariantName = Literal[
    "numpy", "tensors", "autograd", "custom_function", "nn", "optim", "custom_module", "dynamic"
]
assert set(VariantName.__args__) == set(VARIANTS)  # type: ignore[attr-defined]


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class JobCreate(BaseModel):
    """A training job to run."""

    model_config = ConfigDict(
        extra="forbid",
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

    @field_validator("label")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        # no database stores it faithfully (PostgreSQL refuses it, C strings end at it)
        if value is not None and "\x00" in value:
            raise ValueError("must not contain the NUL character (\\u0000)")
        return value


class JobError(BaseModel):
    code: str = Field(
        description="diverged, out_of_memory, interrupted, timeout or internal.",
        examples=["diverged"],
    )
    message: str
    step: int | None = Field(None, description="The step it happened at, where there is one.")


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

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        error = None
        if row.get("error_code"):
            step = row["step"] - 1 if row["error_code"] == "diverged" else None
            error = JobError(code=row["error_code"], message=row["error_message"] or "", step=step)
        last = row.get("last_loss")
        return cls(
            id=row["id"],
            variant=row["variant"],
            label=row["label"],
            hyperparameters=row["hyperparameters"],
            seed=row["seed"],
            device=row["device"],
            assigned_device=row.get("assigned_device"),
            status=row["status"],
            step=row["step"],
            steps=row["steps"],
            last_loss=last if last is not None and math.isfinite(last) else None,
            created_at=row["created_at"],
            started_at=row.get("started_at"),
            finished_at=row.get("finished_at"),
            environment=row.get("environment"),
            error=error,
            attempts=row.get("attempts") or 0,
        )


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
    defaults: dict[str, Any] = Field(description="Every hyperparameter it takes, with its default.")
    hyperparameters_schema: dict[str, Any] = Field(
        description="JSON schema of its hyperparameters: types, ranges and descriptions."
    )
