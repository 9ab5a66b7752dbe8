"""A sweep's live event stream: every step of every run once, and the sweep as its runs move.

It follows each run as a job's own stream does (app.stream): subscribe to every run's channel
first, then read the sweep, replay each run's stored history, then the live chunks, skipping by
step what the replay covered and reading from the store what fell between. One event wakes it
when any of its runs' channels changes (`Channel.listeners`), so a sweep of 256 runs is one
waiter, not 256.

Events: `sweep` (the sweep object) first; `loss` with `{"job_id", "step", "loss"}` and no `id:`
(a reconnect starts over); `sweep` again when runs change status (changes that come close
together share one event, at most one per `SWEEP_EVENT_SECONDS`); a last `sweep` once every run
is final and all its losses are sent, after which the stream ends. Only the first and the last
`sweep` event may be final.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi.sse import KEEPALIVE_COMMENT, format_sse_event
from starlette.concurrency import run_in_threadpool

from app.errors import SweepNotFound
from app.hub import Channel, EventHub
from app.losses import downsample
from app.pagination import is_job_id
from app.store import JobRow, Store
from app.store.sweeps import SweepRow, SweepStore
from app.stream import CATCH_UP_STEPS, KEEPALIVE_SECONDS, RETRY_MS

SWEEP_EVENT_SECONDS = 0.25  # status changes closer than this share one `sweep` event


def encode_run_losses(
    job_id: str, first_step: int, values: list[float | None] | tuple[float | None, ...]
) -> bytes:
    """`loss` events of one run for consecutive steps (None: a loss that was not finite)."""
    return encode_run_points(job_id, range(first_step, first_step + len(values)), values)


def encode_run_points(
    job_id: str, steps: range | list[int], values: list[float | None] | tuple[float | None, ...]
) -> bytes:
    return b"".join(
        format_sse_event(
            data_str=json.dumps({"job_id": job_id, "step": step, "loss": value}, allow_nan=False),
            event="loss",
        )
        for step, value in zip(steps, values, strict=True)
    )


@dataclass
class _Run:
    """Where the stream stands with one run."""

    row: JobRow
    channel: Channel
    cursor: int  # the channel's next chunk to read
    next_step: int = 0  # the first step not sent yet
    done: bool = False  # its final status was seen: every loss it has is sent


class SweepStreams:
    def __init__(self, store: Store, hub: EventHub, stall_seconds: float = 30.0):
        self.store, self.sweeps, self.hub = store, SweepStore(store), hub
        self.stall_seconds = stall_seconds  # a reader that takes nothing this long is dropped

    async def events(self, sweep_id: str, max_points: int | None) -> AsyncIterator[bytes]:
        """sweep, every run's losses once, sweep on status changes, then the final sweep."""
        found = await self._read(sweep_id)  # 404 before the stream starts
        return self._stream(sweep_id, [row.id for row in found[1]], max_points)

    async def _read(self, sweep_id: str) -> tuple[SweepRow, list[JobRow]]:
        if not is_job_id(sweep_id):
            raise SweepNotFound(sweep_id)
        found = await run_in_threadpool(self.sweeps.get_sweep, sweep_id)
        if found is None:
            raise SweepNotFound(sweep_id)
        return found

    async def _stream(
        self, sweep_id: str, run_ids: list[str], max_points: int | None
    ) -> AsyncIterator[bytes]:
        woken = asyncio.Event()
        # subscribed before the store is read: nothing slips between the read and the live
        channels = {run_id: self.hub.subscribe(run_id) for run_id in run_ids}
        for channel in channels.values():
            channel.listeners.add(woken)
        try:
            async for data in self._merge(sweep_id, channels, woken, max_points):
                yield data
        finally:
            for run_id, channel in channels.items():
                channel.listeners.discard(woken)
                self.hub.unsubscribe(run_id, channel)

    async def _sweep_event(self, sweep_id: str) -> tuple[bytes, bool]:
        """The sweep as it stands, as an event, and whether it is final."""
        found = await run_in_threadpool(self.sweeps.get_sweep, sweep_id)
        if found is None:  # deleted meanwhile: its runs were final, so this is the end
            return format_sse_event(comment="sweep deleted"), True
        sweep = found[0].to_sweep(found[1])
        return format_sse_event(
            data_str=sweep.model_dump_json(), event="sweep"
        ), sweep.status.is_final

    async def _merge(
        self,
        sweep_id: str,
        channels: dict[str, Channel],
        woken: asyncio.Event,
        max_points: int | None,
    ) -> AsyncIterator[bytes]:
        cursors = {run_id: channel.next_seq for run_id, channel in channels.items()}
        found = await run_in_threadpool(self.sweeps.get_sweep, sweep_id)
        if found is None:
            raise SweepNotFound(sweep_id)
        sweep_row, rows = found
        yield format_sse_event(
            data_str=sweep_row.to_sweep(rows).model_dump_json(), event="sweep", retry=RETRY_MS
        )
        runs = [_Run(row, channels[row.id], cursors[row.id]) for row in rows if row.id in channels]
        # history first: every run's stored losses (thinned with max_points), oldest run first
        for run in runs:
            if max_points is not None and run.row.step > 0:
                steps, values = await run_in_threadpool(
                    downsample, self.store.iter_losses(run.row.pk), 0, run.row.step, max_points
                )
                if steps:
                    yield encode_run_points(run.row.id, steps, values)
                run.next_step = run.row.step
            async for data in self._replay(run, None):
                yield data
            run.done = run.row.status.is_final
        last_sweep_event = -1e9
        pending = False  # a status change not yet told
        loop = asyncio.get_running_loop()
        while True:
            woken.clear()  # before reading the channels: a change during the read wakes us again
            out: list[bytes] = []
            for run in runs:
                if run.done:
                    continue
                changed = [False]
                async for data in self._live(run, changed):
                    out.append(data)
                pending = pending or changed[0]
            if out:
                yield b"".join(out)
            if all(run.done for run in runs):
                data, _ = await self._sweep_event(sweep_id)
                yield data
                return
            if self.hub.closing.is_set():
                yield format_sse_event(comment="server shutting down", retry=RETRY_MS)
                return
            now = loop.time()
            if pending and now - last_sweep_event >= SWEEP_EVENT_SECONDS:
                data, final = await self._sweep_event(sweep_id)
                # a final sweep is the stream's last event (a reader stops at it): while the
                # store already says every run ended but this stream has not sent all their
                # losses (their last chunks and ends are still on the way through the hub), it
                # waits for them, and the end above sends it
                if not final:
                    yield data
                pending, last_sweep_event = False, loop.time()
            wait = KEEPALIVE_SECONDS
            if pending:
                wait = max(0.0, last_sweep_event + SWEEP_EVENT_SECONDS - now)
            if woken.is_set():
                continue
            try:
                async with asyncio.timeout(wait):
                    await woken.wait()
            except TimeoutError:
                if not pending:
                    yield KEEPALIVE_COMMENT

    async def _live(self, run: _Run, changed: list[bool]) -> AsyncIterator[bytes]:
        """What the run's channel holds past the stream's cursor, each step once; sets
        changed[0] when a status came, and run.done at its final one."""
        channel = run.channel
        if run.cursor < channel.first_seq:  # fell out of the window: catch up from the store
            run.cursor = channel.first_seq
            async for data in self._replay(run, None):
                yield data
        for chunk in channel.since(run.cursor):
            run.cursor = chunk.seq + 1
            if not chunk.is_losses:
                changed[0] = True
                if chunk.final:
                    run.done = True
                    return
                continue
            if chunk.end_step <= run.next_step:
                continue
            if chunk.first_step > run.next_step:  # a gap: the store has it
                async for data in self._replay(run, chunk.first_step):
                    yield data
            skip = run.next_step - chunk.first_step
            yield encode_run_losses(run.row.id, run.next_step, chunk.values[skip:])
            run.next_step = chunk.end_step

    async def _replay(self, run: _Run, until: int | None) -> AsyncIterator[bytes]:
        """The run's stored losses from its next step (to `until`, exclusive), a page at a
        time, read and encoded in a worker thread."""
        while until is None or run.next_step < until:
            limit = CATCH_UP_STEPS if until is None else min(CATCH_UP_STEPS, until - run.next_step)
            data, count = await run_in_threadpool(self._page, run, limit)
            if not count:
                return
            yield data
            if count < limit:
                return

    def _page(self, run: _Run, limit: int) -> tuple[bytes, int]:
        steps, values = self.store.read_losses(run.row.pk, run.next_step - 1, limit)
        if not steps:
            return b"", 0
        run.next_step = steps[-1] + 1
        return encode_run_points(run.row.id, steps, values), len(steps)
