"""The job vocabulary: what a job is, how it stands, and what a worker says about it.

One set of names for the service, its backends, the workers and the client. Importable alone:
nothing here imports torch, numpy, SQLAlchemy or FastAPI (a client shares it without them).

A backend turns a `JobSpec` into a stream of `WorkerMessage`s: one `Started` (with the facts
of the process that trains it), any number of `LossBatch`es and `Checkpointed`s, then one
`Finished`. A job taken
off a backend's queue before it started gets a `Finished` alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from trainwire.hyperparameters import Hyperparameters

VariantName = Literal[
    "numpy", "tensors", "autograd", "custom_function", "nn", "optim", "custom_module", "dynamic"
]
VARIANT_NAMES: tuple[str, ...] = VariantName.__args__  # type: ignore[attr-defined]


class JobStatus(StrEnum):
    """Where a job stands; succeeded, failed and cancelled are final and never change again
    (paused is not: a resume queues the job again)."""

    queued = "queued"
    running = "running"
    paused = "paused"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


FINAL_STATUSES: tuple[JobStatus, ...] = tuple(s for s in JobStatus if s.is_final)


class ErrorCode(StrEnum):
    """Why a job failed (the job's `error.code`)."""

    diverged = "diverged"  # the loss became NaN or infinite
    out_of_memory = "out_of_memory"
    interrupted = "interrupted"
    timeout = "timeout"
    internal = "internal"
    storage = "storage"  # the store could not keep the job's losses
    worker_lost = "worker_lost"  # its worker or node was lost, and so were the reruns


class RunOutcome(StrEnum):
    """How one run of a job on a worker ended."""

    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    interrupted = "interrupted"  # stopped by a shutdown: the job goes back to the queue
    paused = "paused"  # stopped by a pause, its state checkpointed: a resume goes on from it


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint file a run starts from: the state after `step` steps (workers.checkpoints)."""

    path: str
    step: int
    sha256: str


@dataclass(frozen=True)
class CheckpointPlan:
    """Where and how often a run writes its state, and the checkpoint it starts from."""

    folder: str  # the job's own folder: <checkpoint dir>/<job id>
    every: int = 0  # a checkpoint every this many steps; 0: only when paused and at the end
    resume: CheckpointRef | None = None


@dataclass(frozen=True)
class JobSpec:
    """Everything a run is a pure function of (with the device kind), and the job it is for."""

    variant: str
    hyperparameters: Hyperparameters
    seed: int
    device: str = "cpu"  # "cpu", "cuda" (any GPU) or "cuda:N"
    job_id: str = ""
    # torch/BLAS threads of the run (float32 curves depend on it); None: the backend chooses
    threads: int | None = None
    # None: the run writes no checkpoints and starts at step 0
    checkpoint: CheckpointPlan | None = None


@dataclass(frozen=True)
class Started:
    """A worker began the job; `environment` is what the training process uses (versions,
    device name, CUDA, threads, node)."""

    job_id: str
    device: str
    environment: dict[str, Any] = field(default_factory=dict)
    # when it began (the job's started_at); a clock reading, not part of what the message says
    at: float = field(default_factory=time.time, compare=False)


@dataclass(frozen=True)
class LossBatch:
    """The losses of steps first_step, first_step + 1, ... as the run made them (any float)."""

    job_id: str
    first_step: int
    values: list[float]

    @property
    def end_step(self) -> int:
        return self.first_step + len(self.values)


@dataclass(frozen=True)
class Finished:
    """The run ended; `steps_done` steps were handed out before it did."""

    job_id: str
    status: RunOutcome
    steps_done: int
    error_code: ErrorCode | None = None
    error_message: str | None = None
    # when it ended (the job's finished_at); a clock reading, not part of what the message says
    at: float = field(default_factory=time.time, compare=False)


@dataclass(frozen=True)
class Checkpointed:
    """The run wrote its state after `step` steps to `path` (durably: it can be used now), or,
    with `error`, could not (the run goes on; the next checkpoint tries again)."""

    job_id: str
    step: int
    path: str
    bytes: int = 0
    sha256: str = ""
    error: str | None = None
    at: float = field(default_factory=time.time, compare=False)


WorkerMessage = Started | LossBatch | Checkpointed | Finished
