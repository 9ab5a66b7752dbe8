"""A sweep's live event stream: every step of every run once, and the sweep as its runs move.

It follows each run as a job's own stream does (app.stream): subscribe to every run's channel
first, then read the sweep, replay each run's stored history, then the live chunks, skipping by
step what the replay covered and reading from the store what fell between. One event wakes it
when any of its runs' channels changes (`Channel.listeners`), so a sweep of 256 runs is one
waiter, not 256.

Events: `sweep` (the sweep object) first; `loss` with `{"job_id", "step", "loss"}`; `sweep`
again when runs change status (changes that come close together share one event, at most one per
`SWEEP_EVENT_SECONDS`); a last `sweep` once every run is final and all its losses are sent,
after which the stream ends. Only the first and the last `sweep` event may be final.

Ids: every `sweep` event, the last `loss` event of each batch (a page of history, a live
chunk), and one `loss` event in every ID_SPACING bytes or so carry an `id:` that says
where the stream stands with every run: each run's next step not yet sent, in the runs' order,
as `Cursor` writes it (`1200.1200.800.0`, runs of equal values shortened: `1200x2.800.0`). A
reconnect with `Last-Event-ID` (or `?after=`) goes on from there: every run's steps after its
position, each once.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from fastapi.sse import KEEPALIVE_COMMENT, format_sse_event
from starlette.concurrency import run_in_threadpool

from app.errors import InvalidField, SweepNotFound
from app.hub import Channel, EventHub
from app.losses import downsample
from app.pagination import is_job_id
from app.store import JobRow, Store
from app.store.sweeps import SweepRow, SweepStore
from app.stream import CATCH_UP_STEPS, KEEPALIVE_SECONDS, RETRY_MS

SWEEP_EVENT_SECONDS = 0.25  # status changes closer than this share one `sweep` event


# a loss event carries the stream's position once this many bytes went out since the last one
# did (at least 4 times the id's own length: long ids of many runs spread out), and a batch's
# last one always: a connection that drops goes on from at most this far back
ID_SPACING = 1024
# characters of a Last-Event-ID (256 runs at 7-digit steps take ~2 KB) and of ?after= (short:
# a request's head, URL-encoded, must stay within the HTTP server's 16 KiB)
MAX_CURSOR_LENGTH = 6144
MAX_AFTER_LENGTH = 512


class Cursor:
    """Where a sweep's stream stands: each run's next step not yet sent, in the runs' order,
    written as `N.N.N...` with `NxK` for K equal values in a row."""

    @staticmethod
    def encode(steps: list[int]) -> str:
        parts: list[str] = []
        i = 0
        while i < len(steps):
            j = i
            while j < len(steps) and steps[j] == steps[i]:
                j += 1
            parts.append(f"{steps[i]}x{j - i}" if j - i > 1 else str(steps[i]))
            i = j
        return ".".join(parts)

    @staticmethod
    def decode(text: str, runs: int) -> list[int] | None:
        """The steps, or None for a text that is not a cursor of `runs` runs."""
        if not text or len(text) > MAX_CURSOR_LENGTH or not _CURSOR.fullmatch(text):
            return None
        steps: list[int] = []
        for part in text.split("."):
            value, _, repeat = part.partition("x")
            count = int(repeat) if repeat else 1
            if count < 2 and repeat or len(steps) + count > runs:
                return None
            steps += [int(value)] * count
        return steps if len(steps) == runs else None


_CURSOR = re.compile(r"[0-9]{1,16}(x[0-9]{1,4})?(\.[0-9]{1,16}(x[0-9]{1,4})?)*")


Position = Callable[[int], str]  # a run's next step -> the stream's id with it there


def encode_run_losses(
    job_id: str,
    first_step: int,
    values: list[float | None] | tuple[float | None, ...],
    position: Position | None = None,
) -> bytes:
    """`loss` events of one run for consecutive steps (None: a loss that was not finite);
    one every ID_SPACING bytes and the last with the stream's position as its id."""
    steps = range(first_step, first_step + len(values))
    return encode_run_points(job_id, steps, values, position)


def encode_run_points(
    job_id: str,
    steps: range | list[int],
    values: list[float | None] | tuple[float | None, ...],
    position: Position | None = None,
    last_step: int | None = None,
) -> bytes:
    """As encode_run_losses, for any steps; `last_step`: the run's next step once the last
    event is sent (for thinned history, past its last point)."""
    last = len(values) - 1
    out: list[bytes] = []
    since, spacing = 0, ID_SPACING
    for i, (step, value) in enumerate(zip(steps, values, strict=True)):
        event_id = None
        if position is not None and (i == last or since >= spacing):
            event_id = position(last_step if i == last and last_step is not None else step + 1)
            since, spacing = 0, max(ID_SPACING, 4 * len(event_id))
        data = json.dumps({"job_id": job_id, "step": step, "loss": value}, allow_nan=False)
        out.append(format_sse_event(data_str=data, event="loss", id=event_id))
        since += len(out[-1])
    return b"".join(out)


@dataclass
class _Run:
    """Where the stream stands with one run."""

    row: JobRow
    channel: Channel
    cursor: int  # the channel's next chunk to read
    next_step: int = 0  # the first step not sent yet
    done: bool = False  # its final status was seen: every loss it has is sent
    peers: list[_Run] = field(default_factory=list)  # every run of the stream, this one too

    def position(self, next_step: int) -> str:
        """The stream's id once this run's steps before `next_step` are sent."""
        return Cursor.encode([next_step if run is self else run.next_step for run in self.peers])


