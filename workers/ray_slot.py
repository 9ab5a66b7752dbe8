"""One worker slot on a node of a Ray cluster: an actor that runs one job at a time.

The service's Ray backend (workers.ray_backend) creates one `SlotWorker` per slot and hands it
jobs one by one. A job's messages (`Started`, `LossBatch`es, `Finished`) come back as the items of
a Ray streaming generator, in order; the training itself runs in a thread of the actor's own (one
for the actor's life, warmed up before the actor says it is ready), so that the generator can hand
out batches while the next steps run. `cancel` and `ping` live in a
concurrency group of their own: they are answered while a job trains.

Ray's own retries stay off (the backend reruns a lost job itself, from step 0): a retried stream
does not yield the same batches again, since batches are cut by time.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import ray

from trainwire.jobs import ErrorCode, Finished, JobSpec, LossBatch, RunOutcome, Started
from trainwire.jobs import WorkerMessage as Message

# unread items a run may hold before its training waits for the service to catch up
BACKPRESSURE_ITEMS = 256


@dataclass
class _Run:
    """One job handed to the training thread; its messages come back on `messages`."""

    spec: JobSpec
    timeout_s: float | None
    flush_seconds: float
    messages: queue.Queue[Message] = field(
        default_factory=lambda: queue.Queue(maxsize=BACKPRESSURE_ITEMS)
    )


# (ray's type stubs lack the actor-only options)
@ray.remote(  # type: ignore[call-overload]
    concurrency_groups={"control": 2}, max_restarts=0, max_task_retries=0
)
class SlotWorker:
    """Runs jobs on one device of its node: the CPU with `threads` torch/BLAS threads, or the
    GPU that Ray assigned to it (`kind` "cuda")."""

    def __init__(self, kind: str, threads: int):
        self.kind = kind
        self.threads = threads
        # Ray sets CUDA_VISIBLE_DEVICES to the GPU it gave this actor: it is cuda:0 in here
        self.device = "cpu" if kind == "cpu" else "cuda:0"
        self.name = "cpu" if kind == "cpu" else f"cuda:{ray.get_gpu_ids()[0]}"  # on its node
        self.facts: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._current: str | None = None  # the job running now
        self._cancel_for: str | None = None  # a cancel that may come before its run
        self._delivered = 0
        # One training thread for the actor's life, warmed up before the actor is ready: torch
        # keeps state per thread (the thread count, first-use set-up), as the local pool's
        # worker processes do in their one thread.
        self._runs: queue.Queue[_Run] = queue.Queue()
        warmed: queue.Queue[BaseException | None] = queue.Queue()
        threading.Thread(target=self._trainer, args=(warmed,), name="trainer", daemon=True).start()
        failure = warmed.get()
        if failure is not None:
            raise failure

    @ray.method(concurrency_group="control")
    def ready(self) -> dict[str, Any]:
        """The facts of this worker (versions, device, node), once it can take a job."""
        return self.facts

    @ray.method(concurrency_group="control")
    def cancel(self, job_id: str) -> bool:
        """Stop `job_id` before its next step (also when its run has not reached us yet)."""
        with self._lock:
            self._cancel_for = job_id
            if self._current == job_id:
                self._cancel.set()
                return True
        return False

    @ray.method(concurrency_group="control")
    def ping(self) -> tuple[str | None, int]:
        """The job running now and the steps it has handed out (the service's watchdog)."""
        with self._lock:
            return self._current, self._delivered

    @ray.method(num_returns="streaming", _generator_backpressure_num_objects=BACKPRESSURE_ITEMS)
    def run(
        self, spec: JobSpec, timeout_s: float | None, flush_seconds: float
    ) -> Iterator[Message]:
        """Run one job: yields `Started`, its `LossBatch`es, then its `Finished`."""
        job_id = spec.job_id
        with self._lock:
            self._current, self._delivered = job_id, 0
            if self._cancel_for == job_id:
                self._cancel.set()
            else:
                self._cancel.clear()
        try:
            yield from self._run(replace(spec, device=self.device), timeout_s, flush_seconds)
        finally:
            with self._lock:
                self._current = None

    def _run(
        self, spec: JobSpec, timeout_s: float | None, flush_seconds: float
    ) -> Iterator[Message]:
        refused = self._wait_for_memory(spec) if self.kind != "cpu" else None
        if refused is not None:
            yield refused
            return
        run = _Run(spec, timeout_s, flush_seconds)
        self._runs.put(run)  # the training thread says Started once it has set the job's threads
        while True:
            message = run.messages.get()
            yield message  # waits while the service has too many of our items unread
            if isinstance(message, Finished):
                return

    def _trainer(self, warmed: queue.Queue[BaseException | None]) -> None:
        """The training thread: set up and warm up, then run the jobs handed to it."""
        import torch
        from threadpoolctl import threadpool_limits

        from workers.processes import _warm_up, device_facts
        from workers.runner import run_job
        from workers.threads import ProcessThreads

        try:
            if self.kind == "cpu":
                threadpool_limits(limits=self.threads, user_api="blas")  # process-wide
                torch.set_num_threads(self.threads)  # holds per thread on this build
            else:
                torch.cuda.set_device(torch.device(self.device))
            _warm_up(self.device)
            self.facts = {
                **device_facts(self.device),
                "device": self.name,
                "node": ray.get_runtime_context().get_node_id(),
                "host": socket.gethostname(),
                "node_ip": ray.util.get_node_ip_address(),
                "pid": os.getpid(),
            }
        except BaseException as exc:
            warmed.put(exc)
            return
        threads_now = ProcessThreads() if self.kind == "cpu" else None
        if threads_now is not None:
            threads_now.current = self.threads
        warmed.put(None)
        while True:
            run = self._runs.get()
            spec = run.spec
            facts = self.facts
            if threads_now is not None:
                # a job's own count (pinned, or recorded by an earlier run) holds over the
                # slot's: its curve depends on it; it may take more cores than the slot reserved
                threads_now.use(spec.threads or self.threads)
                facts = {**facts, "threads": torch.get_num_threads()}
            run.messages.put(Started(spec.job_id, self.name, facts))

            def sink(first_step: int, values: list[float], run: _Run = run) -> None:
                run.messages.put(LossBatch(run.spec.job_id, first_step, values))
                with self._lock:
                    self._delivered = first_step + len(values)

            try:
                finished = run_job(spec, sink, self._cancel, run.timeout_s, run.flush_seconds)
            except BaseException as exc:  # the stream must always get an end
                finished = Finished(
                    spec.job_id,
                    RunOutcome.failed,
                    self._delivered,
                    ErrorCode.internal,
                    f"{type(exc).__name__}: {exc}"[:500],
                )
            run.messages.put(finished)

    def _wait_for_memory(self, spec: JobSpec) -> Finished | None:
        """Wait until this GPU has room for the job; a Finished if it must not run."""
        import torch

        from workers.hyperparameters import estimate_job_bytes

        need = estimate_job_bytes(spec.variant, spec.hyperparameters)
        while not self._cancel.is_set():
            free, total = torch.cuda.mem_get_info(torch.device(self.device))
            if need > total:
                return Finished(
                    spec.job_id,
                    RunOutcome.failed,
                    0,
                    ErrorCode.out_of_memory,
                    f"the job needs about {need:,} bytes; {self.name} of node "
                    f"{self.facts['node']} has {total:,} in all",
                )
            if free >= need:
                return None
            time.sleep(0.1)
        return Finished(spec.job_id, RunOutcome.cancelled, 0)
