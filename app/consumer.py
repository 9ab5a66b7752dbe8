"""The one consumer of a backend's messages: it stores what the workers say, then publishes it.

One thread reads `backend.next_message` and turns each message into a store write whose
after-commit callback publishes it on the event hub (persist first, then notify):
- `Started`: the job is running, with the environment of the process that trains it.
- `LossBatch`: the losses, made strict (a non-finite loss becomes None here, once), minus the
  steps a rerun recomputes that the store already has.
- `Checkpointed`: the checkpoint listed (the oldest beyond the newest K dropped, files too), or
  the job's `checkpoint_error` when it could not be written.
- `Finished`: the final status (or back to `queued` when a shutdown interrupted it, or `paused`).

The jobs in flight are the consumer's own table (`admit` before a job is handed to a backend):
the store's key of each, how many steps it has stored, and who waits for its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.hub import EventHub
from app.metrics import JobMetrics
from app.store import JobRow, Store
from app.store.rows import CheckpointRow
from trainwire.jobs import (
    Checkpointed,
    ErrorCode,
    Finished,
    JobStatus,
    LossBatch,
    RunOutcome,
    Started,
    WorkerMessage,
)
from workers.backend import Backend
from workers.checkpoints import checkpoint_name

log = logging.getLogger(__name__)

IDLE_WAIT_SECONDS = 5.0  # a safety net: `stop` wakes the wait at once


def utcnow(at: float | None = None) -> str:
    """`at` (seconds since the epoch; now when None) as ISO 8601 in UTC, to the millisecond."""
    moment = datetime.now(UTC) if at is None else datetime.fromtimestamp(at, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def strict_losses(values: list[float]) -> list[float | None]:
    """Losses as JSON and SQL can carry them: NaN and infinities become None."""
    return [v if math.isfinite(v) else None for v in values]


@dataclass
class _InFlight:
    pk: int
    stored: int  # steps 0..stored-1 are in the store: a rerun's copies of them are dropped
    started: float | None = None  # time.monotonic() at Started
    lost_write: str | None = None  # a loss write that failed for good: the job cannot succeed
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    variant: str = ""
    steps_counter: Any = None  # trainwire_steps_total of its variant and device, from Started
    steps: int = 0  # the job's last step: its final checkpoint is kept
    checkpoint_error: bool = False  # the job's object says a checkpoint failed
    rerun_differs: int | None = None  # the first recomputed step that differs from the stored


class MessageConsumer:
    def __init__(
        self,
        backend: Backend,
        store: Store,
        hub: EventHub,
        loop: asyncio.AbstractEventLoop,
        metrics: JobMetrics | None = None,
    ):
        self.backend, self.store, self.hub, self.loop = backend, store, hub, loop
        self.metrics = metrics or JobMetrics()  # without a registry: counted for nobody
        self._jobs: dict[str, _InFlight] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._draining = threading.Event()
        self.seconds_per_step: float | None = None  # running mean over finished runs
        self.checkpoints_kept = 3  # newest checkpoints of a job kept, besides its final one

    # -- the service's side -----------------------------------------------------------------
    def admit(self, row: JobRow, recovered: bool = False) -> None:
        """Expect messages of this job (call before handing it to the backend); `recovered`:
        submitted before this process started (not counted as submitted again)."""
        with self._lock:
            self._jobs[row.id] = _InFlight(
                row.pk,
                row.step,
                variant=row.variant,
                steps=row.steps,
                checkpoint_error=row.checkpoint_error is not None,
            )
        if not recovered:
            self.metrics.submitted(row.variant)

    def job_counts(self) -> tuple[int, int]:
        """(queued, running) among the jobs in flight."""
        with self._lock:
            running = sum(1 for job in self._jobs.values() if job.started is not None)
            return len(self._jobs) - running, running

    def forget(self, job_id: str) -> None:
        """The job left the backend without a message (cancelled while queued)."""
        with self._lock:
            job = self._jobs.pop(job_id, None)
        if job is not None:
            self._resolve(job)

    def in_flight(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._jobs

    async def wait_recorded(self, job_id: str) -> None:
        """Return once the job's end is stored (at once if it is not in flight)."""
        future: asyncio.Future[None] = self.loop.create_future()
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return
            job.waiters.append(future)
        await future

    def start(self) -> None:
        self._thread = threading.Thread(target=self._consume, name="job-messages", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Record what the backend has said so far, then stop (call after the backend's stop)."""
        self._draining.set()
        self.backend.wake_reader()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the consumer thread ----------------------------------------------------------------
    def _consume(self) -> None:
        while True:
            # no polling: an idle server's threads sleep until there is something to do
            message = self.backend.next_message(IDLE_WAIT_SECONDS)
            if message is None:
                if self._draining.is_set():
                    return
                continue
            try:
                self._handle(message)
            except Exception:  # one bad message must not stop every job's recording
                log.exception("recording %r failed", message)

    def _handle(self, message: WorkerMessage) -> None:
        with self._lock:
            job = self._jobs.get(message.job_id)
        if job is None:
            log.warning("a message for job %s, which is not in flight: %r", message.job_id, message)
            return
        if isinstance(message, LossBatch):
            self._losses(message, job)
        elif isinstance(message, Started):
            self._started(message, job)
        elif isinstance(message, Checkpointed):
            self._checkpointed(message, job)
        else:
            self._finished(message, job)

    def _started(self, message: Started, job: _InFlight) -> None:
        job.started = time.monotonic()
        job.steps_counter = self.metrics.steps_counter(job.variant, message.device)
        self.store.update_job(
            job.pk,
            status=JobStatus.running.value,
            started_at=utcnow(message.at),
            assigned_device=message.device,
            environment=message.environment,
            bump_attempts=True,
            after=self.status_publisher(message.job_id, final=False),
        )

    def _losses(self, message: LossBatch, job: _InFlight) -> None:
        if job.steps_counter is not None:  # steps trained, a rerun's recomputed ones included
            job.steps_counter.inc(len(message.values))
        first, values = message.first_step, strict_losses(message.values)
        if first < job.stored:  # a rerun recomputes stored steps: keep only new ones
            self._compare_rerun(message.job_id, job, first, values[: job.stored - first])
            values = values[job.stored - first :]
            first = job.stored
            if not values:
                return
        job.stored = first + len(values)
        job_id, loop, hub = message.job_id, self.loop, self.hub

        def publish(_: object) -> None:
            loop.call_soon_threadsafe(hub.publish_losses, job_id, first, values)

        future = self.store.append_losses(job.pk, first, values, after=publish)
        future.add_done_callback(lambda f: self._check_write(f.exception(), job_id, job))

    def _compare_rerun(
        self, job_id: str, job: _InFlight, first: int, values: list[float | None]
    ) -> None:
        """A rerun recomputes the stored steps; on the same kind of machine bit for bit. Where
        one differs (another GPU model, driver or library; a fault), the steps stored after it
        come from another trajectory than the rest: said once per run, in the log and in
        trainwire_rerun_mismatches_total. The job goes on (its curve is still a curve of its
        hyperparameters; the log names the step where its two parts meet)."""
        if job.rerun_differs is not None:
            return
        _, stored = self.store.read_losses(job.pk, first - 1, len(values))
        for i, (old, new) in enumerate(zip(stored, values, strict=False)):
            if old != new and not (old is None and new is None):
                job.rerun_differs = first + i
                log.warning(
                    "job %s: its rerun computed %r at step %d where %r is stored; the steps "
                    "from %d on come from another trajectory than those stored before",
                    job_id, new, first + i, old, job.stored,
                )  # fmt: skip
                self.metrics.rerun_mismatch(job.variant)
                return

    def _check_write(self, exc: BaseException | None, job_id: str, job: _InFlight) -> None:
        if exc is None or job.lost_write is not None:
            return
        # not a full disk (that waits): the write itself was refused, so the curve has a hole
        job.lost_write = f"storing its losses failed: {exc}"[:500]
        self.backend.cancel(job_id)

    def _checkpointed(self, message: Checkpointed, job: _InFlight) -> None:
        if message.error is not None:
            self.metrics.checkpoint_failed()
            job.checkpoint_error = True
            self.store.update_job(
                job.pk, checkpoint_error=f"step {message.step}: {message.error}"[:500]
            )
            return
        self.metrics.checkpoint_written(message.bytes)
        folder = Path(message.path).parent
        row = CheckpointRow(job.pk, message.step, message.bytes, message.sha256, utcnow(message.at))

        def remove(dropped: list[int]) -> None:
            for step in dropped:
                with contextlib.suppress(OSError):
                    (folder / checkpoint_name(step)).unlink()

        self.store.add_checkpoint(row, self.checkpoints_kept, job.steps, after=remove)
        if job.checkpoint_error:
            job.checkpoint_error = False
            self.store.update_job(job.pk, checkpoint_error=None)

    def _finished(self, message: Finished, job: _InFlight) -> None:
        job_id = message.job_id
        if message.status == RunOutcome.interrupted:
            # stopped by a shutdown: back to the queue, to run again at the next start
            self.store.update_job(
                job.pk,
                status=JobStatus.queued.value,
                after=self.status_publisher(job_id, final=False, then_release=job_id),
            )
            return
        if message.status == RunOutcome.paused and job.lost_write is None:
            # its state is checkpointed: a resume queues it again
            self.store.update_job(
                job.pk,
                status=JobStatus.paused.value,
                after=self.status_publisher(job_id, final=False, then_release=job_id),
            )
            return
        status, code, text = JobStatus(message.status.value), message.error_code, None
        text = message.error_message
        if job.lost_write is not None:
            status, code, text = JobStatus.failed, ErrorCode.storage, job.lost_write
        elif status == JobStatus.succeeded and job.started is not None and message.steps_done:
            took = (time.monotonic() - job.started) / message.steps_done
            mean = self.seconds_per_step
            self.seconds_per_step = took if mean is None else 0.8 * mean + 0.2 * took
        self.store.update_job(
            job.pk,
            status=status.value,
            finished_at=utcnow(message.at),
            error_code=code.value if code is not None else None,
            error_message=text,
            after=self.status_publisher(job_id, final=True, then_release=job_id),
        )

    def status_publisher(
        self, job_id: str, final: bool, then_release: str | None = None
    ) -> Callable[[JobRow | None], None]:
        """An after-commit callback that publishes the job's new status (and, with
        `then_release`, forgets the job)."""

        def after(row: JobRow | None) -> None:
            if row is not None:
                data = row.to_job().model_dump_json()
                self.loop.call_soon_threadsafe(self.hub.publish_status, job_id, data, final)
                self.metrics.status_stored(row)
            if then_release is not None:
                self.forget(then_release)

        return after

    def _resolve(self, job: _InFlight) -> None:
        for waiter in job.waiters:
            self.loop.call_soon_threadsafe(_set_done, waiter)


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
