"""A child process that runs jobs for one worker thread of the pool.

Training in the server's own process shares the GIL with the event loop, the store's writer and
every SSE subscriber: the Python between two torch calls waits whenever they run. A child
process has its own interpreter, so a job runs at the speed of a plain script however busy the
service is. The worker thread stays in the server: it takes jobs from the queue as before, hands
each one to its child over a pipe, feeds the losses that come back to the job's sink, and passes
a cancel on. If the child dies, the job fails and a fresh child takes the next one.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from trainwire.jobs import Checkpointed, ErrorCode, Finished, JobSpec, LossBatch, RunOutcome
from workers.fused.child import FusedGroupChild, RunGroup, run_group_in_child
from workers.fused.groups import MAX_FUSED_RUNS
from workers.recorder import LossSink

_CONTEXT = mp.get_context("spawn")  # never fork a process that has torch threads running


# The pipe's messages. To the child: _Run, _AskMemory, or None (exit). From it: _Ready once,
# then LossBatch ... Finished for a _Run, _Memory for an _AskMemory.
@dataclass(frozen=True)
class _Run:
    spec: JobSpec
    timeout_s: float | None
    flush_seconds: float


@dataclass(frozen=True)
class _AskMemory:
    release: bool = False  # empty the child's CUDA cache first (others wait for memory)


@dataclass(frozen=True)
class _Ready:
    pid: int
    facts: dict[str, Any]


@dataclass(frozen=True)
class _Memory:
    free: int | None
    total: int | None


class SharedFlag:
    """A cancel flag in shared memory: set by the server, read by the child before every step.
    Reading it is a plain load (an `mp.Event` takes a lock each time: ~0.5 us a step)."""

    def __init__(self) -> None:
        self._value = _CONTEXT.RawValue("b", 0)

    def set(self) -> None:
        self._value.value = 1

    def clear(self) -> None:
        self._value.value = 0

    def is_set(self) -> bool:
        return bool(self._value.value)


def _child_main(
    conn: Connection, cancel: Any, device: str, threads: int, run_cancels: Any, pause: Any
) -> None:
    import os
    import signal

    import torch
    from threadpoolctl import threadpool_limits

    from workers.runner import run_job
    from workers.threads import ProcessThreads, release_idle_threads

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when jobs stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the server
    except OSError:
        pass
    if device == "cpu":
        torch.set_num_threads(threads)
        threadpool_limits(limits=threads, user_api="blas")
    else:
        torch.cuda.set_device(torch.device(device))
    _warm_up(device)
    threads_now = ProcessThreads()
    threads_now.current = threads if device == "cpu" else None
    conn.send(_Ready(os.getpid(), device_facts(device)))
    while True:
        message = conn.recv()
        if message is None:
            return
        if isinstance(message, _AskMemory):
            if message.release:
                release_cached(device)
            conn.send(_Memory(*_device_memory(device)))
            continue
        if isinstance(message, RunGroup):  # several runs as one (workers.fused)
            run_group_in_child(conn, message, run_cancels)
            continue
        if message.spec.threads is not None:  # the job's own count, set before it runs
            threads_now.use(message.spec.threads)
        job_id = message.spec.job_id

        def sink(first_step: int, values: list[float], job_id: str = job_id) -> None:
            conn.send(LossBatch(job_id, first_step, values))

        conn.send(
            run_job(
                message.spec,
                sink,
                cancel,
                message.timeout_s,
                message.flush_seconds,
                pause=pause,
                on_checkpoint=conn.send,  # after the losses before it, on the same pipe
            )
        )
        if device == "cpu" and (threads_now.current or 1) > 1:
            release_idle_threads()  # after the job's end is on its way: it has every core


def device_facts(device: str) -> dict[str, Any]:
    """What a job's `environment` says of the process that trains it: versions, the device's
    name, the CUDA version and torch's thread count. Asked of a worker's child, so that the
    server's own process never initialises CUDA to name a GPU."""
    import platform

    import numpy as np
    import torch

    from workers.numerics import numerics_facts, pin_numerics

    pin_numerics()  # what the jobs run with
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
        cuda = torch.version.cuda
    else:
        name, cuda = cpu_name(), None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": device,
        "device_name": name,
        "cuda": cuda,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "node": None,
        **numerics_facts(device),
    }


def cpu_name() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def release_cached(device: str) -> None:
    """Hand the blocks this process's caching allocator holds unused on `device` back to the
    driver, so that a job another worker admits by the driver's free memory can have them."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _device_memory(device: str) -> tuple[int, int] | tuple[None, None]:
    """(free, total) bytes of the child's GPU, as its own CUDA context sees them."""
    import torch

    try:
        free, total = torch.cuda.mem_get_info(torch.device(device))
        return int(free), int(total)
    except Exception:  # the parent asks the device itself instead
        return None, None


def _warm_up(device: str) -> None:
    """Run every variant once on a tiny problem: first uses (Adam's above all) import and set up
    lazily, and that cost belongs to the process's start, not to the first user's job."""
    from workers.runner import run_job
    from workers.variants import VARIANTS

    for name, variant in VARIANTS.items():
        if device != "cpu" and "cuda" not in variant.devices:
            continue
        hp = variant.hyperparameters(batch_size=2, d_in=2, hidden=2, d_out=1, steps=2)
        run_job(JobSpec(name, hp, 0, device), lambda first, values: None)