def _cursor(runs: list[_Run]) -> str:
    """The stream's position: the id of the event sent last."""
    return Cursor.encode([run.next_step for run in runs])


class SweepStreams:
    def __init__(self, store: Store, hub: EventHub, stall_seconds: float = 30.0):
        self.store, self.sweeps, self.hub = store, SweepStore(store), hub
        self.stall_seconds = stall_seconds  # a reader that takes nothing this long is dropped

    async def events(
        self, sweep_id: str, max_points: int | None, after: list[str] | None = None
    ) -> AsyncIterator[bytes]:
        """sweep, every run's losses once, sweep on status changes, then the final sweep.
        `after`: cursors (Last-Event-ID, ?after=) to go on from: each run from the furthest."""
        found = await self._read(sweep_id)  # 404 before the stream starts
        runs = [row.id for row in found[1]]
        start: list[int] | None = None
        for text, where in zip(after or [], ("header", "query"), strict=False):
            if not text:
                continue
            steps = Cursor.decode(text, len(runs))
            if steps is None:
                loc = ("header", "last-event-id") if where == "header" else ("query", "after")
                raise InvalidField(loc, f"not an id of this sweep's stream ({len(runs)} runs)")
            if start is not None:
                steps = [max(a, b) for a, b in zip(start, steps, strict=True)]
            start = steps
        return self._stream(sweep_id, runs, max_points, start)

    async def _read(self, sweep_id: str) -> tuple[SweepRow, list[JobRow]]:
        if not is_job_id(sweep_id):
            raise SweepNotFound(sweep_id)
        found = await run_in_threadpool(self.sweeps.get_sweep, sweep_id)
        if found is None:
            raise SweepNotFound(sweep_id)
        return found

    async def _stream(
        self, sweep_id: str, run_ids: list[str], max_points: int | None, start: list[int] | None
    ) -> AsyncIterator[bytes]:
        woken = asyncio.Event()
        # subscribed before the store is read: nothing slips between the read and the live
        channels = {run_id: self.hub.subscribe(run_id) for run_id in run_ids}
        for channel in channels.values():
            channel.listeners.add(woken)
        self.hub.open_streams += 1
        try:
            async for data in self._merge(sweep_id, channels, woken, max_points, start):
                yield data
        finally:
            self.hub.open_streams -= 1
            for run_id, channel in channels.items():
                channel.listeners.discard(woken)
                self.hub.unsubscribe(run_id, channel)

    async def _sweep_event(self, sweep_id: str, runs: list[_Run]) -> tuple[bytes, bool]:
        """The sweep as it stands, as an event, and whether it is final."""
        found = await run_in_threadpool(self.sweeps.get_sweep, sweep_id)
        if found is None:  # deleted meanwhile: its runs were final, so this is the end
            return format_sse_event(comment="sweep deleted"), True
        sweep = found[0].to_sweep(found[1])
        return format_sse_event(
            data_str=sweep.model_dump_json(), event="sweep", id=_cursor(runs)
        ), sweep.status.is_final

    async def _merge(
        self,
        sweep_id: str,
        channels: dict[str, Channel],
        woken: asyncio.Event,
        max_points: int | None,
        start: list[int] | None,
    ) -> AsyncIterator[bytes]:
        cursors = {run_id: channel.next_seq for run_id, channel in channels.items()}
        found = await run_in_threadpool(self.sweeps.get_sweep, sweep_id)
        if found is None:
            raise SweepNotFound(sweep_id)
        sweep_row, rows = found
        runs = [_Run(row, channels[row.id], cursors[row.id]) for row in rows if row.id in channels]
        for run in runs:
            run.peers = runs
        if start is not None:
            for run, step in zip(runs, start, strict=True):
                run.next_step = min(step, run.row.step)  # never past what is stored
        yield format_sse_event(
            data_str=sweep_row.to_sweep(rows).model_dump_json(),
            event="sweep",
            retry=RETRY_MS,
            id=_cursor(runs),
        )
        # history first: every run's stored losses (thinned with max_points, unless the
        # stream goes on from a cursor), oldest run first
        for run in runs:
            if start is None and max_points is not None and run.row.step > 0:
                steps, values = await run_in_threadpool(
                    downsample, self.store.iter_losses(run.row.pk), 0, run.row.step, max_points
                )
                if steps:
                    yield encode_run_points(
                        run.row.id, steps, values, run.position, last_step=run.row.step
                    )
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
                data, _ = await self._sweep_event(sweep_id, runs)
                yield data
                return
            if self.hub.closing.is_set():
                yield format_sse_event(comment="server shutting down", retry=RETRY_MS)
                return
            now = loop.time()
            if pending and now - last_sweep_event >= SWEEP_EVENT_SECONDS:
                data, final = await self._sweep_event(sweep_id, runs)
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
            yield encode_run_losses(run.row.id, run.next_step, chunk.values[skip:], run.position)
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
        data = encode_run_points(run.row.id, steps, values, run.position)
        run.next_step = steps[-1] + 1
        return data, len(steps)
