"""The local backend: jobs in submission order, cancel, messages in order, faults, shutdown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from backendkit import WAIT, Messages, submit
from servers import wait_for
from threadpoolctl import threadpool_limits

from trainwire.jobs import ErrorCode, JobSpec, RunOutcome
from workers.pool import LocalBackend

TINY = {"batch_size": 4, "d_in": 8, "hidden": 4, "d_out": 2}

Made = tuple[LocalBackend, Messages]


@pytest.fixture
def make_pool() -> Iterator[Callable[..., Made]]:
    """Factory: make_pool(**options) -> a started one-CPU-worker backend and its messages."""
    made: list[Made] = []

    def make(**kw: Any) -> Made:
        options: dict[str, Any] = {
            "cpu_workers": 1,
            "jobs_per_gpu": 0,
            "cpu_threads": 1,
            "gpus": [],
            "max_pending_messages": 4,  # a held consumer stops the workers soon
            **kw,
        }
        pool = LocalBackend(**options)
        messages = Messages(pool)
        made.append((pool, messages))
        pool.start()
        return pool, messages

    # the pool caps numpy's BLAS threads for the whole process: put them back afterwards
    with threadpool_limits(limits=None, user_api="blas"):
        yield make
        for pool, messages in made:
            messages.close()
            pool.stop(timeout=WAIT)


def test_jobs_run_in_submission_order_on_one_worker(
    make_pool: Callable[..., Made], spec: Callable[..., JobSpec]
) -> None:
    pool, calls = make_pool()
    release = calls.hold("first")
    submit(pool, "first", spec("numpy", steps=3, **TINY))
    calls.wait_first_loss("first")
    names = ["b", "c", "a", "e", "d"]
    for name in names:
        submit(pool, name, spec("nn", steps=3, **TINY))
    assert pool.queued() == 5
    assert calls.started == ["first"]  # one worker: the others wait
    release.set()
    for name in names:
        assert calls.wait_done(name).status == "succeeded"
    assert calls.started == calls.order == ["first", *names]
    assert all(len(calls.losses[name]) == 3 for name in names)


def test_cancel_takes_a_queued_job_off_the_queue(
    make_pool: Callable[..., Made], spec: Callable[..., JobSpec]
) -> None:
    pool, calls = make_pool()
    release = calls.hold("running")
    submit(pool, "running", spec("tensors", steps=3, **TINY))
    calls.wait_first_loss("running")
    for name in ["a", "b", "c"]:
        submit(pool, name, spec("tensors", steps=3, **TINY))
    assert pool.cancel("b") == "queued"
    assert pool.queued() == 2
    assert pool.cancel("b") is None  # gone
    assert pool.cancel("no-such-job") is None
    release.set()
    calls.wait_done("c")
    assert calls.started == ["running", "a", "c"]
    assert "b" not in calls.finished


def test_cancel_stops_a_running_job(
    make_pool: Callable[..., Made], spec: Callable[..., JobSpec]
) -> None:
    pool, calls = make_pool()
    submit(pool, "long", spec("custom_module", steps=1_000_000, **TINY))
    calls.wait_first_loss("long")
    assert pool.cancel("long") == "running"
    outcome = calls.wait_done("long")
    assert outcome.status == "cancelled"
    assert 0 < outcome.steps_done == len(calls.losses["long"]) < 1_000_000


def test_each_job_says_started_then_its_losses_in_order_then_finished(
    make_pool: Callable[..., Made], spec: Callable[..., JobSpec]
) -> None:
    pool, calls = make_pool(cpu_workers=2)
    names = [f"job{i}" for i in range(6)]
    for i, name in enumerate(names):
        submit(pool, name, spec(["numpy", "optim", "dynamic"][i % 3], steps=40, **TINY))
    for name in names:
        finished = calls.wait_done(name)
        assert finished.status == RunOutcome.succeeded and finished.job_id == name
        assert finished.steps_done == len(calls.losses[name]) == 40  # from step 0, no gap
    assert sorted(calls.started) == sorted(names)
    assert all(env["device"] == "cpu" and env["threads"] == 1 for env in calls.environment.values())


def test_a_job_that_fails_does_not_stop_the_worker(
    make_pool: Callable[..., Made], spec: Callable[..., JobSpec]
) -> None:
    pool, calls = make_pool()
    submit(pool, "diverges", spec("numpy", learning_rate=1e-2))
    submit(pool, "too-big", spec("tensors", steps=2, batch_size=1 << 30, d_in=1 << 20))
    submit(pool, "after", spec("numpy", steps=4))
    assert calls.wait_done("diverges").error_code == ErrorCode.diverged
    failed = calls.wait_done("too-big")
    assert (failed.status, failed.error_code) == ("failed", "out_of_memory")
    assert calls.wait_done("after").status == "succeeded"
    assert len(calls.losses["after"]) == 4
    assert calls.order == ["diverges", "too-big", "after"]


def test_stop_interrupts_the_running_job_and_leaves_the_queue(
    make_pool: Callable[..., Made], spec: Callable[..., JobSpec]
) -> None:
    pool, calls = make_pool()
    submit(pool, "long", spec("dynamic", steps=1_000_000, **TINY))
    submit(pool, "waiting", spec("dynamic", steps=2, **TINY))
    calls.wait_first_loss("long")
    assert pool.stop(timeout=WAIT) == ["long"]
    outcome = calls.wait_done("long")
    assert outcome.status == "interrupted"
    assert 0 < outcome.steps_done == len(calls.losses["long"]) < 1_000_000
    assert calls.started == ["long"]  # "waiting" stays queued for the next start
    assert pool.queued() == 1
    assert not any(thread.is_alive() for thread in pool._threads)


def test_the_workers_wait_for_a_consumer_that_falls_behind(
    make_pool: Callable[..., Made], spec: Callable[..., JobSpec]
) -> None:
    pool, calls = make_pool()
    release = calls.hold("long")
    submit(pool, "long", spec("tensors", steps=100_000, **TINY))
    calls.wait_first_loss("long")
    # the consumer reads nothing more: four messages fill the queue, then the run waits
    held_at = len(calls.losses["long"])
    wait_for(pool.messages.full, WAIT)
    submit(pool, "next", spec("numpy", steps=3))
    assert pool.queued() == 1 and pool.cancel("long") == "running"
    release.set()
    outcome = calls.wait_done("long")
    assert outcome.status == "cancelled"
    assert held_at < outcome.steps_done == len(calls.losses["long"]) < 100_000
    assert calls.wait_done("next").status == "succeeded"