class ChildWorker(FusedGroupChild):
    """One child process, driven by one worker thread."""

    def __init__(self, device: str, threads: int):
        self.device = device
        self.threads = threads
        self._process: Any = None
        self._conn: Connection | None = None
        self._cancel: Any = None
        self._pause: Any = None
        self._run_cancels: Any = None  # a fused group's cancel flags, one byte per run
        self.facts: dict[str, Any] | None = None  # device_facts() of the running child
        self.starts = 0  # child processes started: all but the first replaced one that died

    def start(self) -> None:
        parent, child = _CONTEXT.Pipe()
        self._cancel = SharedFlag()
        self._pause = SharedFlag()
        self._run_cancels = _CONTEXT.RawArray("b", MAX_FUSED_RUNS)
        process = _CONTEXT.Process(
            target=_child_main,
            args=(child, self._cancel, self.device, self.threads, self._run_cancels, self._pause),
            name=f"trainwire-{self.device}",
            daemon=True,
        )
        try:
            process.start()
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self._process, self._conn = process, parent
        self.starts += 1

    @property
    def restarts(self) -> int:
        """Child processes started to replace one that had died."""
        return max(0, self.starts - 1)

    def ready(self) -> None:
        """Start the child and wait until it can take a job."""
        self._ensure()

    def _ensure(self) -> Connection:
        if self._conn is None or not self._process.is_alive():
            self.close()
            self.start()
            assert self._conn is not None
            ready = self._conn.recv()  # wait until torch is imported and set up
            assert isinstance(ready, _Ready), ready
            self.facts = ready.facts
        return self._conn

    def memory(self, release: bool = False) -> tuple[int, int] | None:
        """(free, total) bytes of this worker's GPU, asked of the child: the server's own process
        then needs no CUDA context (hundreds of MB on each device) to check that a job fits."""
        try:
            conn = self._ensure()
            conn.send(_AskMemory(release))
            answer = conn.recv()
        except (EOFError, OSError):  # the child died: the next job starts a fresh one
            self.close()
            return None
        if not isinstance(answer, _Memory) or answer.free is None or answer.total is None:
            return None
        return answer.free, answer.total

    def run(
        self,
        spec: JobSpec,
        sink: LossSink,
        cancel: threading.Event,
        timeout_s: float | None,
        flush_seconds: float,
        pause: threading.Event | None = None,
        on_checkpoint: Callable[[Checkpointed], None] | None = None,
    ) -> Finished:
        """Run one job in the child; the same contract as run_job. A cancel (a pause) reaches
        the child through `stop_current` (`pause_current`), which the pool calls when it sets
        `cancel` (`pause`), so this thread sleeps in the pipe's read until the child has
        something to say."""
        conn = self._ensure()
        self._cancel.clear()
        self._pause.clear()
        if cancel.is_set():  # asked before the run got here
            self._cancel.set()
        if pause is not None and pause.is_set():
            self._pause.set()
        conn.send(_Run(spec, timeout_s, flush_seconds))
        delivered = 0
        try:
            while True:
                message = conn.recv()
                if isinstance(message, LossBatch):
                    delivered = message.end_step
                    sink(message.first_step, message.values)
                elif isinstance(message, Checkpointed):
                    if on_checkpoint is not None:
                        on_checkpoint(message)
                else:
                    assert isinstance(message, Finished), message
                    return message
        except (EOFError, OSError):
            return Finished(
                spec.job_id,
                RunOutcome.failed,
                delivered,
                ErrorCode.internal,
                f"the worker process died ({self._reap()})",
            )

    def pause_current(self) -> None:
        """Ask the child to checkpoint the job it runs and stop (at its next step)."""
        flag = self._pause
        if flag is not None:
            flag.set()

    def stop_current(self) -> None:
        """Ask the child to stop the job it runs (at its next step); any thread may call it."""
        flag = self._cancel
        if flag is not None:
            flag.set()

    def _reap(self) -> str:
        """Wait for a child whose pipe broke, close it, and say how it ended."""
        process = self._process
        if process is not None:
            process.join(timeout=2)  # the exit status is known only once it is reaped
        code = process.exitcode if process is not None else None
        self.close()
        if code is None:
            return "it stopped answering"
        if code < 0:
            try:
                import signal

                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    @property
    def exited(self) -> bool:
        """The child was started and is gone (a stopped one has not exited)."""
        process = self._process
        return process is None or not process.is_alive()

    @property
    def alive(self) -> bool:
        """The child runs and is not stopped (a SIGSTOPped child would hold its job forever)."""
        process = self._process
        if process is None or not process.is_alive():
            return False
        try:
            with open(f"/proc/{process.pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True  # no /proc here: alive is all we can tell
        return state not in ("T", "t", "Z", "X")

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(None)
            self._conn.close()
            self._conn = None
        if self._process is not None:
            self._process.join(timeout=2)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(timeout=2)
            self._process = None
