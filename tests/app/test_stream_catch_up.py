"""The event stream's catch-up paths, with exact timing: a real store (SQLite in tmp_path) and
a real event hub in this process, the job's losses stored and published by hand (persist, then
publish, as the workers do) while the subscriber is not reading.

Over HTTP these states need a reader slower than the kernel's socket buffers can hide, or a
burst of commits larger than the hub's window: rare, but then a stream must still end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from jobclient import chunk_events as parse_events

from app.backends import make_backend
from app.hub import EventHub
from app.service import JobService
from app.settings import Settings
from app.store import Store
from app.stream import EventStreams
from trainwire.models import JobCreate

# far less than the 15 s between keep-alive comments: a stream that waits for one is stuck
PROMPT = 5.0


class Harness:
    """One queued job of a JobService whose workers never start: the test plays the worker."""

    def __init__(self, service: JobService, job_id: str, pk: int):
        self.store, self.hub = service.store, service.hub
        self.streams = EventStreams(self.store, self.hub)
        self.job_id, self.pk = job_id, pk

    def losses(self, first_step: int, values: list[float | None]) -> None:
        self.store.append_losses(self.pk, first_step, values).result()
        self.hub.publish_losses(self.job_id, first_step, values)

    def finish(self) -> None:
        row = self.store.update_job(self.pk, status="succeeded").result()
        assert row is not None
        self.hub.publish_status(self.job_id, row.to_job().model_dump_json(), final=True)

    async def stream(self) -> AsyncIterator[bytes]:
        return await self.streams.events(self.job_id, -1)


def run_with_harness(
    tmp_path: Path, test: Callable[[Harness], Awaitable[None]], max_bytes: int | None = None
) -> None:
    async def main() -> None:
        settings = Settings(database_url=f"sqlite:///{tmp_path / 'jobs.db'}", cpu_workers=1)
        store = Store(settings.database_url)
        try:
            # a backend that is never started: the test plays the worker
            hub = EventHub() if max_bytes is None else EventHub(max_bytes=max_bytes)
            service = JobService(settings, store, hub, make_backend(settings))
            request = JobCreate(variant="numpy", hyperparameters={"steps": 5000})
            job = (await service.submit(request)).made
            row = store.get_job(job.id)
            assert row is not None
            await test(Harness(service, job.id, row.pk))
        finally:
            store.close()

    asyncio.run(main())


async def _drain(stream: AsyncIterator[bytes]) -> list[tuple[str, dict[str, Any]]]:
    """Every event until the stream ends; fails if any next chunk takes PROMPT seconds."""
    events = []
    while True:
        try:
            chunk = await asyncio.wait_for(anext(stream), PROMPT)
        except StopAsyncIteration:
            return events
        events += parse_events(chunk)


def test_a_subscriber_left_behind_by_a_burst_gets_every_step_and_the_end(tmp_path: Path) -> None:
    async def scenario(job: Harness) -> None:
        stream = await job.stream()
        first = parse_events(await asyncio.wait_for(anext(stream), PROMPT))
        assert [(e, d["status"]) for e, d in first] == [("status", "queued")]

        # while the subscriber does not read: more loss chunks than the hub keeps, then the end
        for i in range(600):
            job.losses(5 * i, [5 * i + k + 0.5 for k in range(5)])
        job.finish()

        events = await _drain(stream)
        losses = [d for e, d in events if e == "loss"]
        statuses = [d["status"] for e, d in events if e == "status"]
        assert [d["step"] for d in losses] == list(range(3000))
        assert [d["loss"] for d in losses] == [s + 0.5 for s in range(3000)]
        assert statuses == ["succeeded"] and events[-1][0] == "status"
        assert job.hub.subscriber_count() == 0

    run_with_harness(tmp_path, scenario)


def test_a_subscriber_left_behind_by_big_batches_gets_every_step_and_the_end(
    tmp_path: Path,
) -> None:
    """The hub's window is bounded in bytes too: a few big batches push the first ones out long
    before 512 chunks, and the subscriber reads those from the store."""

    async def scenario(job: Harness) -> None:
        stream = await job.stream()
        await asyncio.wait_for(anext(stream), PROMPT)  # the status
        for i in range(5):  # ~60 KB of events each: the window holds the last one only
            job.losses(1000 * i, [1000 * i + k + 0.25 for k in range(1000)])
        channel = job.hub.subscribe(job.job_id)  # the stream's own channel, held once more
        assert 0 < channel.size <= 100 << 10 and channel.first_seq == 4
        job.hub.unsubscribe(job.job_id, channel)
        job.finish()

        events = await _drain(stream)
        losses = [d for e, d in events if e == "loss"]
        assert [d["step"] for d in losses] == list(range(5000))
        assert [d["loss"] for d in losses] == [s + 0.25 for s in range(5000)]
        assert [d["status"] for e, d in events if e == "status"] == ["succeeded"]

    run_with_harness(tmp_path, scenario, max_bytes=100 << 10)


def test_the_end_arriving_while_a_chunk_is_being_sent_is_sent_at_once(tmp_path: Path) -> None:
    async def scenario(job: Harness) -> None:
        stream = await job.stream()
        await asyncio.wait_for(anext(stream), PROMPT)  # the status
        job.losses(0, [1.5])
        replayed = parse_events(await asyncio.wait_for(anext(stream), PROMPT))
        assert replayed == [("loss", {"step": 0, "loss": 1.5})]  # from the store
        job.losses(1, [2.5])
        live = parse_events(await asyncio.wait_for(anext(stream), PROMPT))
        assert live == [("loss", {"step": 1, "loss": 2.5})]  # from the hub

        # the subscriber is still handing that chunk to its client when the job ends
        job.finish()

        events = await _drain(stream)
        assert [(e, d["status"]) for e, d in events] == [("status", "succeeded")]

    run_with_harness(tmp_path, scenario)
