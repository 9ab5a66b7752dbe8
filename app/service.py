"""The job service: commands and queries on jobs, what the routes call.

It validates a request once, stores the job, and hands it to the backend; the backend's
messages come back through the consumer (app.consumer), never through this class. Streams
(app.stream) and losses (app.losses) read the store on their own.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Generic, TypeVar

from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from app.consumer import MessageConsumer, utcnow
from app.errors import (
    InvalidField,
    InvalidFields,
    JobFinal,
    JobNotFinal,
    JobNotFound,
    KeyResourceGone,
    QueueFull,
)
from app.hub import EventHub
from app.metrics import JobMetrics
from app.pagination import decode_cursor, draw_seed, encode_cursor, is_job_id, new_job_id
from app.settings import Settings, usable_cores
from app.store import JobRow, Store
from app.store.idempotency import Claim, Claimed
from app.waiting import explain
from trainwire.hyperparameters import Hyperparameters
from trainwire.jobs import JobSpec, JobStatus
from trainwire.models import Job, JobCreate
from workers.backend import Backend, DeviceUnavailable
from workers.hyperparameters import HyperparameterError, parse_hyperparameters
from workers.threads import recorded_threads
from workers.variants import VARIANTS

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Submitted(Generic[T]):
    """What a POST made, and whether it is an earlier request's (an idempotency key's replay)."""

    made: T
    replayed: bool = False


# the running jobs read to tell a queued one why it waits (more run only on a large cluster)
WAITING_RUNNING_READ = 1000

# seconds per step assumed for Retry-After before any job has finished (a tutorial-sized step)
DEFAULT_SECONDS_PER_STEP = 0.001


async def find_job(store: Store, job_id: str) -> JobRow:
    """The stored job, or JobNotFound."""
    if not is_job_id(job_id):  # not one of ours: no need to ask the store
        raise JobNotFound(job_id)
    row = await run_in_threadpool(store.get_job, job_id)
    if row is None:
        raise JobNotFound(job_id)
    return row


class JobService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        hub: EventHub,
        backend: Backend,
        metrics: JobMetrics | None = None,
    ):
        self.settings = settings
        self.store = store
        self.hub = hub
        self.backend = backend
        self.consumer = MessageConsumer(backend, store, hub, asyncio.get_running_loop(), metrics)
        self._inserting = 0  # submissions between their room check and their enqueue
        self.ready = False
        # at start, each takes the recovered jobs it queues itself and returns the others
        self.recovery_hooks: list[Callable[[list[JobRow]], list[JobRow]]] = []

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Requeue what a crash or shutdown left unfinished, then start the workers."""
        rows = self.store.requeue_unfinished()
        for requeue in self.recovery_hooks:  # e.g. the runs of fused sweeps, as groups again
            rows = requeue(rows)
        for row in rows:
            hp = VARIANTS[row.variant].hyperparameters.model_validate(row.hyperparameters)
            try:
                device = self._device(row.device, row.variant)
            except InvalidField:
                # a job recovered from a server set up otherwise: it stays queued (and
                # cancellable) until a server with a worker for its device starts
                device = "cpu" if row.device == "auto" else row.device
                log.warning(
                    "job %s waits for a %s worker, which this server does not run", row.id, device
                )
            self._enqueue(row, hp, device, recovered=True)
        self.consumer.start()
        self.backend.start()
        self.ready = True

    def stop(self) -> None:
        """Stop workers (running jobs go back to the queue for the next start), record what
        they said last."""
        self.ready = False
        self.backend.stop(timeout=5.0)
        self.consumer.stop()

    @property
    def accepting(self) -> bool:
        """Ready, with every worker up and a store that writes."""
        return self.ready and self.backend.ready and self.store.writable

    # -- commands -------------------------------------------------------------------------------
    async def submit(self, req: JobCreate, idempotency_key: str | None = None) -> Submitted[Job]:
        """Store and queue a job. With an idempotency key that an earlier request holds:
        nothing new, that request's job (`Submitted.replayed`)."""
        claim = self.claim("jobs", idempotency_key, req)
        if claim is not None and (earlier := await run_in_threadpool(self.store.find_claim, claim)):
            return Submitted(await self.replay(claim, earlier, self.get), replayed=True)
        variant = VARIANTS[req.variant]
        try:
            hp = parse_hyperparameters(
                variant.hyperparameters, req.hyperparameters, req.variant, self.settings.limits
            )
        except HyperparameterError as exc:
            raise InvalidFields(
                [{**e, "loc": ("body", "hyperparameters", *e["loc"])} for e in exc.errors]
            ) from None
        device = self._device(req.device, req.variant)
        if req.threads is not None and req.threads > usable_cores():
            raise InvalidField(
                ("body", "threads"), f"at most {usable_cores()}, the cores this server runs jobs on"
            )
        self.store.check_writable()
        with self.queue_room(1):
            row = await asyncio.wrap_future(
                self.store.insert_job(
                    {
                        "id": new_job_id(),
                        "variant": req.variant,
                        "label": req.label,
                        "hyperparameters": hp.model_dump(),
                        "seed": req.seed if req.seed is not None else draw_seed(),
                        "device": req.device,
                        "status": JobStatus.queued.value,
                        "step": 0,
                        "steps": hp.steps,
                        "created_at": utcnow(),
                        "attempts": 0,
                        # a pinned thread count is the run's from the start (workers.threads)
                        "environment": None if req.threads is None else {"threads": req.threads},
                    },
                    claim,
                )
            )
            if isinstance(row, Claimed):  # an earlier request took the key meanwhile
                assert claim is not None
                return Submitted(await self.replay(claim, row, self.get), replayed=True)
            self._enqueue(row, hp, device)
        return Submitted(row.to_job())

    def claim(self, scope: str, key: str | None, req: BaseModel) -> Claim | None:
        """The claim of a request's idempotency key (None without one)."""
        if key is None:
            return None
        now = time.time()
        kept_since = utcnow(now - self.settings.idempotency_hours * 3600)
        return Claim.of(scope, key, req, utcnow(now), kept_since)

    async def replay(
        self, claim: Claim, earlier: Claimed, read: Callable[[str], Awaitable[T]]
    ) -> T:
        """What the earlier request with this key made, as it is now: a 422 for a key that
        came with another request, a 409 for something deleted since."""
        if not earlier.same_request:
            hours = f"{self.settings.idempotency_hours:g}"
            raise InvalidField(
                ("header", "Idempotency-Key"),
                f"this key came with another request body (keys are kept {hours} h); "
                "use a new key for a new request",
                "idempotency_key_reused",
            )
        try:
            return await read(earlier.resource_id)
        except JobNotFound:
            raise KeyResourceGone(claim.key, earlier.resource_id) from None

    @contextmanager
    def queue_room(self, jobs: int) -> Iterator[None]:
        """Hold room in the queue for `jobs` jobs while they are stored and queued; QueueFull
        if the queue cannot take them all."""
        # the room check and the reservation with no await between them: concurrent
        # submissions cannot all pass the check before any of them is queued
        if self.backend.queued() + self._inserting + jobs > self.settings.max_queued:
            raise QueueFull(self.retry_after())
        self._inserting += jobs
        try:
            yield
        finally:
            self._inserting -= jobs

    def _device(self, asked: str, variant: str) -> str:
        try:
            return self.backend.resolve_device(asked, VARIANTS[variant].devices)
        except DeviceUnavailable as exc:
            raise InvalidField(("body", "device"), str(exc)) from None

    def _enqueue(
        self, row: JobRow, hp: Hyperparameters, device: str, recovered: bool = False
    ) -> None:
        self.consumer.admit(row, recovered=recovered)
        threads = recorded_threads(row.environment)  # pinned, or what an earlier run used
        self.backend.submit(
            JobSpec(row.variant, hp, row.seed, device, job_id=row.id, threads=threads)
        )

    def retry_after(self) -> int:
        """Seconds until the queue has room again, from the work queued: a slot frees up every
        (mean queued job's duration / slots) seconds."""
        specs = self.backend.queued_specs()
        per_step = self.consumer.seconds_per_step or DEFAULT_SECONDS_PER_STEP
        if not specs:
            return 1
        work = sum(s.hyperparameters.steps for s in specs) * per_step
        seconds = work / len(specs) / max(1, self.backend.slots)
        return max(1, min(24 * 3600, math.ceil(seconds)))

    async def cancel(self, job_id: str) -> Job:
        row = await find_job(self.store, job_id)
        if row.status.is_final:
            raise JobFinal(job_id, row.status)
        self.store.check_writable()
        where = self.backend.cancel(job_id)
        if where == "running":  # it stops before its next step; its stream says when
            return row.to_job()
        if where is None and self.consumer.in_flight(job_id):
            # it ended meanwhile and its end is on the way to the store: that end stands
            await self.consumer.wait_recorded(job_id)
            row = await find_job(self.store, job_id)
            raise JobFinal(job_id, row.status)
        updated = await asyncio.wrap_future(
            self.store.update_job(
                row.pk,
                status=JobStatus.cancelled.value,
                finished_at=utcnow(),
                after=self.consumer.status_publisher(job_id, final=True),
            )
        )
        self.consumer.forget(job_id)
        if updated is None:  # it ended meanwhile
            row = await find_job(self.store, job_id)
            raise JobFinal(job_id, row.status)
        return updated.to_job()

    async def delete(self, job_id: str) -> None:
        row = await find_job(self.store, job_id)
        if not row.status.is_final:
            raise JobNotFinal(job_id, row.status)
        self.store.check_writable()
        if not await asyncio.wrap_future(self.store.delete_job(row.pk)):
            raise JobNotFound(job_id)  # a concurrent delete got there first

    # -- queries --------------------------------------------------------------------------------
    async def get(self, job_id: str) -> Job:
        job = (await find_job(self.store, job_id)).to_job()
        return (await self.with_waiting([job]))[0]

    async def with_waiting(self, jobs: list[Job]) -> list[Job]:
        """The jobs, each queued one with why it waits (`Job.waiting`)."""
        if not any(job.status is JobStatus.queued for job in jobs):
            return jobs
        queued = self.backend.queued_specs()
        workers = self.backend.worker_states()
        running = await run_in_threadpool(
            self.store.list_jobs, WAITING_RUNNING_READ, None, [JobStatus.running.value]
        )
        per_step, cores = self.consumer.seconds_per_step, usable_cores()
        return [
            job.model_copy(
                update={"waiting": explain(job.id, queued, workers, running, per_step, cores)}
            )
            if job.status is JobStatus.queued
            else job
            for job in jobs
        ]

    async def list_jobs(
        self,
        limit: int,
        cursor: str | None,
        statuses: list[str],
        variants: list[str],
        sweeps: list[str] | None = None,
        *,
        labels: list[str] | None = None,
        id_prefix: str | None = None,
    ) -> tuple[list[Job], str | None]:
        before = decode_cursor(cursor) if cursor else None
        rows = await run_in_threadpool(
            partial(
                self.store.list_jobs,
                limit + 1,
                before,
                statuses or None,
                variants or None,
                sweeps,
                labels=labels or None,
                id_prefix=id_prefix,
            )
        )
        more = len(rows) > limit
        rows = rows[:limit]
        jobs = await self.with_waiting([r.to_job() for r in rows])
        return jobs, encode_cursor(rows[-1].pk) if more else None
