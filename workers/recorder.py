"""Hands a run's losses to a sink in batches, without a host-device sync per step.

On the CPU a loss is a host value already: `float(loss)` costs nothing. The first step's loss is
handed out at once, then a batch every `flush_seconds` (the service's TRAINWIRE_FLUSH_SECONDS,
250 ms) or `flush_steps` steps, and whatever is left at the end: each batch costs the server a
store write and a send to every watcher, and on a host whose cores all train, that CPU is taken
from the job.

On a GPU, `loss.item()` would stall the host until the device has finished the step, so the loop
could never run ahead of the device. Instead each step's loss is copied, on the device, into a
preallocated buffer (an asynchronous kernel). Every `flush_steps` steps or `flush_seconds`, the
pending slice is copied to pinned host memory with `non_blocking=True` and a CUDA event is
recorded behind it; later steps poll the event with `event.query()` (no sync) and hand the slice to
the sink once it has landed. Only the end of the run waits for the device.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import torch

LossSink = Callable[[int, list[float]], None]
"""Receives `(first_step, losses)`: the losses of steps first_step, first_step + 1, ..."""


class Diverged(Exception):
    """The loss became NaN or infinite at `step`."""

    def __init__(self, step: int, loss: float):
        self.step = step
        self.loss = loss
        super().__init__(f"loss became {loss} at step {step}")


class LossRecorder:
    """Collects one loss per step and delivers them, in order, to a sink."""

    def __init__(
        self,
        sink: LossSink,
        steps: int,
        device: torch.device | None = None,
        flush_seconds: float = 0.005,
        flush_steps: int = 4096,
        start: int = 0,
    ):
        """`start`: the first step recorded (a run that goes on from a checkpoint)."""
        self._sink = sink
        self._flush_seconds = flush_seconds
        self._flush_steps = flush_steps
        self._cuda = device is not None and device.type == "cuda"
        self.delivered = start  # steps handed to the sink (counted from step 0)
        self._recorded = start  # steps recorded (on a GPU some may still be on the device)
        self._first = start  # its loss is handed out at once
        self._last_flush = time.perf_counter()
        self._pending: list[float] = []  # CPU: host values not yet delivered
        if self._cuda:
            self._buffer: torch.Tensor | None = None  # (steps,) on the device, made lazily
            self._host: torch.Tensor | None = None  # (steps,) pinned host memory
            self._steps = steps
            self._flushed = start  # steps whose device-to-host copy has been issued
            self._in_flight: deque[tuple[int, int, Any]] = deque()  # (start, end, event)

    def restart(self, start: int) -> None:
        """The run goes on from step `start` (its checkpoint), before any step is recorded."""
        assert self._recorded == self.delivered == self._first, "restart before the first step"
        self.delivered = self._recorded = self._first = start
        if self._cuda:
            self._flushed = start

    def record(self, t: int, loss: Any) -> None:
        """Record step t's loss (a float, numpy scalar or 0-d tensor, on any device)."""
        if self._cuda and isinstance(loss, torch.Tensor) and loss.is_cuda:
            self._record_device(t, loss)
            return
        # a host value: no device involved (`.item()` of a CPU tensor is a plain read)
        value = loss.item() if isinstance(loss, torch.Tensor) else float(loss)
        self._pending.append(value)
        self._recorded = t + 1
        if not math.isfinite(value):
            self.flush()
            raise Diverged(t, value)
        now = time.perf_counter()
        if (
            t == self._first
            or len(self._pending) >= self._flush_steps
            or (now - self._last_flush >= self._flush_seconds)
        ):
            self._last_flush = now
            self.flush()

    def flush(self) -> None:
        """Deliver everything recorded so far (on a GPU this waits for the device)."""
        if self._cuda and self._buffer is not None:
            self._issue_copy()
            while self._in_flight:
                self._in_flight[0][2].synchronize()
                self._deliver_landed()
        if self._pending:
            first = self.delivered
            batch, self._pending = self._pending, []
            self.delivered += len(batch)
            self._sink(first, batch)

    # -- GPU path ---------------------------------------------------------------------------
    def _record_device(self, t: int, loss: torch.Tensor) -> None:
        if self._buffer is None:
            self._buffer = torch.empty(self._steps, dtype=torch.float64, device=loss.device)
            self._host = torch.empty(self._steps, dtype=torch.float64, pin_memory=True)
        self._buffer[t].copy_(loss.detach())  # device-side copy, asynchronous
        self._recorded = t + 1
        now = time.perf_counter()
        if (
            t == self._first
            or self._recorded - self._flushed >= self._flush_steps
            or (now - self._last_flush >= self._flush_seconds)
        ):
            self._last_flush = now
            self._issue_copy()
        self._deliver_landed()

    def _issue_copy(self) -> None:
        start, end = self._flushed, self._recorded
        if end <= start:
            return
        assert self._buffer is not None and self._host is not None
        self._host[start:end].copy_(self._buffer[start:end], non_blocking=True)
        event = torch.cuda.Event()
        event.record()  # on the current stream, behind the copy
        self._in_flight.append((start, end, event))
        self._flushed = end

    def _deliver_landed(self) -> None:
        assert self._host is not None
        while self._in_flight and self._in_flight[0][2].query():  # query() does not block
            start, end, _ = self._in_flight.popleft()
            values = self._host[start:end].tolist()
            for i, value in enumerate(values):
                if not math.isfinite(value):
                    # steps after this one ran speculatively on the device: drop them
                    self._in_flight.clear()
                    self._buffer = None  # nothing more to copy back
                    self.delivered += i + 1
                    self._sink(start, values[: i + 1])
                    raise Diverged(start + i, value)
            self.delivered += len(values)
            self._sink(start, values)
