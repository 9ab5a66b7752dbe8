"""Drives one job: builds the problem, runs the variant, hands out losses, stops when told.

A variant is a function `train(run: Run) -> None` written like the tutorial's program; everything
around it (which device, when to stop, where the losses go) lives here.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
import torch

from trainwire.jobs import Checkpointed, ErrorCode, Finished, JobSpec, RunOutcome
from workers.checkpoints import CheckpointState, CheckpointUnusable
from workers.numerics import pin_numerics
from workers.problem import TORCH_DTYPES, Problem
from workers.recorder import Diverged, LossRecorder, LossSink
from workers.variants import VARIANTS

log = logging.getLogger(__name__)

CheckpointSink = Callable[[Checkpointed], None]


class CancelFlag(Protocol):
    """What a run asks between steps: a threading.Event, or a flag shared with another process."""

    def is_set(self) -> bool: ...


class Cancelled(Exception):
    """The job was cancelled; raised between steps."""


class TimedOut(Exception):
    """The job ran past its wall-clock limit; raised between steps."""


class Paused(Exception):
    """The job was paused; raised between steps, once its state is checkpointed."""


class Run:
    """What a variant sees: its problem, hyperparameters, device, the step loop and the recorder.

    A variant names the state its training changes once (`keep`); the step loop then starts
    where the job's checkpoint left off and writes checkpoints when they are due (every
    `checkpoint.every` steps, when paused, and after the last step)."""

    def __init__(
        self,
        spec: JobSpec,
        recorder: LossRecorder,
        cancel: CancelFlag,
        deadline: float | None,
        pause: CancelFlag | None = None,
        on_checkpoint: CheckpointSink | None = None,
    ):
        hp = spec.hyperparameters
        self.hp = hp
        self.spec = spec
        self.device = torch.device(spec.device)
        self.dtype = TORCH_DTYPES[hp.dtype]
        self.problem = Problem(spec.seed, hp.batch_size, hp.d_in, hp.hidden, hp.d_out, hp.dtype)
        self._recorder = recorder
        self._cancel = cancel
        self._pause = pause
        self._deadline = deadline
        self._on_checkpoint = on_checkpoint
        self._state: CheckpointState | None = None
        self.start = 0  # the first step this run trains

    def keep(self, **state: Any) -> None:
        """The state the run's steps change (arrays, tensors, a module, an optimizer, a
        random.Random); loaded in place from the job's checkpoint when it has one."""
        self._state = CheckpointState(state)
        plan = self.spec.checkpoint
        if plan is None or plan.resume is None:
            return
        ref = plan.resume
        try:
            self._state.load(ref.path, ref.sha256, ref.step)
        except CheckpointUnusable as exc:
            # from step 0 instead: the same curve, only later (the stored steps are dropped)
            log.warning("job %s starts at step 0: %s", self.spec.job_id, exc)
            return
        self.start = ref.step
        self._recorder.restart(ref.step)

    def checkpoint(self, step: int) -> None:
        """Write the state after `step` steps; a failure is reported, never raised."""
        plan = self.spec.checkpoint
        if plan is None or self._state is None:
            return
        # every loss before `step` goes out first: the store then holds them when it lists the
        # checkpoint (recovery starts from a checkpoint at or before the stored step)
        self._recorder.flush()
        identity = {
            "job_id": self.spec.job_id,
            "variant": self.spec.variant,
            "seed": self.spec.seed,
            "hyperparameters": self.hp.model_dump(),
        }
        try:
            written = self._state.write(plan.folder, step, identity)
        except Exception as exc:  # a full disk must not fail or stall the job
            log.warning("job %s: checkpoint of step %d failed: %s", self.spec.job_id, step, exc)
            message = Checkpointed(self.spec.job_id, step, "", error=f"{exc}"[:500])
        else:
            message = Checkpointed(
                self.spec.job_id, step, written.path, written.bytes, written.sha256
            )
        if self._on_checkpoint is not None:
            self._on_checkpoint(message)

    @property
    def sizes(self) -> tuple[int, int, int, int]:
        """N, D_in, H, D_out."""
        return self.hp.batch_size, self.hp.d_in, self.hp.hidden, self.hp.d_out

    def steps(self) -> Iterator[int]:
        """range(start, steps), checking for cancellation, a pause and the time limit before
        each step, and writing the checkpoints that are due."""
        plan = self.spec.checkpoint
        every = plan.every if plan is not None else 0
        for t in range(self.start, self.hp.steps):
            if self._cancel.is_set():
                raise Cancelled()
            if self._pause is not None and self._pause.is_set():
                self.checkpoint(t)
                raise Paused()
            if self._deadline is not None and time.monotonic() > self._deadline:
                raise TimedOut()
            if every and t > self.start and t % every == 0:
                self.checkpoint(t)
            yield t
        self.checkpoint(self.hp.steps)  # the final weights

    def record(self, t: int, loss: Any) -> None:
        """Hand step t's loss out (without a device sync on a GPU)."""
        self._recorder.record(t, loss)


