"""A job's live event stream: the stored history, then the hub's live events, every step once.

The merge: subscribe to the hub first, then read the job, then replay the store from the
subscriber's position; live chunks that the replay already covered are skipped by step, a gap
between the replay and the live window is read from the store. The store's history is read
and encoded in a worker thread, a page at a time (never on the event loop's thread, never a whole
history in memory), and a reader that stops reading holds one page at most: once a write to it
has waited `TRAINWIRE_STREAM_STALL_SECONDS`, its connection is closed (`EventStreamResponse`);
the `retry:` hint of its first event makes a browser come back a second later, resuming by
`Last-Event-ID`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi.sse import KEEPALIVE_COMMENT, EventSourceResponse, format_sse_event
from starlette.types import Send

from app.hub import Channel, EventHub, encode_losses, encode_status
from app.service import find_job
from app.store import JobRow, Store

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 15.0
CATCH_UP_STEPS = 1000  # steps read and encoded per page: ~60 KB of events
CATCH_UP_THREADS = 4
RETRY_MS = 1000  # a dropped browser reconnects after 1 s (with Last-Event-ID), not 3 s


class EventStreamResponse(EventSourceResponse):
    """An event stream that drops a reader which stopped reading.

    uvicorn waits for a client's socket to drain before each write: a reader that reads no more
    would hold its stream (and the generator's page) forever. A write that waits `stall_seconds`
    ends the response instead; the server closes the connection."""

    def __init__(self, content: Any, *, stall_seconds: float, **kw: Any):
        super().__init__(content, **kw)
        self.stall_seconds = stall_seconds

    async def stream_response(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        async for chunk in self.body_iterator:
            body = chunk if isinstance(chunk, bytes | memoryview) else chunk.encode(self.charset)
            try:
                async with asyncio.timeout(self.stall_seconds):
                    await send({"type": "http.response.body", "body": body, "more_body": True})
            except TimeoutError:
                log.info(
                    "an event stream's reader took nothing for %g s: dropped", self.stall_seconds
                )
                return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class EventStreams:
    def __init__(self, store: Store, hub: EventHub, stall_seconds: float = 30.0):
        self.store, self.hub = store, hub
        self.stall_seconds = stall_seconds
        # catch-up pages have threads of their own: hundreds of readers catching up at once
        # then queue here, not in front of every other request's store read
        self._pages = ThreadPoolExecutor(CATCH_UP_THREADS, thread_name_prefix="catch-up")

    def close(self) -> None:
        self._pages.shutdown(wait=False, cancel_futures=True)

    async def events(self, job_id: str, after: int) -> AsyncIterator[bytes]:
        """status, every loss after `after` exactly once, live ones, then the final status."""
        await find_job(self.store, job_id)  # 404 before the stream starts
        return self._stream(job_id, after)

    async def _stream(self, job_id: str, after: int) -> AsyncIterator[bytes]:
        channel = self.hub.subscribe(job_id)  # before reading the store: nothing slips between
        self.hub.open_streams += 1
        try:
            async for data in self._merge(job_id, channel, after):
                yield data
        finally:
            self.hub.open_streams -= 1
            self.hub.unsubscribe(job_id, channel)

    async def _merge(self, job_id: str, channel: Channel, after: int) -> AsyncIterator[bytes]:
        cursor = channel.next_seq
        row = await find_job(self.store, job_id)
        yield format_sse_event(
            data_str=row.to_job().model_dump_json(), event="status", retry=RETRY_MS
        )
        next_step = after + 1
        if next_step < row.step:  # stored steps to send first (the row counts them)
            async for data, end in self._replay(row, next_step, None):
                yield data
                next_step = end
        if row.status.is_final:
            yield encode_status(row.to_job().model_dump_json())
            return
        while True:
            if cursor < channel.first_seq:  # fell out of the window: catch up from the store
                # then go on from the oldest chunk still held: the losses in it are skipped
                # by step, but a status in it (the final one above all) must not be lost
                cursor = channel.first_seq
                async for data, end in self._replay(row, next_step, None):
                    yield data
                    next_step = end
            out: list[bytes] = []  # sent as one write: fewer syscalls per wake-up
            final = False
            for chunk in channel.since(cursor):
                cursor = chunk.seq + 1
                if not chunk.is_losses:
                    out.append(chunk.data)
                    if chunk.final:
                        final = True
                        break
                    continue
                if chunk.end_step <= next_step:
                    continue
                if chunk.first_step > next_step:  # a gap: the store has it
                    if out:
                        yield b"".join(out)
                        out = []
                    async for data, end in self._replay(row, next_step, chunk.first_step):
                        yield data
                        next_step = end
                if chunk.first_step == next_step:
                    out.append(chunk.data)  # the shared bytes, encoded once
                else:
                    skip = next_step - chunk.first_step
                    out.append(encode_losses(next_step, chunk.values[skip:]))
                next_step = chunk.end_step
            if out:
                yield b"".join(out)
            if final:
                return
            if self.hub.closing.is_set():
                yield format_sse_event(comment="server shutting down", retry=RETRY_MS)
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

    async def _replay(
        self, row: JobRow, next_step: int, until: int | None
    ) -> AsyncIterator[tuple[bytes, int]]:
        """Stored losses from next_step (to `until`, exclusive), as (encoded events, the step
        after them), a page at a time."""
        while until is None or next_step < until:
            limit = CATCH_UP_STEPS if until is None else min(CATCH_UP_STEPS, until - next_step)
            data, end, count = await asyncio.get_running_loop().run_in_executor(
                self._pages, self._page, row, next_step, limit
            )
            if not count:
                return
            next_step = end
            yield data, next_step
            if count < limit:
                return

    def _page(self, row: JobRow, next_step: int, limit: int) -> tuple[bytes, int, int]:
        """(events, the step after the last one, how many) of up to `limit` stored steps."""
        steps, values = self.store.read_losses(row.pk, next_step - 1, limit)
        if not steps:
            return b"", next_step, 0
        if steps[0] != next_step or steps[-1] != next_step + len(steps) - 1:
            # the store keeps every job's steps contiguous from 0; say so if it ever did not
            log.error("job %s: stored steps from %d are not contiguous", row.id, next_step)
            data = b"".join(encode_losses(s, [v]) for s, v in zip(steps, values, strict=True))
            return data, steps[-1] + 1, len(steps)
        return encode_losses(steps[0], values), steps[-1] + 1, len(steps)
