"""The job service: commands and queries on jobs, what the routes call.

It validates a request once, stores the job, and hands it to the backend; the backend's
messages come back through the consumer (app.consumer), never through this class. Streams
(app.stream) and losses (app.losses) read the store on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from app.consumer import MessageConsumer, utcnow
from app.errors import (
    CheckpointNotFound,
    InvalidField,
    InvalidFields,
    JobFinal,
    JobNotFinal,
    JobNotFound,
    JobStateConflict,
    KeyResourceGone,
    QueueFull,
)
from app.hub import EventHub
from app.metrics import JobMetrics
from app.pagination import decode_cursor, draw_seed, encode_cursor, is_job_id, new_job_id
from app.settings import Settings, usable_cores
from app.store import JobRow, Store
from app.store.idempotency import Claim, Claimed
from app.store.rows import CheckpointRow
from app.store.writer import Abandoned, Tentative
from app.waiting import explain
from app.webhooks import DeliveryMetrics, WebhookSender, stored_webhook, validate_webhook
from trainwire.hyperparameters import Hyperparameters
from trainwire.jobs import CheckpointPlan, CheckpointRef, JobSpec, JobStatus
from trainwire.models import CheckpointInfo, Job, JobCreate, Webhook, WebhookDelivery
from workers.backend import Backend, DeviceUnavailable
from workers.checkpoints import checkpoint_path
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

# how often a request's write that has not committed looks at the store's state
WRITE_POLL_SECONDS = 0.05

# unknown hyperparameters beyond this many are refused by name, before any is validated
MAX_LISTED_UNKNOWN = 50

# seconds per step assumed for Retry-After before any job has finished (a tutorial-sized step)
DEFAULT_SECONDS_PER_STEP = 0.001

# what a fork may not change: the shapes of the state it starts from (and the seed: x and y)
SHAPE_FIELDS = ("batch_size", "d_in", "hidden", "d_out", "dtype")


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
        delivery_metrics: DeliveryMetrics | None = None,
    ):
        self.settings = settings
        self.store = store
        self.hub = hub
        self.backend = backend
        self.consumer = MessageConsumer(backend, store, hub, asyncio.get_running_loop(), metrics)
        self.consumer.checkpoints_kept = settings.checkpoints_kept
        self.checkpoint_root = settings.checkpoint_root()
        self._inserting = 0  # submissions between their room check and their enqueue
        self.ready = False
        # at start, each takes the recovered jobs it queues itself and returns the others
        self.recovery_hooks: list[Callable[[list[JobRow]], list[JobRow]]] = []
        # sends the outbox's webhook deliveries (none without a secret to sign them with)
        self.webhooks: WebhookSender | None = None
        if settings.webhook_secret is not None:
            self.webhooks = WebhookSender(store, settings, delivery_metrics)

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
            # from its newest checkpoint whose steps before it are all stored
            resume = self.store.latest_checkpoint(row.pk, row.step)
            self._enqueue(row, hp, device, recovered=True, resume=resume)
        self.consumer.start()
        self.backend.start()
        if self.webhooks is not None:  # what a crash left pending goes out now
            self.webhooks.start()
        self.ready = True

    def stop(self) -> None:
        """Stop workers (running jobs go back to the queue for the next start), record what
        they said last."""
        self.ready = False
        self.backend.stop(timeout=5.0)
        self.consumer.stop()
        if self.webhooks is not None:
            self.webhooks.stop()

    @property
    def accepting(self) -> bool:
        """Ready, with every worker up and a store that writes."""
        return self.ready and self.backend.ready and self.store.writable

    # -- commands -------------------------------------------------------------------------------
    async def submit(self, req: JobCreate, idempotency_key: str | None = None) -> Submitted[Job]:
        """Store and queue a job (a fork: from its parent's checkpoint). With an idempotency
        key that an earlier request holds: nothing new, that request's job
        (`Submitted.replayed`)."""
        claim = self.claim("jobs", idempotency_key, req)
        if claim is not None and (earlier := await run_in_threadpool(self.store.find_claim, claim)):
            return Submitted(await self.replay(claim, earlier, self.get), replayed=True)
        await self.check_webhook(req.webhook)
        if req.from_ is not None:
            return await self._fork(req, claim)
        hp = self._hyperparameters(req.variant, req.hyperparameters)
        device = self._device(req.device, req.variant)
        _check_threads(req.threads)
        self.store.check_writable()
        with self.queue_room(1):
            row = await self.committed(
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
                        "checkpoint_every": self._checkpoint_every(req),
                        **stored_webhook(req.webhook),
                    },
                    claim,
                )
            )
            if isinstance(row, Claimed):  # an earlier request took the key meanwhile
                assert claim is not None
                return Submitted(await self.replay(claim, row, self.get), replayed=True)
            self._enqueue(row, hp, device)
        return Submitted(row.to_job())

    async def committed(self, write: Future[T]) -> T:
        """A request's write, once committed. If the store cannot write (it says so, or the
        write has not gone through in TRAINWIRE_STORE_WRITE_TIMEOUT_S), the write is given up
        (it never happens) and StoreUnwritable answers 503 with Retry-After at once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.store_write_timeout_s
        waited = asyncio.wrap_future(write)
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(waited), WRITE_POLL_SECONDS)
            except TimeoutError:
                pass
            late = not self.store.writable or loop.time() >= deadline
            if late and isinstance(write, Tentative) and write.abandon():
                with contextlib.suppress(Abandoned):
                    await waited  # its outcome, read
                raise self.store.unwritable_error()

    async def check_webhook(self, webhook: Webhook | None) -> None:
        """A request's webhook, or a 422 naming `webhook.url` (a host may be looked up)."""
        if webhook is not None:
            await run_in_threadpool(validate_webhook, webhook, self.settings, ("body", "webhook"))

    async def deliveries(self, job_id: str) -> list[WebhookDelivery]:
        row = await find_job(self.store, job_id)
        return await run_in_threadpool(self.store.deliveries, job_id=row.id)

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

    def _hyperparameters(self, variant: str, given: dict[str, Any]) -> Hyperparameters:
        """The variant's hyperparameters, resolved and within the limits; 422 naming a field."""
        model = VARIANTS[variant].hyperparameters
        unknown = [name for name in given if name not in model.model_fields]
        if len(unknown) > MAX_LISTED_UNKNOWN:  # named without validating them all, on the loop
            raise InvalidFields(
                [
                    {
                        "loc": ("body", "hyperparameters", name),
                        "msg": "Extra inputs are not permitted",
                        "type": "extra_forbidden",
                    }
                    for name in unknown
                ]
            )
        try:
            return parse_hyperparameters(
                VARIANTS[variant].hyperparameters, given, variant, self.settings.limits
            )
        except HyperparameterError as exc:
            raise InvalidFields(
                [{**e, "loc": ("body", "hyperparameters", *e["loc"])} for e in exc.errors]
            ) from None

    def _checkpoint_every(self, req: JobCreate) -> int:
        if req.checkpoint_every is not None:
            return req.checkpoint_every
        return self.settings.checkpoint_every

    async def _fork(self, req: JobCreate, claim: Claim | None) -> Submitted[Job]:
        """A job that starts from another job's checkpoint (see docs/checkpoints.md)."""
        assert req.from_ is not None
        parent = await find_job(self.store, req.from_.job_id)
        step = req.from_.step
        if req.variant != parent.variant:
            raise InvalidField(("body", "variant"), f"must be {parent.variant!r}, the parent's")
        if req.seed is not None and req.seed != parent.seed:
            raise InvalidField(
                ("body", "seed"), f"must be {parent.seed} or absent: x and y come from the seed"
            )
        start = await run_in_threadpool(self.store.get_checkpoint, parent.pk, step)
        if start is None:
            have = [c.step for c in await run_in_threadpool(self.store.list_checkpoints, parent.pk)]
            raise InvalidField(
                ("body", "from", "step"),
                f"job {parent.id} has no checkpoint of step {step}; it has {have}",
            )
        hp = self._hyperparameters(req.variant, {**parent.hyperparameters, **req.hyperparameters})
        for name in SHAPE_FIELDS:
            if getattr(hp, name) != parent.hyperparameters.get(name):
                raise InvalidField(
                    ("body", "hyperparameters", name),
                    f"a fork keeps the shapes of its checkpoint: {name} must be "
                    f"{parent.hyperparameters.get(name)!r}",
                )
        if hp.steps <= step:
            raise InvalidField(
                ("body", "hyperparameters", "steps"), f"must be more than from.step ({step})"
            )
        device = self._device(req.device, req.variant)
        threads = req.threads if req.threads is not None else recorded_threads(parent.environment)
        _check_threads(threads)
        self.store.check_writable()
        job_id = new_job_id()
        source = checkpoint_path(self.checkpoint_root / parent.id, step)
        target = checkpoint_path(self.checkpoint_root / job_id, step)
        # the fork's own copy: it starts (and recovers) from it even once the parent is gone
        try:
            await run_in_threadpool(_link_or_copy, source, target)
        except OSError as exc:
            raise InvalidField(
                ("body", "from", "step"), f"the checkpoint of step {step} cannot be read: {exc}"
            ) from None
        values: dict[str, Any] = {
            "id": job_id,
            "variant": req.variant,
            "label": req.label,
            "hyperparameters": hp.model_dump(),
            "seed": parent.seed,
            "device": req.device,
            "status": JobStatus.queued.value,
            "steps": hp.steps,
            "created_at": utcnow(),
            "attempts": 0,
            "environment": None if threads is None else {"threads": threads},
            "checkpoint_every": self._checkpoint_every(req),
            "forked_from_job": parent.id,
            "forked_from_step": step,
            **stored_webhook(req.webhook),
        }
        with self.queue_room(1):
            row = await self.committed(self.store.insert_fork(values, parent.pk, start, claim))
            if isinstance(row, Claimed):  # an earlier request took the key meanwhile
                assert claim is not None
                return Submitted(await self.replay(claim, row, self.get), replayed=True)
            own = CheckpointRow(row.pk, step, start.bytes, start.sha256, start.created_at)
            self._enqueue(row, hp, device, resume=own)
        return Submitted(row.to_job())

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
        self,
        row: JobRow,
        hp: Hyperparameters,
        device: str,
        recovered: bool = False,
        resume: CheckpointRow | None = None,
    ) -> None:
        self.consumer.admit(row, recovered=recovered)
        threads = recorded_threads(row.environment)  # pinned, or what an earlier run used
        folder = self.checkpoint_root / row.id
        every = (
            self.settings.checkpoint_every if row.checkpoint_every is None else row.checkpoint_every
        )
        ref = None
        if resume is not None:
            ref = CheckpointRef(
                str(checkpoint_path(folder, resume.step)), resume.step, resume.sha256
            )
        plan = CheckpointPlan(str(folder), every, ref)
        self.backend.submit(
            JobSpec(
                row.variant, hp, row.seed, device, job_id=row.id, threads=threads, checkpoint=plan
            )
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

    async def pause(self, job_id: str) -> Job:
        row = await find_job(self.store, job_id)
        if row.status not in (JobStatus.queued, JobStatus.running):
            raise JobStateConflict(job_id, row.status, "only a queued or running job pauses")
        self.store.check_writable()
        where = self.backend.pause(job_id)
        if where == "running":  # it checkpoints and stops before its next step; its stream says
            return row.to_job()
        if where is None:
            # it ends or starts meanwhile, or it is a run of a fused sweep (which goes on)
            raise JobStateConflict(job_id, row.status, "it cannot be paused now; try again")
        updated = await asyncio.wrap_future(
            self.store.update_job(
                row.pk,
                status=JobStatus.paused.value,
                after=self.consumer.status_publisher(job_id, final=False),
            )
        )
        self.consumer.forget(job_id)
        if updated is None:
            row = await find_job(self.store, job_id)
            raise JobFinal(job_id, row.status)
        return updated.to_job()

    async def resume(self, job_id: str) -> Job:
        row = await find_job(self.store, job_id)
        if row.status != JobStatus.paused:
            raise JobStateConflict(job_id, row.status, "only a paused job resumes")
        self.store.check_writable()
        hp = VARIANTS[row.variant].hyperparameters.model_validate(row.hyperparameters)
        device = self._device(row.device, row.variant)
        resume = await run_in_threadpool(self.store.latest_checkpoint, row.pk, row.step)
        with self.queue_room(1):
            updated = await asyncio.wrap_future(
                self.store.update_job(
                    row.pk,
                    status=JobStatus.queued.value,
                    after=self.consumer.status_publisher(job_id, final=False),
                )
            )
            if updated is None:
                row = await find_job(self.store, job_id)
                raise JobFinal(job_id, row.status)
            self._enqueue(updated, hp, device, recovered=True, resume=resume)
        return updated.to_job()

    async def checkpoints(self, job_id: str) -> list[CheckpointInfo]:
        row = await find_job(self.store, job_id)
        rows = await run_in_threadpool(self.store.list_checkpoints, row.pk)
        return [
            CheckpointInfo(step=c.step, bytes=c.bytes, sha256=c.sha256, created_at=c.created_at)
            for c in rows
        ]

    async def checkpoint_file(self, job_id: str, step: int) -> tuple[Path, CheckpointRow]:
        """The file of the job's checkpoint of `step`, and its row."""
        row = await find_job(self.store, job_id)
        found = await run_in_threadpool(self.store.get_checkpoint, row.pk, step)
        path = checkpoint_path(self.checkpoint_root / row.id, step)
        if found is None or not await run_in_threadpool(path.is_file):
            raise CheckpointNotFound(job_id, step)
        return path, found

    async def delete(self, job_id: str) -> None:
        row = await find_job(self.store, job_id)
        if not row.status.is_final:
            raise JobNotFinal(job_id, row.status)
        self.store.check_writable()
        if not await self.committed(self.store.delete_job(row.pk)):
            raise JobNotFound(job_id)  # a concurrent delete got there first
        await run_in_threadpool(shutil.rmtree, self.checkpoint_root / row.id, True)

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


def _check_threads(threads: int | None) -> None:
    if threads is not None and threads > usable_cores():
        raise InvalidField(
            ("body", "threads"), f"at most {usable_cores()}, the cores this server runs jobs on"
        )


def _link_or_copy(source: Path, target: Path) -> None:
    """`target` holds `source`'s bytes, durably (a hard link where the filesystem allows)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except FileExistsError:
        return
    except OSError:
        tmp = target.with_name(f".{target.name}.copy.tmp")
        shutil.copyfile(source, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
