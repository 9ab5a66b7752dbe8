"""Worker threads that run jobs, per device, in submission order.

CPU workers share the cores: each sets its own torch thread count (on this build
`torch.set_num_threads` holds per thread) so that (CPU jobs at once) x (threads each) stays within
the cores. numpy's BLAS pool is process-wide and is capped once when the pool starts. GPU workers
run `jobs_per_gpu` jobs per visible device, each on its own CUDA stream (see runner), and wait for
free device memory rather than start a job that would not fit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from workers.hyperparameters import estimate_job_bytes
from workers.processes import ChildWorker, device_facts
from workers.recorder import LossSink
from workers.runner import JobSpec, Outcome, run_job

log = logging.getLogger(__name__)


def visible_gpus() -> list[str]:
    """The CUDA devices this process can use, as "cuda:N"."""
    if not torch.cuda.is_available():
        return []
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())]


class QueueFull(Exception):
    """No room in the queue; try again after `retry_after` seconds."""

    def __init__(self, retry_after: int):
        self.retry_after = retry_after
        super().__init__(f"the queue is full; retry after {retry_after} s")


@dataclass
class _Queued:
    job_id: str
    spec: JobSpec  # spec.device: "cpu", "cuda" (any GPU) or "cuda:N"
    cancel: threading.Event = field(default_factory=threading.Event)


class WorkerPool:
    def __init__(
        self,
        *,
        cpu_workers: int,
        jobs_per_gpu: int,
        cpu_threads: int,
        max_queued: int,
        on_start: Callable[[str, str], None],
        sink_for: Callable[[str], LossSink],
        on_finish: Callable[[str, Outcome], None],
        timeout_s: float | None = None,
        flush_seconds: float = 0.005,
        gpus: list[str] | None = None,
        processes: bool = False,
    ):
        self.gpus = visible_gpus() if gpus is None else gpus
        self.processes = processes  # run each worker's jobs in a child process of its own
        self.cpu_workers = cpu_workers
        self.jobs_per_gpu = jobs_per_gpu
        self.cpu_threads = cpu_threads
        self.max_queued = max_queued
        self._on_start = on_start
        self._sink_for = sink_for
        self._on_finish = on_finish
        self._timeout_s = timeout_s
        self._flush_seconds = flush_seconds
        self._queue: list[_Queued] = []  # FIFO; a worker takes the first job for its device
        self._running: dict[str, _Queued] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._workers_up = 0  # workers whose child process has started (or tried to)
        self._workers_wanted: int | None = None  # set by start()
        self._job_seconds = 1.0  # running mean of a job's duration, for Retry-After
        self._facts: dict[str, dict[str, Any]] = {}  # device -> what its worker process reported

    @property
    def devices(self) -> list[str]:
        """Devices that have at least one worker."""
        cpu = ["cpu"] if self.cpu_workers > 0 else []
        return cpu + (self.gpus if self.jobs_per_gpu > 0 else [])

    def start(self) -> None:
        from threadpoolctl import threadpool_limits

        # numpy's BLAS threads are process-wide: cap them like torch's per-job threads
        threadpool_limits(limits=self.cpu_threads, user_api="blas")
        workers = [("cpu", i) for i in range(self.cpu_workers)]
        workers += [(gpu, i) for gpu in self.gpus for i in range(self.jobs_per_gpu)]
        with self._cond:
            self._workers_wanted = len(workers)
        for device, i in workers:
            thread = threading.Thread(
                target=self._work, args=(device,), name=f"worker-{device}-{i}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def has_worker_for(self, device: str) -> bool:
        """Whether some worker of this pool takes jobs for `device` ("cpu", "cuda", "cuda:N")."""
        if device == "cpu":
            return self.cpu_workers > 0
        if self.jobs_per_gpu == 0:
            return False
        return bool(self.gpus) if device == "cuda" else device in self.gpus

    @property
    def ready(self) -> bool:
        """Started, and every worker can take a job at once (its child process is up)."""
        with self._cond:
            return self._all_up()

    def wait_ready(self, timeout: float) -> bool:
        """Wait until `ready`; False if it took longer than `timeout` seconds."""
        with self._cond:
            return self._cond.wait_for(self._all_up, timeout)

    def _all_up(self) -> bool:
        return self._workers_wanted is not None and self._workers_up >= self._workers_wanted

    def facts(self, device: str) -> dict[str, Any]:
        """The device's name, CUDA version and torch threads, as the process training on it sees
        them: reported by the worker's child process, or looked up here (call it from the
        worker's own thread: torch's thread count is per thread on this build)."""
        with self._cond:
            reported = self._facts.get(device)
        return dict(reported) if reported is not None else device_facts(device)

    def check_room(self) -> None:
        """Raise QueueFull (with a Retry-After estimate) when the queue is at its limit."""
        with self._cond:
            if len(self._queue) >= self.max_queued:
                busy = max(1, len(self._threads))
                raise QueueFull(max(1, round(len(self._queue) * self._job_seconds / busy)))

    def submit(self, job_id: str, spec: JobSpec, force: bool = False) -> None:
        """Queue a job; raises QueueFull when the queue is at its limit (unless force)."""
        with self._cond:
            if not force:
                self.check_room()  # the condition's lock is reentrant
            self._queue.append(_Queued(job_id, spec))
            self._cond.notify_all()

    def cancel(self, job_id: str) -> str | None:
        """Stop a job: "queued" if it was taken off the queue, "running" if told to stop."""
        with self._cond:
            for i, item in enumerate(self._queue):
                if item.job_id == job_id:
                    del self._queue[i]
                    return "queued"
            running = self._running.get(job_id)
            if running is not None:
                running.cancel.set()
                return "running"
        return None

    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def stop(self, timeout: float = 5.0) -> list[str]:
        """Stop taking jobs, stop running ones at their next step; return the ones interrupted."""
        with self._cond:
            self._stopping = True
            interrupted = list(self._running)
            for item in self._running.values():
                item.cancel.set()
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return interrupted

    # -- worker threads ---------------------------------------------------------------------
    def _take(self, device: str) -> _Queued | None:
        with self._cond:
            while not self._stopping:
                for i, item in enumerate(self._queue):
                    want = item.spec.device
                    if want == device or (want == "cuda" and device.startswith("cuda")):
                        del self._queue[i]
                        self._running[item.job_id] = item
                        return item
                self._cond.wait()
            return None

    def _wait_for_memory(
        self, item: _Queued, device: str, child: ChildWorker | None
    ) -> Outcome | None:
        """Wait until the device has room for the job; an Outcome if it must not run."""
        need = estimate_job_bytes(item.spec.variant, item.spec.hyperparameters)
        while not item.cancel.is_set():
            seen = child.memory() if child is not None else None
            free, total = seen or torch.cuda.mem_get_info(torch.device(device))
            if need > total:
                return Outcome(
                    "failed",
                    0,
                    "out_of_memory",
                    f"the job needs about {need:,} bytes; {device} has {total:,} in all",
                )
            if free >= need:
                return None
            time.sleep(0.1)
        return Outcome("interrupted" if self._stopping else "cancelled", 0)

    def _work(self, device: str) -> None:
        if device == "cpu":
            torch.set_num_threads(self.cpu_threads)
        elif not self.processes:  # a child process sets its own device
            torch.cuda.set_device(torch.device(device))
        run: Callable[..., Outcome] = run_job
        child = None
        if self.processes:
            child = ChildWorker(device, self.cpu_threads)
            run = child.run
            try:
                child.ready()  # import torch in the child now, not when the first job comes
            except Exception:  # the first job tries again, and fails alone if it must
                log.exception("starting the worker process for %s failed", device)
            if child.facts is not None:
                with self._cond:
                    self._facts[device] = child.facts
        with self._cond:
            self._workers_up += 1
            self._cond.notify_all()
        try:
            self._serve(device, run, child)
        finally:
            if child is not None:
                child.close()

    def _serve(self, device: str, run: Callable[..., Outcome], child: ChildWorker | None) -> None:
        while True:
            item = self._take(device)
            if item is None:
                return
            began = time.monotonic()
            spec = replace(item.spec, device=device)
            try:
                refused = self._wait_for_memory(item, device, child) if device != "cpu" else None
                if refused is not None:
                    outcome = refused
                else:
                    self._on_start(item.job_id, device)
                    outcome = run(
                        spec,
                        self._sink_for(item.job_id),
                        item.cancel,
                        self._timeout_s,
                        self._flush_seconds,
                    )
            except Exception as exc:  # the worker outlives any one job
                log.exception("job %s failed outside its run", item.job_id)
                outcome = Outcome("failed", 0, "internal", f"{type(exc).__name__}: {exc}"[:500])
            with self._cond:
                if self._stopping and outcome.status == "cancelled":
                    outcome = replace(outcome, status="interrupted")
                self._job_seconds = 0.8 * self._job_seconds + 0.2 * (time.monotonic() - began)
            try:
                # the job counts as running until its end is recorded, so that a cancel arriving
                # meanwhile cannot overwrite a success
                self._on_finish(item.job_id, outcome)
            except Exception:
                log.exception("recording the end of job %s failed", item.job_id)
            with self._cond:
                del self._running[item.job_id]
