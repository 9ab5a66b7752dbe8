"""Fans each job's events out to its subscribers, encoded once.

The store's writer publishes here after each commit (persist first, then notify), through the
event loop. A channel is a short log of already-encoded SSE chunks (a batch of `loss` events, or
one `status` event) with sequence numbers. Subscribers each keep a cursor into the log and
wake when it grows; they all send the same bytes objects. Publishing is O(1) whatever the number
of subscribers, so a slow subscriber never slows training or the others: one that falls behind
the log's window (the last 512 chunks, and at most 16 MiB of them) catches up from the store by
step number.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from fastapi.sse import format_sse_event
from pydantic_core import PydanticSerializationError, to_json


@dataclass(frozen=True)
class Chunk:
    """Encoded events: losses of steps [first_step, end_step), or one status event (no steps)."""

    seq: int
    data: bytes
    first_step: int = -1
    end_step: int = -1
    values: tuple[float | None, ...] = ()
    final: bool = False

    @property
    def is_losses(self) -> bool:
        return self.end_step >= 0


def encode_losses(first_step: int, values: list[float | None] | tuple[float | None, ...]) -> bytes:
    """`loss` events for consecutive steps (a loss that is None or not finite: null).

    Each event is `event: loss`, `data: {"step": s, "loss": x}` and `id: s`; x is written as
    the service's other JSON writes a float (pydantic's serializer: the shortest text that parses
    back to the same double, e.g. `0.00001`, `1e+16`). Every step of every watched job passes
    here, on the event loop's thread, and on a machine whose cores all train each microsecond of
    it is taken from a job: the batch's floats are written in one call into Rust (20 us for 450;
    Python's own float repr takes 270 us) and only the framing is Python."""
    if not values:
        return b""
    try:
        numbers = to_json(values, inf_nan_mode="null")
    except PydanticSerializationError:  # not plain floats (a numpy float32, say)
        numbers = to_json([_float(v) for v in values], inf_nan_mode="null")
    return b"".join(
        [
            b'event: loss\ndata: {"step": %d, "loss": %s}\nid: %d\n\n' % (step, number, step)
            for step, number in enumerate(numbers[1:-1].split(b","), first_step)
        ]
    )


def _float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def encode_status(job_json: str) -> bytes:
    return format_sse_event(data_str=job_json, event="status")


MAX_CHUNKS = 512
MAX_BYTES = 16 << 20  # a channel's window: ~300,000 loss events, whatever the batches' size


@dataclass
class Channel:
    chunks: deque[Chunk] = field(default_factory=deque)
    size: int = 0  # bytes of the chunks held
    next_seq: int = 0
    subscribers: int = 0
    final: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    last_wake: float = -1e9
    pending_wake: asyncio.TimerHandle | None = None
    # streams that follow many channels at once (a sweep's) wait on one event of their own
    listeners: set[asyncio.Event] = field(default_factory=set)

    @property
    def first_seq(self) -> int:
        return self.chunks[0].seq if self.chunks else self.next_seq

    def append(
        self, chunk_data: bytes, max_chunks: int, max_bytes: int, urgent: bool, **kw: object
    ) -> None:
        self.chunks.append(Chunk(self.next_seq, chunk_data, **kw))  # type: ignore[arg-type]
        self.next_seq += 1
        self.size += len(chunk_data)
        while len(self.chunks) > max_chunks or (self.size > max_bytes and len(self.chunks) > 1):
            self.size -= len(self.chunks.popleft().data)
        # Each wake-up costs one task switch per subscriber: with many subscribers, loss batches
        # wake them at most every `interval` (5 ms for up to 20, 250 ms for 1,000), and each
        # wake-up sends everything that arrived meanwhile in one write: the server's CPU per
        # second of training stays flat as subscribers grow, and it is the training's to keep.
        loop = asyncio.get_running_loop()
        interval = min(0.25, max(0.005, 0.00025 * self.subscribers))
        now = loop.time()
        if urgent or now - self.last_wake >= interval:
            if not urgent:
                self.last_wake = now
            self.wake()
        elif self.pending_wake is None:
            self.pending_wake = loop.call_at(self.last_wake + interval, self._wake_later)

    def _wake_later(self) -> None:
        self.last_wake = asyncio.get_running_loop().time()
        self.wake()

    def wake(self) -> None:
        """Wake every subscriber waiting, and arm a fresh event for the next change."""
        if self.pending_wake is not None:
            self.pending_wake.cancel()
            self.pending_wake = None
        self.changed.set()
        self.changed = asyncio.Event()
        for listener in self.listeners:
            listener.set()

    def since(self, seq: int) -> list[Chunk]:
        """Chunks from `seq` on that are still held (indexing from the end of a deque is O(1))."""
        new = min(self.next_seq - max(seq, self.first_seq), len(self.chunks))
        return [self.chunks[-k] for k in range(new, 0, -1)]


class EventHub:
    """Channels of live jobs. Call only on the event loop's thread."""

    def __init__(self, max_chunks: int = MAX_CHUNKS, max_bytes: int = MAX_BYTES):
        self._channels: dict[str, Channel] = {}
        self._max_chunks = max_chunks
        self._max_bytes = max_bytes
        self.closing = asyncio.Event()  # set at shutdown: every stream ends
        self.open_streams = 0  # event streams open now, a job's or a sweep's (each counts once)

    def subscribe(self, job_id: str) -> Channel:
        channel = self._channels.setdefault(job_id, Channel())
        channel.subscribers += 1
        return channel

    def unsubscribe(self, job_id: str, channel: Channel) -> None:
        channel.subscribers -= 1
        if channel.subscribers <= 0 and self._channels.get(job_id) is channel:
            del self._channels[job_id]
            if channel.pending_wake is not None:
                channel.pending_wake.cancel()

    def subscriber_count(self) -> int:
        return sum(c.subscribers for c in self._channels.values())

    def publish_losses(self, job_id: str, first_step: int, values: list[float | None]) -> None:
        """Losses as stored: a loss that was not finite is None already."""
        channel = self._channels.get(job_id)
        if channel is None:  # nobody is watching
            return
        clean = tuple(values)
        channel.append(
            encode_losses(first_step, clean),
            self._max_chunks,
            self._max_bytes,
            urgent=False,
            first_step=first_step,
            end_step=first_step + len(values),
            values=clean,
        )

    def publish_status(self, job_id: str, job_json: str, final: bool) -> None:
        channel = self._channels.get(job_id)
        if channel is None:
            return
        channel.final = channel.final or final
        channel.append(
            encode_status(job_json), self._max_chunks, self._max_bytes, urgent=True, final=final
        )

    def close(self) -> None:
        self.closing.set()
        for channel in self._channels.values():
            channel.wake()
