"""A worker's child process: the same curve as a run in the worker itself, answers about its
device, and a fresh child after one dies."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from threadpoolctl import threadpool_limits

from workers.pool import WorkerPool
from workers.processes import ChildWorker
from workers.runner import JobSpec, Outcome


@pytest.fixture(scope="module")
def child() -> Iterator[ChildWorker]:
    worker = ChildWorker("cpu", 1)
    worker.ready()
    yield worker
    worker.close()


def _run_in(child: ChildWorker, spec: JobSpec) -> tuple[Outcome, list[float]]:
    losses: list[float] = []

    def sink(first_step: int, values: list[float]) -> None:
        assert first_step == len(losses)
        losses.extend(values)

    return child.run(spec, sink, threading.Event(), None, 0.005), losses


@pytest.mark.parametrize("variant", ["numpy", "optim", "dynamic"])
def test_a_job_in_the_child_gives_the_curve_of_a_job_in_the_worker(
    child: ChildWorker,
    spec: Callable[..., JobSpec],
    train: Callable[..., Any],
    variant: str,
) -> None:
    outcome, losses = _run_in(child, spec(variant, seed=5, steps=120))
    here = train(variant, seed=5, steps=120)
    assert outcome.status == here.outcome.status == "succeeded"
    assert losses == here.losses  # bit for bit: same seed, one thread each


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU host's answer")
def test_a_child_without_a_gpu_says_it_cannot_tell_and_keeps_working(
    child: ChildWorker, spec: Callable[..., JobSpec]
) -> None:
    assert child.memory() is None
    assert _run_in(child, spec("tensors", steps=10))[0].status == "succeeded"


def test_after_the_child_dies_the_next_call_starts_a_fresh_one(
    spec: Callable[..., JobSpec],
) -> None:
    worker = ChildWorker("cpu", 1)
    try:
        worker.ready()
        first = worker._process.pid
        os.kill(first, signal.SIGKILL)
        worker._process.join(10)
        worker.memory()  # a dead child is replaced before it is asked, without an exception
        outcome, losses = _run_in(worker, spec("numpy", steps=20))
        assert outcome.status == "succeeded" and len(losses) == 20
        assert worker._process.pid != first
    finally:
        worker.close()


def test_the_pool_is_ready_once_its_worker_processes_are_up(
    spec: Callable[..., JobSpec],
) -> None:
    finished: list[Outcome] = []
    done = threading.Semaphore(0)
    pool = WorkerPool(
        cpu_workers=2,
        jobs_per_gpu=0,
        cpu_threads=1,
        max_queued=10,
        on_start=lambda job_id, device: None,
        sink_for=lambda _: lambda *_: None,
        on_finish=lambda job_id, outcome: (finished.append(outcome), done.release()),
        gpus=[],
        processes=True,
    )
    assert not pool.ready
    pool.start()
    try:
        # a fresh interpreter that imports torch and warms every variant up takes seconds
        assert not pool.ready
        pool.submit("early", spec("numpy", steps=5))  # taken as soon as a worker is up
        assert pool.wait_ready(120)
        assert pool.ready
        assert done.acquire(timeout=60)
        assert [o.status for o in finished] == ["succeeded"]
    finally:
        pool.stop()


def test_a_job_names_what_its_worker_process_runs_with(spec: Callable[..., JobSpec]) -> None:
    # environment.threads and device_name come from the child that trains, not from the server
    # (whose own thread count differs, and which must not touch CUDA to name a GPU)
    seen: dict[str, Any] = {}
    done = threading.Semaphore(0)
    pool: WorkerPool | None = None

    def on_start(job_id: str, device: str) -> None:
        assert pool is not None
        seen.update(pool.facts(device))

    pool = WorkerPool(
        cpu_workers=1,
        jobs_per_gpu=0,
        cpu_threads=3,
        max_queued=10,
        on_start=on_start,
        sink_for=lambda _: lambda *_: None,
        on_finish=lambda job_id, outcome: done.release(),
        gpus=[],
        processes=True,
    )
    with threadpool_limits(limits=None, user_api="blas"):  # puts this process's BLAS cap back
        pool.start()
    try:
        assert pool.wait_ready(120)
        pool.submit("job", spec("tensors", steps=5))
        assert done.acquire(timeout=60)
    finally:
        pool.stop()
    assert seen["threads"] == 3
    assert seen["cuda"] is None
    assert isinstance(seen["device_name"], str) and seen["device_name"]
