"""Elastic threads: a CPU job gets the cores free when it starts, fixed for its run; the running
jobs' threads never add up to more than the cores."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from backendkit import WAIT, Messages, submit
from servers import wait_for
from threadpoolctl import threadpool_limits

from trainwire.jobs import JobSpec
from workers.pool import LocalBackend
from workers.threads import CoreBudget, recorded_threads

TINY = {"batch_size": 4, "d_in": 8, "hidden": 4, "d_out": 2}
LONG = {**TINY, "steps": 1_000_000}  # runs until cancelled


def test_a_lone_job_gets_every_core() -> None:
    assert CoreBudget(4).grant(None, idle_workers=4, queued=1) == 4


def test_jobs_that_start_together_share_the_free_cores() -> None:
    budget = CoreBudget(8)
    # four idle workers, two jobs queued: the first worker takes one, then the second the other
    first = budget.grant(None, idle_workers=4, queued=2)
    assert first == 4
    budget.take(first)
    assert budget.grant(None, idle_workers=3, queued=1) == 4


def test_a_burst_of_small_jobs_gets_one_core_each() -> None:
    budget = CoreBudget(2)
    first = budget.grant(None, idle_workers=2, queued=500)
    assert first == 1
    budget.take(first)
    assert budget.grant(None, idle_workers=1, queued=499) == 1


def test_a_job_waits_while_every_core_is_taken() -> None:
    budget = CoreBudget(2)
    budget.take(2)
    assert budget.grant(None, idle_workers=1, queued=1) is None
    budget.release(2)
    assert budget.grant(None, idle_workers=2, queued=1) == 2


def test_a_pinned_count_waits_until_it_fits_and_is_never_changed() -> None:
    budget = CoreBudget(4)
    budget.take(3)
    assert budget.grant(2, idle_workers=1, queued=1) is None
    assert budget.grant(1, idle_workers=1, queued=1) == 1
    budget.release(3)
    assert budget.grant(3, idle_workers=2, queued=1) == 3
    # more than the host has (recorded on a larger one): once every core is free
    budget.take(1)
    assert budget.grant(6, idle_workers=1, queued=1) is None
    budget.release(1)
    assert budget.grant(6, idle_workers=2, queued=1) == 6


def test_a_fixed_count_never_waits() -> None:
    budget = CoreBudget(0, fixed=1)
    budget.take(5)
    assert budget.grant(None, idle_workers=1, queued=1) == 1
    assert budget.grant(3, idle_workers=1, queued=1) == 3


@pytest.mark.parametrize(
    ("environment", "threads"),
    [
        (None, None),
        ({}, None),
        ({"threads": 3}, 3),  # pinned at submission
        ({"device": "cpu", "threads": 2, "torch": "2.13.0"}, 2),  # a run on the CPU used 2
        ({"device": "cuda:0", "threads": 16}, None),  # a GPU run says nothing of the CPU's
        ({"threads": 0}, None),
        ({"threads": True}, None),
    ],
)
def test_the_count_a_stored_environment_fixes(
    environment: dict[str, Any] | None, threads: int | None
) -> None:
    assert recorded_threads(environment) == threads


Made = tuple[LocalBackend, Messages]


@pytest.fixture
def elastic_pool() -> Iterator[Callable[..., Made]]:
    """Factory: a started backend of 2 CPU workers sharing `cores` (4 unless told) elastically;
    jobs in the worker threads (torch's thread count is per thread on this build)."""
    made: list[Made] = []

    def make(cores: int = 4, workers: int = 2) -> Made:
        pool = LocalBackend(
            cpu_workers=workers,
            jobs_per_gpu=0,
            cpu_threads=1,
            gpus=[],
            elastic_cores=cores,
        )
        messages = Messages(pool)
        made.append((pool, messages))
        pool.start()
        assert pool.wait_ready(WAIT)
        return pool, messages

    with threadpool_limits(limits=None, user_api="blas"):  # the pool caps this process's BLAS
        yield make
        for pool, messages in made:
            messages.close()
            pool.stop(timeout=WAIT)


def _threads(messages: Messages, job_id: str) -> int:
    wait_for(lambda: job_id in messages.environment, timeout=WAIT)
    return int(messages.environment[job_id]["threads"])


def _wait_steps(messages: Messages, job_id: str, more_than: int) -> int:
    """Wait until the job has handed out more than `more_than` losses; how many it has."""

    def steps() -> int:
        count = len(messages.losses.get(job_id, []))
        return count if count > more_than else 0

    return int(wait_for(steps, timeout=WAIT))


def test_the_pool_gives_a_lone_job_every_core_and_the_next_waits_for_them(
    elastic_pool: Callable[..., Made], spec: Callable[..., JobSpec]
) -> None:
    pool, messages = elastic_pool()
    submit(pool, "alone", spec("tensors", **LONG))
    assert _threads(messages, "alone") == 4
    submit(pool, "next", spec("tensors", steps=5, **TINY))
    # a worker is idle, but every core is taken: "next" waits while "alone" goes on training
    seen = _wait_steps(messages, "alone", 0)
    _wait_steps(messages, "alone", seen + 200)
    assert messages.started == ["alone"] and pool.queued() == 1
    assert sorted(pool.worker_states()) == [("cpu", "busy"), ("cpu", "idle")]

    pool.cancel("alone")
    assert messages.wait_done("alone").status == "cancelled"
    assert messages.wait_done("next").status == "succeeded"
    assert _threads(messages, "next") == 4  # alone again by then


def test_jobs_starting_together_share_the_cores_and_a_pinned_count_is_kept(
    elastic_pool: Callable[..., Made], spec: Callable[..., JobSpec]
) -> None:
    pool, messages = elastic_pool()
    submit(pool, "blocker", spec("tensors", **LONG))
    assert _threads(messages, "blocker") == 4
    submit(pool, "a", spec("tensors", **LONG))
    submit(pool, "b", spec("tensors", **LONG))
    pool.cancel("blocker")  # both workers free at once, two jobs queued: 2 cores each
    assert _threads(messages, "a") == 2
    assert _threads(messages, "b") == 2
    pool.cancel("a")
    pool.cancel("b")
    for job_id in ("a", "b"):
        assert messages.wait_done(job_id).status == "cancelled"

    submit(pool, "pinned", replace(spec("tensors", **LONG), threads=1))
    assert _threads(messages, "pinned") == 1
    submit(pool, "rest", spec("tensors", steps=5, **TINY))
    assert _threads(messages, "rest") == 3  # alone with what the pinned one left
    assert messages.wait_done("rest").status == "succeeded"
    pool.cancel("pinned")
    assert messages.wait_done("pinned").status == "cancelled"