# The streams jobs run on, per device: one per worker thread, reused job after job. The caching
# allocator reuses a freed block only on the stream it was allocated on, and cuBLAS keeps a
# workspace per stream, so a fresh stream per job would grow a worker's reserved memory job by job.
_streams: dict[tuple[torch.device, int], Any] = {}
_streams_lock = threading.Lock()


def job_stream(device: torch.device, make: Callable[[torch.device], Any] | None = None) -> Any:
    """The calling thread's CUDA stream on `device` (made on first use; `make`: a seam for
    tests without a GPU)."""
    if device.index is None and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    key = (device, threading.get_ident())
    with _streams_lock:
        stream = _streams.get(key)
        if stream is None:
            stream = (make or torch.cuda.Stream)(device)
            _streams[key] = stream
        return stream


# torch's CPU allocator raises a plain RuntimeError ("DefaultCPUAllocator: can't allocate memory:
# ... Error code 12 (Cannot allocate memory)"), not torch.OutOfMemoryError as CUDA's does
_OUT_OF_MEMORY_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    message = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(m in message for m in _OUT_OF_MEMORY_MESSAGES)


def run_job(
    spec: JobSpec,
    sink: LossSink,
    cancel: CancelFlag | None = None,
    timeout_s: float | None = None,
    flush_seconds: float = 0.005,
    pause: CancelFlag | None = None,
    on_checkpoint: CheckpointSink | None = None,
) -> Finished:
    """Run one job to its end and say how it ended; losses go to `sink` as they are made,
    checkpoints to `on_checkpoint` once written. `pause`: stop before the next step with the
    state checkpointed (RunOutcome.paused)."""
    device = torch.device(spec.device)
    pin_numerics()
    recorder = LossRecorder(sink, spec.hyperparameters.steps, device, flush_seconds)
    deadline = time.monotonic() + timeout_s if timeout_s else None
    run = Run(spec, recorder, cancel or threading.Event(), deadline, pause, on_checkpoint)
    train = VARIANTS[spec.variant].train
    try:
        # each job on its own CUDA stream, so concurrent jobs on one GPU don't serialise on the
        # default one; made inside the try, so a device without CUDA fails the job, not the caller
        stream_ctx: Any = (
            torch.cuda.stream(job_stream(device))
            if device.type == "cuda"
            else contextlib.nullcontext()
        )
        # numpy warns on overflow; a diverging run is reported by the recorder instead
        with stream_ctx, np.errstate(over="ignore", invalid="ignore"):
            try:
                train(run)
            finally:
                recorder.flush()
    except Diverged as exc:
        return Finished(
            spec.job_id,
            RunOutcome.failed,
            recorder.delivered,
            ErrorCode.diverged,
            f"the loss became {exc.loss} at step {exc.step}; try a smaller learning_rate",
        )
    except Cancelled:
        return Finished(spec.job_id, RunOutcome.cancelled, recorder.delivered)
    except Paused:
        return Finished(spec.job_id, RunOutcome.paused, recorder.delivered)
    except TimedOut:
        return Finished(
            spec.job_id,
            RunOutcome.failed,
            recorder.delivered,
            ErrorCode.timeout,
            f"the job ran past its time limit of {timeout_s:g} s",
        )
    except Exception as exc:  # a fault in one job must not take its worker down
        if not _is_out_of_memory(exc):
            return Finished(
                spec.job_id,
                RunOutcome.failed,
                recorder.delivered,
                ErrorCode.internal,
                f"{type(exc).__name__}: {exc}"[:500],
            )
        oom = Finished(
            spec.job_id,
            RunOutcome.failed,
            recorder.delivered,
            ErrorCode.out_of_memory,
            str(exc)[:500],
        )
    else:
        return Finished(spec.job_id, RunOutcome.succeeded, recorder.delivered)
    # out of memory: the exception (and the traceback holding the run's tensors) is gone now,
    # so the caching allocator can hand the memory back for the next job
    del run, recorder
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return oom
