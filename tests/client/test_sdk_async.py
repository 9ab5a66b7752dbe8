"""trainwire.AsyncClient against a real server: the same methods as Client, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import aclosing

import pytest
from servers import Server

from trainwire import APIError, AsyncClient, Loss, Status
from trainwire.models import JobStatus

TINY = {"batch_size": 8, "d_in": 20, "hidden": 10, "d_out": 2}


def test_submit_stream_wait_losses_and_errors(shared_server: Server) -> None:
    async def scenario() -> None:
        async with AsyncClient(shared_server.url) as tw:
            job = await tw.submit("autograd", seed=11, label="async", steps=40)
            assert (job.variant, job.seed, job.label) == ("autograd", 11, "async")
            assert (await tw.get(job.id)).id == job.id

            events = [event async for event in tw.stream(job.id)]
            assert isinstance(events[-1], Status)
            final = events[-1].job
            assert final.status is JobStatus.succeeded and final.step == 40
            streamed = [(e.step, e.loss) for e in events if isinstance(e, Loss)]
            assert [s for s, _ in streamed] == list(range(40))
            assert await tw.wait(job.id) == final

            steps, losses = await tw.losses(job.id, page_size=9)
            assert list(zip(steps, losses, strict=True)) == streamed
            assert await tw.losses(job.id) == (steps, losses)

            with pytest.raises(APIError) as missing:
                await tw.get("0123456789abcdef")
            assert missing.value.status_code == 404 and "0123456789abcdef" in missing.value.detail
            with pytest.raises(APIError) as invalid:
                await tw.submit("numpy", dtype="float16")
            assert invalid.value.status_code == 422 and "dtype" in str(invalid.value)
            with pytest.raises(APIError) as not_final:
                running = await tw.submit("tensors", **{**TINY, "steps": 1_000_000})
                await tw.delete(running.id)
            assert not_final.value.status_code == 409

            # a stream left part way closes; the job is cancelled, then deleted
            async with aclosing(tw.stream(running.id)) as stream:
                async for event in stream:
                    if isinstance(event, Loss) and event.step >= 10:
                        break
            await tw.cancel(running.id)
            assert (await tw.wait(running.id)).status is JobStatus.cancelled
            await tw.delete(running.id)
            with pytest.raises(APIError) as gone:
                await tw.get(running.id)
            assert gone.value.status_code == 404

    asyncio.run(scenario())


def test_jobs_pages_and_filters(make_server: Callable[..., Server]) -> None:
    server = make_server(TRAINWIRE_CPU_WORKERS="1")

    async def scenario() -> None:
        async with AsyncClient(server.url) as tw:
            made = [await tw.submit("numpy", seed=i, steps=2) for i in range(5)]
            for job in made:
                await tw.wait(job.id)
            newest_first = [j.id for j in reversed(made)]
            assert [j.id async for j in tw.jobs(page_size=2)] == newest_first
            assert [j.id async for j in tw.jobs(limit=4, page_size=3)] == newest_first[:4]
            assert [j.id async for j in tw.jobs(status="succeeded")] == newest_first
            assert [j.id async for j in tw.jobs(status="running")] == []
            assert [j.id async for j in tw.jobs(variant=["tensors", "nn"])] == []

    asyncio.run(scenario())
