"""The job service: what the routes call. Submits, cancels, reads and streams jobs.

It ties the store (persist), the pool (run) and the hub (notify) together; the routes stay thin.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import os
import platform
import random
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
from fastapi.sse import KEEPALIVE_COMMENT, format_sse_event
from starlette.concurrency import run_in_threadpool

from app.errors import InvalidField, JobFinal, JobNotFinal, JobNotFound
from app.hub import EventHub, encode_losses, encode_status
from app.schemas import Job, JobCreate, JobError, JobStatus
from app.settings import Settings
from app.store import JobRow, Store
from workers.hyperparameters import HyperparameterError, parse_hyperparameters
from workers.pool import WorkerPool
from workers.recorder import LossSink
from workers.runner import JobSpec, Outcome
from workers.variants import VARIANTS

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 15.0

# Job ids and drawn seeds: a generator of the service's own, seeded from the OS once (os.urandom
# on every request would release and wait for the GIL behind busy workers). Never used by a run.
_ids = random.Random(os.urandom(32))


def job_from_row(row: JobRow) -> Job:
    """The API's view of a stored job."""
    error = None
    if row.get("error_code"):
        step = row["step"] - 1 if row["error_code"] == "diverged" else None
        error = JobError(code=row["error_code"], message=row["error_message"] or "", step=step)
    last = row.get("last_loss")
    return Job(
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


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _cursor_encode(pk: int) -> str:
    return base64.urlsafe_b64encode(f"pk:{pk}".encode()).decode().rstrip("=")


def _cursor_decode(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not text.startswith("pk:"):
            raise ValueError(text)
        pk = int(text[3:])
        if not 0 <= pk < 2**63:
            raise ValueError(pk)
        return pk
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidField(("query", "cursor"), "not a cursor this service handed out") from None


_JOB_ID = re.compile(r"[0-9a-f]{16}")  # what submit() hands out


class JobService:
    def __init__(self, settings: Settings, store: Store, hub: EventHub):
        self.settings = settings
        self.store = store
        self.hub = hub
        self.loop = asyncio.get_running_loop()
        self._resume: dict[str, tuple[int, int]] = {}  # job id -> (pk, steps already stored)
        self.pool = WorkerPool(
            cpu_workers=settings.cpu_worker_count(),
            jobs_per_gpu=settings.jobs_per_gpu,
            cpu_threads=settings.cpu_threads(),
            max_queued=settings.max_queued,
            on_start=self._on_start,
            sink_for=self._sink_for,
            on_finish=self._on_finish,
            timeout_s=settings.job_timeout_s,
            flush_seconds=settings.flush_seconds,
            processes=settings.worker_processes,
        )
        self.ready = False

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Requeue what a crash or shutdown left unfinished, then start the workers."""
        for row in self.store.unfinished_jobs():
            if row["status"] == JobStatus.running:
                row = (
                    self.store.submit(
                        self.store.op_update_job(row["pk"], status=JobStatus.queued)
                    ).result()
                    or row
                )
            self._enqueue(row, force=True)
        self.pool.start()
        self.ready = True

    def stop(self) -> None:
        """Stop workers; jobs they were running go back to the queue for the next start."""
        self.ready = False
        self.pool.stop(timeout=5.0)

    # -- commands -------------------------------------------------------------------------------
    async def submit(self, req: JobCreate) -> Job:
        variant = VARIANTS[req.variant]
        try:
            hp = parse_hyperparameters(
                variant.hyperparameters, req.hyperparameters, req.variant, self.settings.limits
            )
        except HyperparameterError as exc:
            raise InvalidFields(
                [{**e, "loc": ("body", "hyperparameters", *e["loc"])} for e in exc.errors]
            ) from None
        device = self._resolve_device(req.device, variant.devices)
        self.pool.check_room()  # a full queue answers 429 before anything is stored
        seed = req.seed if req.seed is not None else _ids.getrandbits(32)
        values = {
            "id": f"{_ids.getrandbits(64):016x}",
            "variant": req.variant,
            "label": req.label,
            "hyperparameters": hp.model_dump(),
            "seed": seed,
            "device": req.device,
            "assigned_device": None,
            "status": JobStatus.queued.value,
            "step": 0,
            "steps": hp.steps,
            "last_loss": None,
            "created_at": utcnow(),
            "environment": None,
            "attempts": 0,
        }
        row = await asyncio.wrap_future(self.store.submit(self.store.op_insert_job(values)))
        row["_queue_device"] = device
        self._enqueue(row, force=True)
        return job_from_row(row)

    def _resolve_device(self, asked: str, supported: tuple[str, ...]) -> str:
        gpus = self.pool.gpus if self.settings.jobs_per_gpu > 0 else []
        if asked == "auto" and gpus and "cuda" in supported:
            return "cuda"
        if asked in ("auto", "cpu"):
            if self.settings.cpu_worker_count() == 0:
                # else the job would wait in the queue for a worker that never comes
                why = ""
                if asked == "auto":
                    why = (
                        " and no GPU workers"
                        if "cuda" in supported
                        else "; the variant is CPU-only"
                    )
                raise InvalidField(("body", "device"), f"this server runs no CPU workers{why}")
            return "cpu"
        if "cuda" not in supported:
            raise InvalidField(("body", "device"), "this variant runs on the CPU only")
        if not gpus:
            raise InvalidField(("body", "device"), f"this host has no GPU for {asked!r}")
        if asked != "cuda" and asked not in gpus:
            raise InvalidField(
                ("body", "device"), f"this host has no {asked}; it has {', '.join(gpus)}"
            )
        return asked

    def _enqueue(self, row: JobRow, force: bool) -> None:
        variant = VARIANTS[row["variant"]]
        hp = variant.hyperparameters.model_validate(row["hyperparameters"])
        device = row.get("_queue_device") or row["device"]
        if device == "auto":
            try:
                device = self._resolve_device("auto", variant.devices)
            except InvalidField:
                device = "cpu"
        if not self.pool.has_worker_for(device):
            # a job recovered from a server set up otherwise: it stays queued (and cancellable)
            # until a server with a worker for its device starts
            log.warning(
                "job %s waits for a %s worker, which this server does not run", row["id"], device
            )
        self._resume[row["id"]] = (row["pk"], row["step"])
        self.pool.submit(row["id"], JobSpec(row["variant"], hp, row["seed"], device), force=force)

    async def cancel(self, job_id: str) -> Job:
        row = await self._row(job_id)
        if JobStatus(row["status"]).is_final:
            raise JobFinal(job_id, row["status"])
        where = self.pool.cancel(job_id)
        if where == "running":
            return job_from_row(row)
        updated = await asyncio.wrap_future(
            self.store.submit(
                self.store.op_update_job(
                    row["pk"], status=JobStatus.cancelled.value, finished_at=utcnow()
                ),
                self._after_status(job_id, final=True),
            )
        )
        if updated is None:  # it ended meanwhile
            row = await self._row(job_id)
            raise JobFinal(job_id, row["status"])
        return job_from_row(updated)

    async def delete(self, job_id: str) -> None:
        row = await self._row(job_id)
        if not JobStatus(row["status"]).is_final:
            raise JobNotFinal(job_id, row["status"])
        await asyncio.wrap_future(self.store.submit(self.store.op_delete_job(row["pk"])))

    # -- queries --------------------------------------------------------------------------------
    async def _row(self, job_id: str) -> JobRow:
        if not _JOB_ID.fullmatch(job_id):  # not one of ours: no need to ask the store
            raise JobNotFound(job_id)
        row = await run_in_threadpool(self.store.get_job, job_id)
        if row is None:
            raise JobNotFound(job_id)
        return row

    async def get(self, job_id: str) -> Job:
        return job_from_row(await self._row(job_id))

    async def list_jobs(
        self, limit: int, cursor: str | None, statuses: list[str], variants: list[str]
    ) -> tuple[list[Job], str | None]:
        before = _cursor_decode(cursor) if cursor else None
        rows = await run_in_threadpool(
            self.store.list_jobs, limit + 1, before, statuses or None, variants or None
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return [job_from_row(r) for r in rows], _cursor_encode(rows[-1]["pk"]) if more else None

    async def losses(
        self, job_id: str, after: int, limit: int
    ) -> tuple[list[int], list[float | None], int | None]:
        row = await self._row(job_id)
        steps, values = await run_in_threadpool(self.store.read_losses, row["pk"], after, limit + 1)
        more = len(steps) > limit
        steps, values = steps[:limit], values[:limit]
        return steps, values, steps[-1] if more else None

    async def losses_downsampled(
        self, job_id: str, max_points: int, after: int
    ) -> tuple[list[int], list[float | None]]:
        row = await self._row(job_id)
        # the steps stored when the job was read: a running job stores more meanwhile, and
        # buckets sized for fewer steps than are read would return more than max_points
        first = after + 1
        return await run_in_threadpool(
            downsample,
            self.store.iter_losses(row["pk"], after),
            first,
            max(0, row["step"] - first),
            max_points,
        )

    async def csv_rows(
        self, job_id: str, after: int, limit: int | None = None, max_points: int | None = None
    ) -> Iterator[str]:
        """`step,loss` rows: every loss after `after` (at most `limit`), or downsampled."""
        if max_points is not None:
            steps, values = await self.losses_downsampled(job_id, max_points, after)
            pages: Iterator[tuple[list[int], list[float | None]]] = iter([(steps, values)])
        else:
            row = await self._row(job_id)
            pages = self.store.iter_losses(row["pk"], after, limit=limit)

        def rows() -> Iterator[str]:
            yield "step,loss\n"
            for steps, values in pages:
                yield "".join(
                    f"{s},{'' if v is None else repr(v)}\n"
                    for s, v in zip(steps, values, strict=True)
                )

        return rows()

    # -- the live stream ------------------------------------------------------------------------
    async def events(self, job_id: str, after: int) -> AsyncIterator[bytes]:
        """status, every loss after `after` exactly once, live ones, then the final status."""
        row = await self._row(job_id)  # 404 before the stream starts
        return self._stream(job_id, row, after)

    async def _stream(self, job_id: str, row: JobRow, after: int) -> AsyncIterator[bytes]:
        channel = self.hub.subscribe(job_id)  # before reading the store: nothing slips between
        try:
            cursor = channel.next_seq
            row = await self._row(job_id)
            # retry: a dropped browser reconnects after 1 s (with Last-Event-ID), not 3 s
            yield format_sse_event(
                data_str=job_from_row(row).model_dump_json(), event="status", retry=1000
            )
            next_step = after + 1
            async for data, replayed_to in self._replay(row["pk"], next_step, None):
                yield data
                next_step = replayed_to
            if JobStatus(row["status"]).is_final:
                yield encode_status(job_from_row(row).model_dump_json())
                return
            while True:
                if cursor < channel.first_seq:  # fell out of the window: catch up from the store
                    # then go on from the oldest chunk still held: the losses in it are skipped
                    # by step, but a status in it (the final one above all) must not be lost
                    cursor = channel.first_seq
                    async for data, replayed_to in self._replay(row["pk"], next_step, None):
                        yield data
                        next_step = replayed_to
                out: list[bytes] = []  # sent as one write: fewer syscalls per wake-up
                final = False
                for chunk in channel.since(cursor):
                    cursor = chunk.seq + 1
                    if chunk.is_losses:
                        if chunk.end_step <= next_step:
                            continue
                        if chunk.first_step > next_step:  # a gap: the store has it
                            if out:
                                yield _joined(out)
                                out = []
                            async for data, replayed_to in self._replay(
                                row["pk"], next_step, chunk.first_step
                            ):
                                yield data
                                next_step = replayed_to
                        if chunk.first_step == next_step:
                            out.append(chunk.data)  # the shared bytes, encoded once
                        else:
                            skip = next_step - chunk.first_step
                            out.append(encode_losses(next_step, chunk.values[skip:]))
                        next_step = chunk.end_step
                    else:
                        out.append(chunk.data)
                        if chunk.final:
                            final = True
                            break
                if out:
                    yield _joined(out)
                if final:
                    return
                if self.hub.closing.is_set():
                    yield format_sse_event(comment="server shutting down", retry=1000)
                    return
                if cursor < channel.next_seq:
                    # more arrived while we were sending: `changed` has already been set and
                    # replaced, so waiting on it now would sleep until the next event or ping
                    continue
                try:
                    # asyncio.timeout, unlike wait_for, makes no task per wait
                    async with asyncio.timeout(KEEPALIVE_SECONDS):
                        await channel.changed.wait()
                except TimeoutError:
                    yield KEEPALIVE_COMMENT
        finally:
            self.hub.unsubscribe(job_id, channel)

    async def _replay(
        self, job_pk: int, next_step: int, until: int | None
    ) -> AsyncIterator[tuple[bytes, int]]:
        """Stored losses from next_step (to `until`, exclusive), as (encoded events, next step)."""
        while until is None or next_step < until:
            limit = 5000 if until is None else min(5000, until - next_step)
            steps, values = await run_in_threadpool(
                self.store.read_losses, job_pk, next_step - 1, limit
            )
            if not steps:
                return
            assert steps[0] == next_step, "stored steps are contiguous"
            next_step = steps[-1] + 1
            yield encode_losses(steps[0], values), next_step
            if len(steps) < limit:
                return

    # -- pool callbacks (worker threads) ------------------------------------------------------
    def _after_status(self, job_id: str, final: bool) -> Any:
        def publish(row: JobRow | None) -> None:
            if row is not None:
                data = job_from_row(row).model_dump_json()
                self.loop.call_soon_threadsafe(self.hub.publish_status, job_id, data, final)

        return publish

    def _on_start(self, job_id: str, device: str) -> None:
        pk, _ = self._resume[job_id]
        facts = self.pool.facts(device)  # from the process that trains the job
        environment = {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "device": device,
            "device_name": facts["device_name"],
            "cuda": facts["cuda"],
            "threads": facts["threads"],
            "platform": platform.platform(),
        }
        self.store.submit(
            self.store.op_update_job(
                pk,
                status=JobStatus.running.value,
                started_at=utcnow(),
                assigned_device=device,
                environment=environment,
                bump_attempts=True,
            ),
            self._after_status(job_id, final=False),
        )

    def _sink_for(self, job_id: str) -> LossSink:
        pk, stored = self._resume[job_id]
        loop, hub, store = self.loop, self.hub, self.store

        def sink(first_step: int, values: list[float]) -> None:
            # a job rerun after a crash recomputes its stored steps bit for bit: store only new ones
            if first_step < stored:
                values = values[stored - first_step :]
                first_step = stored
                if not values:
                    return

            def publish(_: object) -> None:
                loop.call_soon_threadsafe(hub.publish_losses, job_id, first_step, values)

            store.submit(store.op_append_losses(pk, first_step, values), publish)

        return sink

    def _on_finish(self, job_id: str, outcome: Outcome) -> None:
        pk, _ = self._resume.pop(job_id)
        if outcome.status == "interrupted":
            # stopped by a shutdown: back to the queue, to run again at the next start
            self.store.submit(
                self.store.op_update_job(pk, status=JobStatus.queued.value),
                self._after_status(job_id, final=False),
            )
            return
        self.store.submit(
            self.store.op_update_job(
                pk,
                status=outcome.status,
                finished_at=utcnow(),
                error_code=outcome.error_code,
                error_message=outcome.error_message,
            ),
            self._after_status(job_id, final=True),
        )


def _joined(parts: list[bytes]) -> bytes:
    return parts[0] if len(parts) == 1 else b"".join(parts)


class InvalidFields(InvalidField):
    def __init__(self, errors: list[dict[str, Any]]):
        Exception.__init__(self, "; ".join(e["msg"] for e in errors))
        self.errors = errors


def downsample(
    pages: Iterator[tuple[list[int], list[float | None]]],
    first: int,
    total: int,
    max_points: int,
) -> tuple[list[int], list[float | None]]:
    """At most max_points real points of steps [first, first + total): each bucket of steps
    keeps its lowest and highest loss."""
    per_bucket = 2 if max_points >= 2 else 1
    buckets = max(1, max_points // per_bucket)
    width = max(1, math.ceil(max(total, 1) / buckets))
    kept: dict[int, tuple[int, float | None]] = {}  # step -> point

    current = -1
    lo: tuple[int, float] | None = None
    hi: tuple[int, float] | None = None
    first_null: int | None = None

    def close() -> None:
        if lo is None:
            if first_null is not None:
                kept[first_null] = (first_null, None)
            return
        kept[lo[0]] = lo
        if per_bucket == 2 and hi is not None:
            kept[hi[0]] = hi

    end = first + total
    for steps, values in pages:
        if steps[0] >= end:
            break
        for step, value in zip(steps, values, strict=True):
            if step >= end:
                break
            bucket = (step - first) // width
            if bucket != current:
                if current >= 0:
                    close()
                current, lo, hi, first_null = bucket, None, None, None
            if value is None:
                if first_null is None:
                    first_null = step
                continue
            if lo is None or value < lo[1]:
                lo = (step, value)
            if hi is None or value > hi[1]:
                hi = (step, value)
    if current >= 0:
        close()
    points = sorted(kept.values())
    return [p[0] for p in points], [p[1] for p in points]
