"""The backend seam: what runs jobs, seen from the service.

A backend takes `JobSpec`s and gives back a stream of typed `WorkerMessage`s (`Started`, then
`LossBatch`es, then `Finished`; see `trainwire.jobs`). The service has one consumer of that
stream, which stores and publishes what comes back; it never hands a backend a callback. The
host's own pool of worker threads and child processes is the `local` backend
(`workers.pool.LocalBackend`); a cluster's would be another class with the same methods.

Contract:
- `submit` queues a job (FIFO per device); the queue's limit is the service's business.
- `cancel` takes a queued job off the queue ("queued": no message follows) or tells a running
  one to stop before its next step ("running": its `Finished` follows); None if it holds no
  such job (never submitted, or its `Finished` is already on the way).
- `pause` is a cancel that checkpoints the job's state first (`Finished` says `paused`); a
  backend that cannot answers None.
- `stop` interrupts running jobs (their `Finished` says `interrupted`) and leaves the queue.
- Messages of one job arrive in order; `next_message` may block up to `timeout` seconds, or
  until `wake_reader` is called (the consumer is stopping).
"""

from __future__ import annotations

import contextlib
import queue
import time
from abc import ABC, abstractmethod
from typing import Any, Literal

from trainwire.jobs import Finished, JobSpec, Started, WorkerMessage

CancelResult = Literal["queued", "running"] | None


class DeviceUnavailable(Exception):
    """The job asks for a device that no worker of this backend has; the message says why."""


class MessageQueue:
    """The bounded queue between a backend's workers and the service's one consumer. `put`
    blocks while it is full: that is the back-pressure on training. The consumer waits in `get`
    without polling (an idle server wakes for nothing); `wake` ends its wait at once."""

    def __init__(self, maxsize: int):
        self._queue: queue.Queue[WorkerMessage | None] = queue.Queue(maxsize=maxsize)

    def put(self, message: WorkerMessage) -> None:
        self._queue.put(message)

    def get(self, timeout: float) -> WorkerMessage | None:
        """The next message, or None after `timeout` seconds or a `wake`."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def full(self) -> bool:
        return self._queue.full()

    def wake(self) -> None:
        """Make a `get` that waits return None now (a full queue returns at once anyway)."""
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)


class Backend(ABC):
    """One job executor behind the service (see the module's docstring)."""

    name: str

    @abstractmethod
    def start(self) -> None:
        """Start the workers (they report `ready` once they can take a job)."""

    @abstractmethod
    def stop(self, timeout: float) -> list[str]:
        """Stop taking jobs and interrupt the running ones; return the ids interrupted."""

    @abstractmethod
    def submit(self, spec: JobSpec) -> None:
        """Queue a job; `spec.device` is what `resolve_device` answered."""

    @abstractmethod
    def cancel(self, job_id: str) -> CancelResult:
        """Cancel a queued or running job."""

    def pause(self, job_id: str) -> CancelResult:
        """Take a queued job off the queue ("queued": no message follows), or tell a running
        one to checkpoint and stop before its next step ("running": its `Finished`, paused,
        follows); None if it holds no such job or cannot pause it."""
        return None

    messages: MessageQueue  # what the workers say, for the consumer

    def next_message(self, timeout: float) -> WorkerMessage | None:
        """The next message of any job, or None after `timeout` seconds without one (or a
        `wake_reader`)."""
        return self.messages.get(timeout)

    def wake_reader(self) -> None:
        """End a `next_message` that waits now (it returns None)."""
        self.messages.wake()

    @abstractmethod
    def resolve_device(self, asked: str, supported: tuple[str, ...]) -> str:
        """Where a job asking for `asked` (auto, cpu, cuda, cuda:N) of a variant that runs on
        `supported` device kinds will run; raises DeviceUnavailable."""

    @property
    @abstractmethod
    def ready(self) -> bool:
        """Every worker can take a job now."""

    @abstractmethod
    def wait_ready(self, timeout: float) -> bool:
        """Wait until `ready`; False after `timeout` seconds."""

    @abstractmethod
    def queued(self) -> int:
        """Jobs waiting for a worker."""

    @abstractmethod
    def queued_specs(self) -> list[JobSpec]:
        """The jobs waiting for a worker, first to run first."""

    @property
    @abstractmethod
    def devices(self) -> list[str]:
        """Devices that have at least one worker ("cpu", "cuda:0", ...)."""

    @property
    @abstractmethod
    def slots(self) -> int:
        """Jobs that can run at once."""

    def fuses(self, variant: str) -> bool:
        """Whether `submit_group` runs a group of this variant's runs as one computation."""
        return False

    def submit_group(self, specs: list[JobSpec], exact: bool = True) -> None:
        """Queue runs that differ only in learning rate and seed, to run as one batched
        computation where the backend can (each run still gets its own messages); a backend
        that cannot fuse queues them one by one. `exact`: the runs must equal the runs alone
        bit for bit (else they may train on batched kernels: workers.fused.check)."""
        for spec in specs:
            self.submit(spec)

    def worker_states(self) -> list[tuple[str, str]]:
        """(device, state) of each worker, state one of idle, busy, starting; for metrics.
        Empty where the backend does not tell."""
        return []

    def worker_restarts(self) -> dict[str, int]:
        """Per device, the worker processes started to replace one that died; for metrics."""
        return {}

    @property
    def nodes(self) -> list[dict[str, Any]] | None:
        """The hosts that run the jobs and their slots, for a backend of several (a cluster's
        nodes); None for this host alone."""
        return None


def wait_finished(
    backend: Backend, count: int, timeout: float | None = None
) -> tuple[list[Finished], dict[str, Started]]:
    """Read a backend's messages until `count` jobs have finished (for benchmarks and checks
    that keep no store): their `Finished` in order, and each job's `Started`. Raises
    TimeoutError after `timeout` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    finished: list[Finished] = []
    started: dict[str, Started] = {}
    while len(finished) < count:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"{len(finished)} of {count} jobs finished within {timeout} s")
        message = backend.next_message(0.1)
        if isinstance(message, Finished):
            finished.append(message)
        elif isinstance(message, Started):
            started[message.job_id] = message
    return finished, started
