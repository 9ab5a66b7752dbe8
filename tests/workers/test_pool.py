"""The worker pool: jobs in submission order, a bounded queue, cancel, faults and shutdown."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from threadpoolctl import threadpool_limits

from workers.pool import QueueFull, WorkerPool
from workers.runner import JobSpec, Outcome

TINY = {"batch_size": 4, "d_in": 8, "hidden": 4, "d_out": 2}
WAIT = 30.0  # seconds; every wait in these tests ends


@dataclass
class Calls:
    """What the pool told us, in order, with an event per finished job."""

    started: list[str] = field(default_factory=list)
    finished: dict[str, Outcome] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    losses: dict[str, list[float]] = field(default_factory=dict)
    first_loss: dict[str, threading.Event] = field(default_factory=dict)
    done: dict[str, threading.Event] = field(default_factory=dict)
    hold: dict[str, threading.Event] = field(default_factory=dict)  # job -> released when set
    fail_start: set[str] = field(default_factory=set)
    fail_sink: set[str] = field(default_factory=set)
    fail_finish: set[str] = field(default_factory=set)

    def event(self, table: dict[str, threading.Event], job_id: str) -> threading.Event:
        return table.setdefault(job_id, threading.Event())

    def on_start(self, job_id: str, device: str) -> None:
        assert device == "cpu"
        self.started.append(job_id)
        if job_id in self.fail_start:
            raise RuntimeError(f"the store could not mark {job_id} running")

    def sink_for(self, job_id: str) -> Callable[[int, list[float]], None]:
        got = self.losses.setdefault(job_id, [])

        def sink(first_step: int, losses: list[float]) -> None:
            assert first_step == len(got)
            got.extend(losses)
            self.event(self.first_loss, job_id).set()
            if job_id in self.fail_sink:
                raise OSError(f"no room to store the losses of {job_id}")
            if job_id in self.hold:
                assert self.hold[job_id].wait(WAIT), "never released"

        return sink

    def on_finish(self, job_id: str, outcome: Outcome) -> None:
        self.finished[job_id] = outcome
        self.order.append(job_id)
        self.event(self.done, job_id).set()
        if job_id in self.fail_finish:
            raise RuntimeError(f"the store could not record the end of {job_id}")

    def wait_done(self, job_id: str) -> Outcome:
        assert self.event(self.done, job_id).wait(WAIT), f"{job_id} did not finish"
        return self.finished[job_id]

    def wait_first_loss(self, job_id: str) -> None:
        assert self.event(self.first_loss, job_id).wait(WAIT), f"{job_id} sent no loss"


@pytest.fixture
def make_pool() -> Iterator[Callable[..., tuple[WorkerPool, Calls]]]:
    """Factory: make_pool(max_queued=..., ...) -> a started one-CPU-worker pool and its calls."""
    made: list[tuple[WorkerPool, Calls]] = []

    def make(**kw: Any) -> tuple[WorkerPool, Calls]:
        calls = Calls()
        options: dict[str, Any] = {
            "cpu_workers": 1,
            "jobs_per_gpu": 0,
            "cpu_threads": 1,
            "max_queued": 10,
            "gpus": [],
            **kw,
        }
        pool = WorkerPool(
            on_start=calls.on_start,
            sink_for=calls.sink_for,
            on_finish=calls.on_finish,
            **options,
        )
        made.append((pool, calls))
        pool.start()
        return pool, calls

    # the pool caps numpy's BLAS threads for the whole process: put them back afterwards
    with threadpool_limits(limits=None, user_api="blas"):
        yield make
        for pool, calls in made:
            for release in calls.hold.values():
                release.set()  # a test that failed half-way may have left a job held
            pool.stop(timeout=WAIT)


def held(calls: Calls, job_id: str) -> threading.Event:
    """Make job_id's sink wait, at its first batch, until the returned event is set."""
    release = threading.Event()
    calls.hold[job_id] = release
    return release


def test_jobs_run_in_submission_order_on_one_worker(
    make_pool: Callable[..., tuple[WorkerPool, Calls]], spec: Callable[..., JobSpec]
) -> None:
    pool, calls = make_pool()
    release = held(calls, "first")
    pool.submit("first", spec("numpy", steps=3, **TINY))
    calls.wait_first_loss("first")
    names = ["b", "c", "a", "e", "d"]
    for name in names:
        pool.submit(name, spec("nn", steps=3, **TINY))
    assert pool.queued() == 5
    assert calls.started == ["first"]  # one worker: the others wait
    release.set()
    for name in names:
        assert calls.wait_done(name).status == "succeeded"
    assert calls.started == calls.order == ["first", *names]
    assert all(len(calls.losses[name]) == 3 for name in names)


