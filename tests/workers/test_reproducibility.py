"""A run is a pure function of (variant, hyperparameters, seed): bit for bit, whatever else the
process is doing, including other jobs on other threads."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from trainwire.jobs import JobSpec
from workers.runner import run_job
from workers.variants import VARIANTS

SHORT = {"steps": 20}


def losses_of(job: JobSpec) -> list[float]:
    got: list[float] = []
    outcome = run_job(job, lambda first, losses: got.extend(losses))
    assert outcome.status == "succeeded", outcome
    return got


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_same_seed_gives_the_same_losses_bit_for_bit(
    train: Callable[..., Any], variant: str
) -> None:
    first = train(variant, 7, **SHORT).losses
    # whatever the process-wide generators hold, they play no part
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    torch.rand(5)
    second = train(variant, 7, **SHORT).losses
    assert len(first) == 20
    assert first == second


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_different_seeds_give_different_curves(train: Callable[..., Any], variant: str) -> None:
    a, b = train(variant, 0, **SHORT).losses, train(variant, 1, **SHORT).losses
    assert all(p != q for p, q in zip(a, b, strict=True))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_run_leaves_the_global_generators_alone(train: Callable[..., Any], variant: str) -> None:
    torch_state, np_state, py_state = (
        torch.get_rng_state(),
        np.random.get_state(),
        random.getstate(),
    )
    train(variant, 3, steps=5)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state[1])
    assert random.getstate() == py_state


def test_concurrent_jobs_give_the_sequential_losses(spec: Callable[..., JobSpec]) -> None:
    """Four threads, each with its own torch thread count, run mixed variants at once."""
    lanes = [
        [spec("dynamic", 0), spec("numpy", 1), spec("optim", 2)],
        [spec("dynamic", 1), spec("tensors", 0), spec("custom_module", 3)],
        [spec("dynamic", 2), spec("autograd", 2), spec("nn", 1)],
        [spec("dynamic", 3), spec("custom_function", 1), spec("optim", 0)],
    ]
    # sequential, on this thread's single torch thread (see conftest)
    assert torch.get_num_threads() == 1
    sequential = [[losses_of(job) for job in lane] for lane in lanes]

    concurrent: list[list[list[float]]] = [[] for _ in lanes]
    failures: list[BaseException] = []
    start = threading.Barrier(len(lanes))

    def work(i: int) -> None:
        try:
            torch.set_num_threads(1)
            start.wait(timeout=30)
            concurrent[i] = [losses_of(job) for job in lanes[i]]
        except BaseException as exc:  # reported on the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(lanes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
        assert not thread.is_alive()
    assert not failures, failures
    for lane, got, want in zip(lanes, concurrent, sequential, strict=True):
        for job, a, b in zip(lane, got, want, strict=True):
            assert a == b, (job.variant, job.seed)
