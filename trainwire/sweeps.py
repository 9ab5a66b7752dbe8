"""Sweeps in the HTTP API: a grid of runs submitted as one request, and where it stands.

Pydantic models only (no torch, no server code), shared by the service and the client, like
`trainwire.models`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from trainwire.jobs import JobStatus, VariantName
from trainwire.models import JobError, Webhook

__all__ = [
    "Fuse",
    "Sweep",
    "SweepCounts",
    "SweepCreate",
    "SweepList",
    "SweepRun",
    "SweepStatus",
]

Fuse = Literal["auto"] | bool


class SweepStatus(StrEnum):
    """Where a sweep stands: `queued` until a run starts, `running` while any run is not
    final, then `succeeded` (every run did), `failed` (a run failed) or `cancelled`."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (SweepStatus.succeeded, SweepStatus.failed, SweepStatus.cancelled)


class SweepCreate(BaseModel):
    """A grid of runs of one variant: every combination of the grid's values is a job."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "variant": "nn",
                    "hyperparameters": {"steps": 500},
                    "grid": {"learning_rate": [1e-5, 3e-5, 1e-4, 3e-4], "seed": [0, 1, 2]},
                    "device": "auto",
                    "label": "lr scan",
                    "fuse": "auto",
                }
            ]
        },
    )

    variant: VariantName = Field(description="Which of the tutorial's eight programs to run.")
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict,
        description="What every run shares: any of the variant's fields not in `grid`; missing "
        "ones take the variant's defaults.",
        examples=[{"steps": 500}],
    )
    grid: dict[str, list[Any]] = Field(
        description="Field -> a non-empty list of values, for any of the variant's "
        "hyperparameters and for `seed`. The runs are every combination (the Cartesian "
        "product, in the order given: the last field varies fastest).",
        examples=[{"learning_rate": [1e-5, 3e-5, 1e-4, 3e-4], "seed": [0, 1, 2]}],
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=2**32 - 1,
        strict=True,
        description="The seed of every run when `seed` is not in the grid; absent: the server "
        "draws one for the whole sweep, so that its runs differ only in the swept fields.",
    )
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda|cuda:\d{1,3})$",
        description="auto (a GPU when there is one and the variant can use it), cpu, cuda, cuda:N.",
    )
    label: str | None = Field(None, max_length=200, description="A name of your choosing.")
    fuse: Literal["auto", "true", "false"] | bool = Field(
        "auto",
        description="Run the runs that differ only in learning rate and seed as one batched "
        'computation: "auto" (where the device is a GPU), true, false ("true" and "false" as '
        "strings too).",
    )
    exact: bool | None = Field(
        None,
        description="When runs are fused, must each equal the same job alone bit for bit? "
        "true: runs fuse only on kernels that give exactly the job alone's curve (per-run "
        "products on the CPU; on a GPU batched ones a check found equal, else the runs train "
        "as plain jobs). false: batched kernels for speed, reproducible as a group, within "
        "rounding of the job alone at each step but not equal to it. Default: true with "
        '`fuse: true`, false with `fuse: "auto"`. Each run\'s `environment.fused_exact` says '
        "what holds (by_construction, checked or unchecked).",
    )
    webhook: Webhook | None = Field(
        None,
        description="Notify this URL when the sweep ends (its own status: succeeded, failed, "
        "cancelled; docs/webhooks.md).",
    )

    @field_validator("label")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("must not contain the NUL character (\\u0000)")
        return value

    @field_validator("fuse")
    @classmethod
    def _fuse_words(cls, value: str | bool) -> Fuse:
        # "true" and "false" as strings too: the contract writes them as words
        if value == "true" or value is True:
            return True
        if value == "false" or value is False:
            return False
        return "auto"


class SweepCounts(BaseModel):
    """How many of the sweep's runs stand where."""

    queued: int = 0
    running: int = 0
    paused: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0


class SweepRun(BaseModel):
    """One run of a sweep, in brief (`GET /v1/jobs/{id}` has the rest)."""

    id: str
    hyperparameters: dict[str, Any] = Field(description="Every field, defaults resolved.")
    seed: int
    status: JobStatus
    step: int
    steps: int
    last_loss: float | None = Field(description="Loss of the last finished step; null if none.")
    error: JobError | None = None


class Sweep(BaseModel):
    """A sweep and where its runs stand."""

    id: str
    variant: VariantName
    label: str | None
    hyperparameters: dict[str, Any] = Field(
        description="What the runs share, defaults resolved (a swept field shows its default)."
    )
    grid: dict[str, list[Any]]
    seed: int | None = Field(description="The seed of every run when the grid has no `seed`.")
    device: str = Field(description="The device asked for.")
    fuse: Fuse
    exact: bool = Field(
        description="Fused runs must equal the jobs alone bit for bit (see the request's field)."
    )
    fused: bool = Field(
        description="Its runs are handed to the workers as batched groups (each run's "
        "`environment.fused_runs` says how many ran together)."
    )
    status: SweepStatus
    counts: SweepCounts
    jobs: list[SweepRun] = Field(description="The runs, in the grid's order.")
    created_at: str
    finished_at: str | None
    webhook: Webhook | None = Field(None, description="Where its end is sent.")


class SweepList(BaseModel):
    items: list[Sweep]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null: none.")