def test_cancel_takes_a_queued_job_off_the_queue(
    make_pool: Callable[..., tuple[WorkerPool, Calls]], spec: Callable[..., JobSpec]
) -> None:
    pool, calls = make_pool()
    release = held(calls, "running")
    pool.submit("running", spec("tensors", steps=3, **TINY))
    calls.wait_first_loss("running")
    for name in ["a", "b", "c"]:
        pool.submit(name, spec("tensors", steps=3, **TINY))
    assert pool.cancel("b") == "queued"
    assert pool.queued() == 2
    assert pool.cancel("b") is None  # gone
    assert pool.cancel("no-such-job") is None
    release.set()
    calls.wait_done("c")
    assert calls.started == ["running", "a", "c"]
    assert "b" not in calls.finished


def test_cancel_stops_a_running_job(
    make_pool: Callable[..., tuple[WorkerPool, Calls]], spec: Callable[..., JobSpec]
) -> None:
    pool, calls = make_pool()
    pool.submit("long", spec("custom_module", steps=1_000_000, **TINY))
    calls.wait_first_loss("long")
    assert pool.cancel("long") == "running"
    outcome = calls.wait_done("long")
    assert outcome.status == "cancelled"
    assert 0 < outcome.steps_done == len(calls.losses["long"]) < 1_000_000


def test_a_full_queue_says_when_to_retry(
    make_pool: Callable[..., tuple[WorkerPool, Calls]], spec: Callable[..., JobSpec]
) -> None:
    pool, calls = make_pool(max_queued=2)
    release = held(calls, "running")
    pool.submit("running", spec("nn", steps=2, **TINY))
    calls.wait_first_loss("running")
    pool.submit("q1", spec("nn", steps=2, **TINY))
    pool.submit("q2", spec("nn", steps=2, **TINY))
    with pytest.raises(QueueFull) as info:
        pool.submit("q3", spec("nn", steps=2, **TINY))
    assert isinstance(info.value.retry_after, int) and info.value.retry_after >= 1
    assert pool.queued() == 2
    pool.submit("forced", spec("nn", steps=2, **TINY), force=True)  # e.g. recovered at start-up
    assert pool.queued() == 3
    assert pool.cancel("q1") == "queued"
    with pytest.raises(QueueFull):  # still 2 queued besides the forced one
        pool.submit("q3", spec("nn", steps=2, **TINY))
    release.set()
    assert calls.wait_done("forced").status == "succeeded"
    pool.submit("q3", spec("nn", steps=2, **TINY))  # room again
    assert calls.wait_done("q3").status == "succeeded"
    assert calls.order == ["running", "q2", "forced", "q3"]


def test_a_job_that_fails_outside_its_run_does_not_stop_the_worker(
    make_pool: Callable[..., tuple[WorkerPool, Calls]], spec: Callable[..., JobSpec]
) -> None:
    pool, calls = make_pool()
    calls.fail_start.add("bad-start")
    calls.fail_finish.add("bad-finish")
    for name in ["bad-start", "bad-finish", "after"]:
        pool.submit(name, spec("autograd", steps=2, **TINY))
    failed = calls.wait_done("bad-start")
    assert (failed.status, failed.error_code) == ("failed", "internal")
    assert "could not mark bad-start running" in (failed.error_message or "")
    assert calls.wait_done("bad-finish").status == "succeeded"
    assert calls.wait_done("after").status == "succeeded"
    assert calls.order == ["bad-start", "bad-finish", "after"]


def test_a_job_that_fails_inside_its_run_does_not_stop_the_worker(
    make_pool: Callable[..., tuple[WorkerPool, Calls]], spec: Callable[..., JobSpec]
) -> None:
    pool, calls = make_pool()
    calls.fail_sink.add("sink-fails")
    pool.submit("diverges", spec("numpy", learning_rate=1e-2))
    pool.submit("sink-fails", spec("optim", steps=10, **TINY))
    pool.submit("after", spec("numpy", steps=4))
    assert calls.wait_done("diverges").error_code == "diverged"
    failed = calls.wait_done("sink-fails")
    assert (failed.status, failed.error_code) == ("failed", "internal")
    assert failed.error_message == "OSError: no room to store the losses of sink-fails"
    assert calls.wait_done("after").status == "succeeded"
    assert len(calls.losses["after"]) == 4


def test_stop_interrupts_the_running_job_and_leaves_the_queue(
    make_pool: Callable[..., tuple[WorkerPool, Calls]], spec: Callable[..., JobSpec]
) -> None:
    pool, calls = make_pool()
    pool.submit("long", spec("dynamic", steps=1_000_000, **TINY))
    pool.submit("waiting", spec("dynamic", steps=2, **TINY))
    calls.wait_first_loss("long")
    assert pool.stop(timeout=WAIT) == ["long"]
    outcome = calls.wait_done("long")
    assert outcome.status == "interrupted"
    assert 0 < outcome.steps_done == len(calls.losses["long"]) < 1_000_000
    assert calls.started == ["long"]  # "waiting" stays queued for the next start
    assert pool.queued() == 1
    assert not any(thread.is_alive() for thread in pool._threads)
