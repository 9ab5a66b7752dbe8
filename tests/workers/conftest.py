"""Fixtures for the engine's tests: real runs of the variants, collected from a real sink."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from runkit import Collected, Trained, make_spec
from threadpoolctl import threadpool_limits

from trainwire.jobs import JobSpec
from workers.runner import run_job


@pytest.fixture(autouse=True, scope="module")
def one_thread_per_job() -> Iterator[None]:
    """Run jobs on one torch thread and one BLAS thread, as a pool worker with cpu_threads=1 does.

    Results are bit-identical only for the same thread counts, and on a small machine two spinning
    OpenMP threads per job make the 50-step runs many times slower when other processes are busy.
    `torch.set_num_threads` holds for the calling thread; the BLAS limit is process-wide.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def spec() -> Callable[..., JobSpec]:
    """Factory: spec(variant, seed=0, **hyperparameters) -> JobSpec."""
    return make_spec


@pytest.fixture
def train() -> Callable[..., Trained]:
    """Factory: train(variant, seed=0, *, cancel=, timeout_s=, on_batch=, **hp) runs one job."""

    def run(
        variant: str,
        seed: int = 0,
        *,
        cancel: threading.Event | None = None,
        timeout_s: float | None = None,
        flush_seconds: float = 0.005,
        on_batch: Callable[[Collected], None] | None = None,
        **hp: Any,
    ) -> Trained:
        collected = Collected()

        def sink(first_step: int, losses: list[float]) -> None:
            collected(first_step, losses)
            if on_batch is not None:
                on_batch(collected)

        outcome = run_job(make_spec(variant, seed, **hp), sink, cancel, timeout_s, flush_seconds)
        return Trained(outcome, collected.losses, collected.batches)

    return run
