"""How a run ends: diverged, cancelled between steps, past its time limit, or failed by a fault,
and never with an exception out of run_job."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from trainwire.jobs import JobSpec
from workers.runner import Run, run_job
from workers.variants import VARIANTS, Variant

TINY = {"batch_size": 4, "d_in": 8, "hidden": 4, "d_out": 2}


def assert_diverged_at_the_last_step(result: Any) -> None:
    losses, outcome = result.losses, result.outcome
    assert (outcome.status, outcome.error_code) == ("failed", "diverged")
    # the sink got every step up to and including the first non-finite one, and nothing after
    assert outcome.steps_done == len(losses) >= 2
    assert all(math.isfinite(v) for v in losses[:-1])
    assert not math.isfinite(losses[-1])
    step = len(losses) - 1
    assert f"at step {step};" in outcome.error_message
    assert "learning_rate" in outcome.error_message


# -- divergence -------------------------------------------------------------------------------


def test_numpy_at_rate_1e_2_diverges(train: Callable[..., Any]) -> None:
    result = train("numpy", learning_rate=1e-2)
    assert_diverged_at_the_last_step(result)
    assert result.outcome.steps_done < 50


@pytest.mark.parametrize(
    ("variant", "learning_rate"),
    [("tensors", 1e-2), ("autograd", 1e-2), ("custom_function", 1e-2), ("nn", 1.0)],
)
def test_torch_variants_diverge_too(
    train: Callable[..., Any], variant: str, learning_rate: float
) -> None:
    assert_diverged_at_the_last_step(train(variant, learning_rate=learning_rate))


def test_divergence_is_reported_even_when_the_steps_come_in_one_batch(
    train: Callable[..., Any],
) -> None:
    # no time-based flushes: the non-finite step must still end the run where it happens
    result = train("tensors", flush_seconds=3600, learning_rate=1e-2, steps=1000)
    assert_diverged_at_the_last_step(result)
    assert result.batches[0] == (0, 1)


# -- cancellation and the time limit ----------------------------------------------------------


def test_cancel_from_the_sink_stops_after_that_step(train: Callable[..., Any]) -> None:
    cancel = threading.Event()

    def after_step_10(collected: Any) -> None:
        if len(collected.losses) > 10:
            cancel.set()

    result = train("nn", cancel=cancel, on_batch=after_step_10, flush_seconds=0)
    assert result.outcome.status == "cancelled"
    assert result.outcome.error_code is None
    assert result.outcome.steps_done == len(result.losses) == 11


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cancel_stops_within_the_batch_it_was_set_in(
    train: Callable[..., Any], variant: str
) -> None:
    cancel = threading.Event()
    seen_at_cancel: list[int] = []

    def after_step_5(collected: Any) -> None:
        if len(collected.losses) > 5 and not cancel.is_set():
            seen_at_cancel.append(len(collected.losses))
            cancel.set()

    result = train(variant, cancel=cancel, on_batch=after_step_5, steps=5000, **TINY)
    assert result.outcome.status == "cancelled"
    # nothing runs after the batch that carried the cancel, and nothing is lost
    assert result.outcome.steps_done == len(result.losses) == seen_at_cancel[0] < 5000


def test_a_job_cancelled_before_it_starts_runs_no_step(train: Callable[..., Any]) -> None:
    cancel = threading.Event()
    cancel.set()
    result = train("numpy", cancel=cancel)
    assert (result.outcome.status, result.outcome.steps_done, result.losses) == (
        "cancelled",
        0,
        [],
    )


def test_a_tiny_time_limit_fails_with_timeout(train: Callable[..., Any]) -> None:
    result = train("tensors", timeout_s=1e-6)
    assert (result.outcome.status, result.outcome.error_code) == ("failed", "timeout")
    assert result.outcome.steps_done == len(result.losses)
    assert "time limit" in result.outcome.error_message


def test_the_time_limit_stops_a_long_run_between_steps(train: Callable[..., Any]) -> None:
    began = time.monotonic()
    result = train("custom_module", timeout_s=0.3, steps=1_000_000, **TINY)
    elapsed = time.monotonic() - began
    assert (result.outcome.status, result.outcome.error_code) == ("failed", "timeout")
    assert 0 < result.outcome.steps_done == len(result.losses) < 1_000_000
    assert elapsed < 10


# -- faults -----------------------------------------------------------------------------------


def broken_train(run: Run) -> None:
    for t in run.steps():
        run.record(t, 1.0 / (t + 1))
        if t == 2:
            raise ValueError("a bug in the variant")


def test_a_variant_that_raises_fails_its_job_only(
    monkeypatch: pytest.MonkeyPatch, train: Callable[..., Any]
) -> None:
    broken = Variant(
        "broken",
        "broken",
        "raises at step 2",
        ("cpu",),
        VARIANTS["nn"].hyperparameters,
        broken_train,
    )
    monkeypatch.setitem(VARIANTS, "broken", broken)
    result = train("broken")
    assert (result.outcome.status, result.outcome.error_code) == ("failed", "internal")
    assert result.outcome.error_message == "ValueError: a bug in the variant"
    # the steps recorded before the fault still reach the sink
    assert result.losses == [1.0, 0.5, 1 / 3]
    assert result.outcome.steps_done == 3
    # and the next job runs as usual
    assert train("nn", steps=2).outcome.status == "succeeded"


def test_a_sink_that_raises_fails_the_job(train: Callable[..., Any]) -> None:
    def explode(collected: Any) -> None:
        if len(collected.losses) >= 3:
            raise OSError("disk full")

    result = train("autograd", on_batch=explode, flush_seconds=0)
    assert (result.outcome.status, result.outcome.error_code) == ("failed", "internal")
    assert result.outcome.error_message == "OSError: disk full"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_job_on_a_machine_without_one_fails_instead_of_raising(
    spec: Callable[..., JobSpec],
) -> None:
    got: list[float] = []
    outcome = run_job(spec("tensors", device="cuda:0"), lambda first, losses: got.extend(losses))
    assert (outcome.status, outcome.error_code, got) == ("failed", "internal", [])
    assert "CUDA" in outcome.error_message


def overcommit_mode() -> str | None:
    try:
        return Path("/proc/sys/vm/overcommit_memory").read_text().strip()
    except OSError:
        return None


# Sizes far beyond any machine's memory. Linux refuses such an allocation at once unless it is set
# to overcommit always (mode 1), where the run would touch the pages and meet the OOM killer.
needs_refused_allocations = pytest.mark.skipif(
    overcommit_mode() not in ("0", "2"), reason="needs Linux's heuristic or strict overcommit"
)
WEIGHTS_TOO_BIG = {"batch_size": 1, "d_in": 1_000_000, "hidden": 10_000_000, "d_out": 1}
ACTIVATIONS_TOO_BIG = {"batch_size": 1_000_000, "d_in": 1, "hidden": 1_000_000, "d_out": 1}


@needs_refused_allocations
@pytest.mark.parametrize("variant", ["numpy", "tensors", "nn", "dynamic"])
def test_weights_that_cannot_be_allocated_fail_with_out_of_memory(
    train: Callable[..., Any], variant: str
) -> None:
    result = train(variant, **WEIGHTS_TOO_BIG)
    assert (result.outcome.status, result.outcome.error_code) == ("failed", "out_of_memory")
    assert result.outcome.steps_done == 0


@needs_refused_allocations
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_activations_that_cannot_be_allocated_fail_with_out_of_memory(
    train: Callable[..., Any], variant: str
) -> None:
    """x and w1 fit; h (N, H) of 10^12 elements does not, in numpy or in torch."""
    result = train(variant, **ACTIVATIONS_TOO_BIG)
    assert (result.outcome.status, result.outcome.error_code) == ("failed", "out_of_memory")
    assert result.outcome.steps_done == 0
    assert len(result.outcome.error_message) <= 500
