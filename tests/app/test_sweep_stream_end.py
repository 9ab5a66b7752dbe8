"""A sweep's stream says the sweep is final only in its last event, after every run's losses.

A reader (the dashboard, the Python client) stops at the first final `sweep` event after the
first one. The store can already hold every run's end while the stream has not yet sent the
last losses of some run (they come through the hub after the commit): a status change seen
then must not be told as a final sweep. A real store (SQLite in tmp_path) and a real hub in this
process; the test plays the workers, persisting then publishing as they do, and holds one run's
publications back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from jobclient import chunk_events

from app.backends import make_backend
from app.hub import EventHub
from app.service import JobService
from app.settings import Settings
from app.store import Store
from app.sweep_stream import SweepStreams
from app.sweeps import SweepService
from trainwire.sweeps import SweepCreate

STEPS = 10
PROMPT = 5.0  # far less than the 15 s keep-alive: a stream that waits for one is stuck
QUIET = 1.0  # how long nothing more may come while one run's end is held back
FINAL = {"succeeded", "failed", "cancelled"}


class Reader:
    """Reads a stream; a read that waits is kept (not cancelled) for the next call."""

    def __init__(self, stream: AsyncIterator[bytes]):
        self.stream = stream
        self.pending: asyncio.Future[bytes] | None = None

    async def next(self, timeout: float) -> bytes | None:
        """The next chunk, or None if none came within `timeout`; StopAsyncIteration at the end."""
        if self.pending is None:
            self.pending = asyncio.ensure_future(anext(self.stream))
        done, _ = await asyncio.wait({self.pending}, timeout=timeout)
        if not done:
            return None
        chunk, self.pending = self.pending.result(), None
        return chunk

    async def quiet(self) -> list[tuple[str, dict[str, object]]]:
        """Every event until nothing more comes for QUIET seconds."""
        got: list[tuple[str, dict[str, object]]] = []
        while (chunk := await self.next(QUIET)) is not None:
            got += chunk_events(chunk, loss_ids=False)
        return got

    async def to_end(self) -> list[tuple[str, dict[str, object]]]:
        """Every event until the stream ends (each within PROMPT seconds)."""
        got: list[tuple[str, dict[str, object]]] = []
        try:
            while True:
                chunk = await self.next(PROMPT)
                assert chunk is not None, f"the stream stopped before its end, after {got}"
                got += chunk_events(chunk, loss_ids=False)
        except StopAsyncIteration:
            return got


def test_a_final_sweep_event_comes_last_after_every_run_s_losses(tmp_path: Path) -> None:
    async def main() -> None:
        settings = Settings(database_url=f"sqlite:///{tmp_path / 'jobs.db'}", cpu_workers=1)
        store = Store(settings.database_url)
        try:
            hub = EventHub()
            # a backend that is never started: the test plays the workers
            jobs = JobService(settings, store, hub, make_backend(settings))
            request = SweepCreate(
                variant="numpy", hyperparameters={"steps": STEPS}, grid={"seed": [0, 1]}
            )
            sweep = (await SweepService(jobs).submit(request)).made
            runs = [store.get_job(run.id) for run in sweep.jobs]
            assert all(runs)
            reader = Reader(await SweepStreams(store, hub).events(sweep.id, None))
            seen = chunk_events(await anext(reader.stream), loss_ids=False)
            assert [e for e, _ in seen] == ["sweep"] and seen[0][1]["status"] not in FINAL

            first, second = runs
            assert first is not None and second is not None
            losses: list[float | None] = [float(s) for s in range(STEPS)]
            # step 0 of both runs, stored and told: the stream is past its history, live
            for row in runs:
                assert row is not None
                store.append_losses(row.pk, 0, losses[:1]).result()
                hub.publish_losses(row.id, 0, losses[:1])
            started = await reader.quiet()
            assert sorted((d["job_id"], d["step"]) for e, d in started if e == "loss") == sorted(
                [(first.id, 0), (second.id, 0)]
            )

            ended = []
            for row in runs:  # both runs store their other losses and their end
                assert row is not None
                store.append_losses(row.pk, 1, losses[1:]).result()
                end = store.update_job(row.pk, status="succeeded").result()
                assert end is not None
                ended.append(end)
            # the first run's publications go through; the second's are still on the way
            hub.publish_losses(first.id, 1, losses[1:])
            hub.publish_status(first.id, ended[0].to_job().model_dump_json(), final=True)
            held_back = await reader.quiet()
            assert not [d for e, d in held_back if e == "sweep" and d["status"] in FINAL]
            assert [(d["job_id"], d["step"]) for e, d in held_back if e == "loss"] == [
                (first.id, step) for step in range(1, STEPS)
            ]

            hub.publish_losses(second.id, 1, losses[1:])
            hub.publish_status(second.id, ended[1].to_job().model_dump_json(), final=True)
            rest = await reader.to_end()  # the stream ends after its final event
            assert [(d["job_id"], d["step"]) for e, d in rest if e == "loss"] == [
                (second.id, step) for step in range(1, STEPS)
            ]
            assert rest[-1][0] == "sweep" and rest[-1][1]["status"] == "succeeded"
            assert not [d for e, d in rest[:-1] if e == "sweep" and d["status"] in FINAL]
        finally:
            store.close()

    asyncio.run(main())
