"""A worker's child process: the same curve as a run in the worker itself, answers about its
device, and a fresh child after one dies."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
import torch
from backendkit import Messages, submit
from threadpoolctl import threadpool_limits

from trainwire.jobs import Finished, JobSpec
from workers.pool import LocalBackend
from workers.processes import ChildWorker


@pytest.fixture(scope="module")
def child() -> Iterator[ChildWorker]:
    worker = ChildWorker("cpu", 1)
    worker.ready()
    yield worker
    worker.close()


def _run_in(child: ChildWorker, spec: JobSpec) -> tuple[Finished, list[float]]:
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


def _threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_a_child_lets_its_openmp_threads_go_after_a_job_on_several(
    spec: Callable[..., JobSpec],
) -> None:
    """After a job on two threads, the child's OpenMP thread does not stay (libgomp's would spin
    on a core of its own for ms, taking it from the job's end on its way to the watchers, then
    sleep there); the next job on two threads starts its own and gives the same curve."""
    worker = ChildWorker("cpu", 1)
    try:
        worker.ready()
        pid = worker._process.pid
        idle = _threads_of(pid)
        job = replace(spec("tensors", seed=3, steps=400), threads=2)
        during: list[int] = []
        losses: list[list[float]] = [[], []]
        for run in range(2):

            def sink(first_step: int, values: list[float], run: int = run) -> None:
                during.append(_threads_of(pid))
                losses[run].extend(values)

            assert worker.run(job, sink, threading.Event(), None, 0.001).status == "succeeded"
            deadline = time.monotonic() + 10
            while _threads_of(pid) != idle:
                assert time.monotonic() < deadline, f"{_threads_of(pid)} threads, {idle} before"
                time.sleep(0.01)
        assert max(during) > idle  # the jobs did run OpenMP threads of their own
        assert losses[1] == losses[0] and len(losses[0]) == 400
    finally:
        worker.close()


def test_the_pool_is_ready_once_its_worker_processes_are_up(
    spec: Callable[..., JobSpec],
) -> None:
    pool = LocalBackend(cpu_workers=2, jobs_per_gpu=0, cpu_threads=1, gpus=[], processes=True)
    messages = Messages(pool)
    assert not pool.ready
    pool.start()
    try:
        # a fresh interpreter that imports torch and warms every variant up takes seconds
        assert not pool.ready
        submit(pool, "early", spec("numpy", steps=5))  # taken as soon as a worker is up
        assert pool.wait_ready(120)
        assert pool.ready
        assert messages.wait_done("early").status == "succeeded"
    finally:
        messages.close()
        pool.stop()


def test_a_job_names_what_its_worker_process_runs_with(spec: Callable[..., JobSpec]) -> None:
    # environment.threads and device_name come from the child that trains, not from the server
    # (whose own thread count differs, and which must not touch CUDA to name a GPU)
    pool = LocalBackend(cpu_workers=1, jobs_per_gpu=0, cpu_threads=3, gpus=[], processes=True)
    messages = Messages(pool)
    with threadpool_limits(limits=None, user_api="blas"):  # puts this process's BLAS cap back
        pool.start()
    try:
        assert pool.wait_ready(120)
        submit(pool, "job", spec("tensors", steps=5))
        assert messages.wait_done("job").status == "succeeded"
    finally:
        messages.close()
        pool.stop()
    seen = messages.environment["job"]
    assert seen["threads"] == 3
    assert seen["cuda"] is None
    assert isinstance(seen["device_name"], str) and seen["device_name"]
    assert seen["torch"] == torch.__version__ and seen["device"] == "cpu"


def test_a_child_that_is_killed_is_reported_by_its_signal(
    child: ChildWorker, spec: Callable[..., JobSpec]
) -> None:
    losses: list[float] = []
    cancel = threading.Event()

    def sink(first_step: int, values: list[float]) -> None:
        if not losses:
            os.kill(child._process.pid, signal.SIGKILL)
        losses.extend(values)

    finished = child.run(spec("numpy", steps=1_000_000), sink, cancel, None, 0.005)
    assert (finished.status, finished.error_code) == ("failed", "internal")
    assert finished.error_message == "the worker process died (killed by SIGKILL)"
    assert child.run(spec("numpy", steps=3), lambda *_: None, cancel, None, 0.005).status == (
        "succeeded"
    )
