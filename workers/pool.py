"""The local backend: worker threads on this host that run jobs, per device, in submission order.

CPU workers share the cores: each CPU job gets its torch/BLAS thread count when it starts, from
the cores free then (workers.threads: a lone job gets them all), or a fixed count per job, so
that the threads of the CPU jobs running stay within the cores. A worker's child process sets the
job's count before the job runs (without child processes, `torch.set_num_threads` holds per
thread on this build; numpy's BLAS pool is process-wide and is capped once when the pool
starts). GPU workers run `jobs_per_gpu` jobs per visible device, each on its own CUDA stream
(see runner), and wait for free device memory rather than start a job that would not fit.

With `processes`, each worker thread hands its jobs to a child process of its own
(workers.processes), so that training never waits for the service's GIL. Everything a job does
comes back as messages on one bounded queue: when the consumer falls behind (a store that cannot
write), the workers block on it, the children block on their pipes, and training pauses.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from trainwire.jobs import ErrorCode, Finished, JobSpec, LossBatch, RunOutcome, Started
from trainwire.jobs import WorkerMessage as Message
from workers.backend import Backend, CancelResult, DeviceUnavailable, MessageQueue
from workers.fused.group import FusedGroup
from workers.fused.serving import FusedGroupServing
from workers.hyperparameters import estimate_job_bytes
from workers.processes import ChildWorker, device_facts, release_cached
from workers.runner import run_job
from workers.threads import CoreBudget

log = logging.getLogger(__name__)

RESTART_PAUSE = 30.0  # seconds between tries to replace an idle worker's process that failed

# messages held for the consumer before the workers wait: loss batches of up to 100 ms
# (TRAINWIRE_FLUSH_SECONDS), so minutes of training
MAX_PENDING_MESSAGES = 4096


def _driver_memory(device: str) -> tuple[int, int]:
    free, total = torch.cuda.mem_get_info(torch.device(device))
    return int(free), int(total)


def _release_cached(device: str, child: ChildWorker | None) -> None:
    if child is not None:
        child.memory(release=True)
    else:
        release_cached(device)


def visible_gpus() -> list[str]:
    """The CUDA devices this process can use, as "cuda:N"."""
    if not torch.cuda.is_available():
        return []
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())]


@dataclass
class _Queued:
    spec: JobSpec  # spec.device: "cpu", "cuda" (any GPU) or "cuda:N"
    cancel: threading.Event = field(default_factory=threading.Event)
    threads: int | None = None  # granted when a CPU worker takes it; None: the worker's own
    child: ChildWorker | None = None  # the process that runs it, once taken: told of a cancel
    pause: threading.Event = field(default_factory=threading.Event)
    paused_by_user: bool = False  # else a shutdown's pause: the job goes back to the queue

    def stop(self) -> None:
        """Cancel the run (under the pool's lock): the flag, and the child's at once."""
        self.cancel.set()
        if self.child is not None:
            self.child.stop_current()

    def pause_run(self) -> None:
        """Stop the run at its next step with its state checkpointed (under the pool's lock)."""
        self.pause.set()
        if self.child is not None:
            self.child.pause_current()

    @property
    def job_id(self) -> str:
        return self.spec.job_id

    @property
    def job_ids(self) -> list[str]:
        return [self.spec.job_id]

    @property
    def bytes_needed(self) -> int:
        return estimate_job_bytes(self.spec.variant, self.spec.hyperparameters)


class LocalBackend(FusedGroupServing, Backend):
    name = "local"

    def __init__(
        self,
        *,
        cpu_workers: int,
        jobs_per_gpu: int,
        cpu_threads: int,
        timeout_s: float | None = None,
        flush_seconds: float = 0.005,
        gpus: list[str] | None = None,
        processes: bool = False,
        max_pending_messages: int = MAX_PENDING_MESSAGES,
        elastic_cores: int | None = None,
    ):
        """`cpu_threads`: threads of every CPU job; with `elastic_cores`, CPU jobs get threads
        out of that many cores as they start instead (see workers.threads)."""
        self.gpus = visible_gpus() if gpus is None else gpus
        self.processes = processes  # run each worker's jobs in a child process of its own
        self.cpu_workers = cpu_workers
        self.jobs_per_gpu = jobs_per_gpu
        self.cpu_threads = cpu_threads
        self._timeout_s = timeout_s
        self._flush_seconds = flush_seconds
        self.messages = MessageQueue(max_pending_messages)
        # FIFO; a worker takes the first job (or fused group of jobs) for its device
        self._queue: list[_Queued | FusedGroup] = []
        self._running: dict[str, _Queued | FusedGroup] = {}  # by job id
        self._cond = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._children: list[ChildWorker] = []
        self._workers_up = 0  # workers whose child process has started (or tried to)
        self._workers_wanted: int | None = None  # set by start()
        self._cores = CoreBudget(elastic_cores or 0, fixed=None if elastic_cores else cpu_threads)
        self._cpu_running = 0  # CPU jobs taken by a worker and not ended
        self._worker_states: dict[str, tuple[str, str]] = {}  # thread name: (device, state)
        # workers waiting for device memory, per device: idle workers then empty their caches
        self._memory_waiters: dict[str, int] = {}
        # seams for tests without a GPU: (free, total) of a device, and emptying a worker's cache
        self.device_memory: Callable[[str], tuple[int, int]] = _driver_memory
        self.release_cached: Callable[[str, ChildWorker | None], None] = _release_cached

    @property
    def devices(self) -> list[str]:
        cpu = ["cpu"] if self.cpu_workers > 0 else []
        return cpu + (self.gpus if self.jobs_per_gpu > 0 else [])

    @property
    def slots(self) -> int:
        return self.cpu_workers + len(self.gpus) * self.jobs_per_gpu

    def start(self) -> None:
        from threadpoolctl import threadpool_limits

        # numpy's BLAS threads are process-wide: cap them like torch's per-job threads
        threadpool_limits(limits=self.cpu_threads, user_api="blas")
        workers = [("cpu", i) for i in range(self.cpu_workers)]
        workers += [(gpu, i) for gpu in self.gpus for i in range(self.jobs_per_gpu)]
        with self._cond:
            self._workers_wanted = len(workers)
            for device, i in workers:
                self._worker_states[f"worker-{device}-{i}"] = (device, "starting")
        for device, i in workers:
            thread = threading.Thread(
                target=self._work, args=(device,), name=f"worker-{device}-{i}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def has_worker_for(self, device: str) -> bool:
        """Whether some worker takes jobs for `device` ("cpu", "cuda", "cuda:N")."""
        if device == "cpu":
            return self.cpu_workers > 0
        if self.jobs_per_gpu == 0:
            return False
        return bool(self.gpus) if device == "cuda" else device in self.gpus

    def resolve_device(self, asked: str, supported: tuple[str, ...]) -> str:
        gpus = self.gpus if self.jobs_per_gpu > 0 else []
        if asked == "auto" and gpus and "cuda" in supported:
            return "cuda"
        if asked in ("auto", "cpu"):
            if self.cpu_workers == 0:
                # else the job would wait in the queue for a worker that never comes
                why = ""
                if asked == "auto":
                    why = (
                        " and no GPU workers"
                        if "cuda" in supported
                        else "; the variant is CPU-only"
                    )
                raise DeviceUnavailable(f"this server runs no CPU workers{why}")
            return "cpu"
        if "cuda" not in supported:
            raise DeviceUnavailable("this variant runs on the CPU only")
        if not gpus:
            raise DeviceUnavailable(f"this host has no GPU for {asked!r}")
        if asked != "cuda" and asked not in gpus:
            raise DeviceUnavailable(f"this host has no {asked}; it has {', '.join(gpus)}")
        return asked

    @property
    def ready(self) -> bool:
        """Started, and every worker can take a job at once (its child process is up and not
        stopped)."""
        with self._cond:
            if not self._all_up():
                return False
            children = list(self._children)
        return all(child.alive for child in children)

    def wait_ready(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(self._all_up, timeout)

    def _all_up(self) -> bool:
        return self._workers_wanted is not None and self._workers_up >= self._workers_wanted

    def submit(self, spec: JobSpec) -> None:
        with self._cond:
            self._queue.append(_Queued(spec))
            self._cond.notify_all()

    def cancel(self, job_id: str) -> CancelResult:
        with self._cond:
            for i, item in enumerate(self._queue):
                if job_id in item.job_ids:
                    if isinstance(item, FusedGroup) and len(item.specs) > 1:
                        item.drop(job_id)
                    else:
                        del self._queue[i]
                    return "queued"
            running = self._running.get(job_id)
            if isinstance(running, FusedGroup):
                running.run_cancels[job_id].set()
                return "running"
            if running is not None:
                running.stop()
                return "running"
        return None

    def pause(self, job_id: str) -> CancelResult:
        with self._cond:
            for i, item in enumerate(self._queue):
                if isinstance(item, _Queued) and item.job_id == job_id:
                    del self._queue[i]
                    return "queued"
            running = self._running.get(job_id)
            if isinstance(running, _Queued):
                running.paused_by_user = True
                running.pause_run()
                return "running"
        return None  # not here, or a run of a fused group (which does not pause alone)

    def queued(self) -> int:
        with self._cond:
            return sum(len(item.job_ids) for item in self._queue)

    def queued_specs(self) -> list[JobSpec]:
        """The queue, first to run first."""
        with self._cond:
            return [
                spec
                for item in self._queue
                for spec in (item.specs if isinstance(item, FusedGroup) else [item.spec])
            ]

    def worker_states(self) -> list[tuple[str, str]]:
        """(device, state) of every worker: starting (its child process is not up yet), idle
        or busy."""
        with self._cond:
            return list(self._worker_states.values())

    def worker_restarts(self) -> dict[str, int]:
        """Per device, the child processes started to replace one that died."""
        with self._cond:
            children = list(self._children)
        restarts: dict[str, int] = {}
        for child in children:
            restarts[child.device] = restarts.get(child.device, 0) + child.restarts
        return restarts

    def stop(self, timeout: float = 5.0) -> list[str]:
        with self._cond:
            self._stopping = True
            interrupted = list(self._running)
            for item in self._running.values():
                if isinstance(item, _Queued):
                    item.pause_run()  # it checkpoints first: the next start goes on from there
                else:
                    item.cancel.set()
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return interrupted

    # -- worker threads ---------------------------------------------------------------------
    def _emit(self, message: Message) -> None:
        # blocks while the consumer is behind: that is the back-pressure on training
        self.messages.put(message)

    def _take(self, device: str, child: ChildWorker | None) -> _Queued | FusedGroup | None:
        """The first queued job or fused group for `device` (on the CPU, once the cores it gets
        are free); None once stopping. While idle, a child process that died is replaced at once
        (not when the next job comes), so that readiness comes back."""
        next_restart = 0.0
        released = False  # this worker's cache emptied since its last job
        with self._cond:
            while not self._stopping:
                for i, item in enumerate(self._queue):
                    want = item.spec.device
                    if want == device or (want == "cuda" and device.startswith("cuda")):
                        if device == "cpu" and not self._grant_threads(item):
                            break  # it waits for cores, and the jobs behind it with it
                        del self._queue[i]
                        if isinstance(item, _Queued):
                            item.child = child
                        for job_id in item.job_ids:
                            self._running[job_id] = item
                        self._set_state("busy")
                        return item
                if not released and device != "cpu" and self._memory_waiters.get(device):
                    # another worker waits for memory this idle worker's cache may hold
                    released = True
                    self._cond.release()
                    try:
                        self.release_cached(device, child)
                    finally:
                        self._cond.acquire()
                    continue
                self._cond.wait(timeout=1.0 if child is not None else None)
                if child is not None and child.exited and time.monotonic() >= next_restart:
                    self._cond.release()
                    try:
                        log.warning("the worker process for %s is gone; starting another", device)
                        child.ready()
                    except Exception:  # tried again in a while, and by the next job
                        log.exception("restarting the worker process for %s failed", device)
                        next_restart = time.monotonic() + RESTART_PAUSE
                    finally:
                        self._cond.acquire()
            return None

    def _grant_threads(self, item: _Queued | FusedGroup) -> bool:
        """Give a CPU job its threads (under the lock), or False: not enough cores are free."""
        queued = sum(1 for queued in self._queue if queued.spec.device == "cpu")
        # a fused group trains on one thread (workers.fused.batch)
        wanted = 1 if isinstance(item, FusedGroup) else item.spec.threads
        threads = self._cores.grant(wanted, self.cpu_workers - self._cpu_running, queued)
        if threads is None:
            return False
        self._cores.take(threads)
        self._cpu_running += 1
        item.threads = threads
        return True

    def _end(self, item: _Queued | FusedGroup) -> None:
        """The worker is done with the job: its threads are free for the next."""
        with self._cond:
            for job_id in item.job_ids:  # a fused group's runs may have ended one by one
                self._running.pop(job_id, None)
            if item.threads is not None and item.spec.device == "cpu":
                self._cores.release(item.threads)
                self._cpu_running -= 1
            self._set_state("idle")
            self._cond.notify_all()

    def _set_state(self, state: str) -> None:
        """The calling worker's state (under the lock)."""
        name = threading.current_thread().name
        device, _ = self._worker_states.get(name, ("", ""))
        if device:
            self._worker_states[name] = (device, state)

    def _wait_for_memory(
        self, item: _Queued | FusedGroup, device: str, child: ChildWorker | None
    ) -> Finished | None:
        """Wait until the device has room for the job; a Finished if it must not run."""
        need = item.bytes_needed
        pause = item.pause if isinstance(item, _Queued) else None
        waiting = False
        try:
            while not item.cancel.is_set():
                if pause is not None and pause.is_set():  # nothing ran: paused, no checkpoint
                    status = RunOutcome.interrupted if self._stopping else RunOutcome.paused
                    return Finished(item.job_id, status, 0)
                seen = child.memory(release=waiting) if child is not None else None
                if seen is None and waiting:
                    self.release_cached(device, None)
                free, total = seen or self.device_memory(device)
                if need > total:
                    return Finished(
                        item.job_id,
                        RunOutcome.failed,
                        0,
                        ErrorCode.out_of_memory,
                        f"the job needs about {need:,} bytes; {device} has {total:,} in all",
                    )
                if free >= need:
                    return None
                if not waiting:  # ask again at once with this worker's cache emptied, and
                    waiting = True  # have idle workers empty theirs
                    with self._cond:
                        self._memory_waiters[device] = self._memory_waiters.get(device, 0) + 1
                        self._cond.notify_all()
                    continue
                time.sleep(0.1)
        finally:
            if waiting:
                with self._cond:
                    self._memory_waiters[device] -= 1
        return Finished(
            item.job_id, RunOutcome.interrupted if self._stopping else RunOutcome.cancelled, 0
        )

    def _work(self, device: str) -> None:
        if device == "cpu":
            torch.set_num_threads(self.cpu_threads)
        elif not self.processes:  # a child process sets its own device
            torch.cuda.set_device(torch.device(device))
        child = None
        if self.processes:
            child = ChildWorker(device, self.cpu_threads)
            try:
                child.ready()  # import torch in the child now, not when the first job comes
            except Exception:  # the first job tries again, and fails alone if it must
                log.exception("starting the worker process for %s failed", device)
        with self._cond:
            if child is not None:
                self._children.append(child)
            self._workers_up += 1
            self._set_state("idle")
            self._cond.notify_all()
        try:
            self._serve(device, child)
        finally:
            if child is not None:
                child.close()

    def _serve(self, device: str, child: ChildWorker | None) -> None:
        run: Callable[..., Finished] = child.run if child is not None else run_job
        while True:
            item = self._take(device, child)
            if item is None:
                return
            if isinstance(item, FusedGroup):
                self._serve_group(item, device, child)
                self._end(item)
                continue
            spec = replace(item.spec, device=device, threads=item.threads or item.spec.threads)
            job_id = spec.job_id

            def sink(first_step: int, values: list[float], job_id: str = job_id) -> None:
                self._emit(LossBatch(job_id, first_step, values))

            try:
                refused = self._wait_for_memory(item, device, child) if device != "cpu" else None
                if refused is not None:
                    finished = refused
                else:
                    if child is None and spec.threads is not None:
                        torch.set_num_threads(spec.threads)  # per thread on this build
                    facts = child.facts if child is not None and child.facts else None
                    # asked here when there is no child: torch's thread count is per thread
                    environment = dict(facts or device_facts(device))
                    if spec.threads is not None:  # what the child sets before the job runs
                        environment["threads"] = spec.threads
                    self._emit(Started(job_id, device, environment))
                    finished = run(
                        spec,
                        sink,
                        item.cancel,
                        self._timeout_s,
                        self._flush_seconds,
                        pause=item.pause,
                        on_checkpoint=self._emit,
                    )
            except Exception as exc:  # the worker outlives any one job
                log.exception("job %s failed outside its run", job_id)
                finished = Finished(
                    job_id,
                    RunOutcome.failed,
                    0,
                    ErrorCode.internal,
                    f"{type(exc).__name__}: {exc}"[:500],
                )
            with self._cond:
                stopped = finished.status == RunOutcome.cancelled or (
                    finished.status == RunOutcome.paused and not item.paused_by_user
                )
                if self._stopping and stopped:
                    finished = replace(finished, status=RunOutcome.interrupted)
            self._emit(finished)
            self._end(item)

    # -- fused groups (the rest in workers.fused.serving) ----------------------------------
    def _unfuse(self, group: FusedGroup) -> None:
        """Put a group's runs back at the head of the queue as plain jobs (a run cancelled
        meanwhile ends here instead)."""
        cancelled = []
        with self._cond:
            back = []
            for spec in group.specs:
                self._running.pop(spec.job_id, None)
                if group.run_cancels[spec.job_id].is_set() or group.cancel.is_set():
                    cancelled.append(spec.job_id)
                else:
                    back.append(_Queued(spec))
            self._queue[0:0] = back
            self._cond.notify_all()
        for job_id in cancelled:
            status = RunOutcome.interrupted if self._stopping else RunOutcome.cancelled
            self._emit(Finished(job_id, status, 0))
