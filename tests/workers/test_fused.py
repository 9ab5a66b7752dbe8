"""Fused runs: with per-run kernels every variant's fused program gives each run the curve it has
alone, bit for bit (on one CPU thread, as a fused group runs), on any CPU by construction;
batched kernels give the same bits every time; cancel and divergence end one run, not the
others; the check refuses batched kernels made to differ and passes those that do not; the pool
runs groups, says what holds of them, and puts refused ones back as plain jobs."""

from __future__ import annotations

import math
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
import torch
from backendkit import WAIT, Messages
from runkit import Collected, Trained, make_spec
from threadpoolctl import threadpool_limits

from trainwire.jobs import ErrorCode, Finished, JobSpec, RunOutcome
from workers.fused import FUSED, check
from workers.fused.batch import run_fused
from workers.fused.groups import plan_groups
from workers.hyperparameters import estimate_job_bytes
from workers.pool import LocalBackend
from workers.variants import VARIANTS

# one product under ATen's small-bmm threshold (8 * 10 * 2 = 160 < 400), the others over it
TINY = {"batch_size": 8, "d_in": 20, "hidden": 10, "d_out": 2}
SMALL = {"batch_size": 16, "d_in": 64, "hidden": 32, "d_out": 4}
BASE_RATE = {"numpy": 1e-6, "tensors": 1e-6, "autograd": 1e-6, "custom_function": 1e-6}


def bits(values: list[float]) -> list[bytes | str]:
    return [struct.pack("<d", v) if not math.isnan(v) else "nan" for v in values]


def group(variant: str, seeds_and_rates: list[tuple[int, float]], **hp: Any) -> list[JobSpec]:
    return [
        replace(make_spec(variant, seed, learning_rate=rate, **hp), job_id=f"run{r}")
        for r, (seed, rate) in enumerate(seeds_and_rates)
    ]


def fused(
    specs: list[JobSpec],
    cancels: list[threading.Event] | None = None,
    on_batch: Callable[[int, Collected], None] | None = None,
) -> tuple[list[Collected], dict[str, Finished]]:
    collected = [Collected() for _ in specs]
    finished: dict[str, Finished] = {}

    def sink_of(r: int) -> Callable[[int, list[float]], None]:
        def sink(first: int, values: list[float]) -> None:
            collected[r](first, values)
            if on_batch is not None:
                on_batch(r, collected[r])

        return sink

    def finish(message: Finished) -> None:
        assert message.job_id not in finished, message
        finished[message.job_id] = message

    run_fused(
        specs, FUSED[specs[0].variant], [sink_of(r) for r in range(len(specs))], finish, cancels
    )
    assert set(finished) == {s.job_id for s in specs}
    return collected, finished


def alone(train: Callable[..., Trained], spec: JobSpec) -> Trained:
    hp = spec.hyperparameters.model_dump()
    return train(spec.variant, spec.seed, **hp)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("sizes", [TINY, SMALL], ids=["tiny", "small"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_fused_run_equals_the_run_alone_bit_for_bit(
    variant: str, sizes: dict[str, int], dtype: str, train: Callable[..., Trained]
) -> None:
    rate = BASE_RATE.get(variant, 1e-4)
    steps = 40 if variant == "dynamic" else 25  # dynamic: enough steps for every depth
    specs = group(
        variant, [(1, rate), (2, rate * 3), (3, rate / 3)], steps=steps, dtype=dtype, **sizes
    )
    collected, finished = fused(specs)
    for spec, got in zip(specs, collected, strict=True):
        expected = alone(train, spec)
        assert expected.outcome.status == RunOutcome.succeeded
        assert finished[spec.job_id] == replace(expected.outcome, job_id=spec.job_id)
        assert bits(got.losses) == bits(expected.losses), spec


def test_a_group_of_one_run_equals_the_run_alone(train: Callable[..., Trained]) -> None:
    (spec,) = group("optim", [(9, 1e-3)], steps=20, **SMALL)
    collected, _ = fused([spec])
    assert bits(collected[0].losses) == bits(alone(train, spec).losses)


@pytest.mark.parametrize("variant", ["tensors", "dynamic"])
def test_a_cancelled_run_ends_alone_and_the_others_go_on(
    variant: str, train: Callable[..., Trained]
) -> None:
    rate = BASE_RATE.get(variant, 1e-4)
    specs = group(variant, [(1, rate), (2, rate * 2), (3, rate / 2)], steps=60, **TINY)
    cancels = [threading.Event() for _ in specs]

    def on_batch(r: int, got: Collected) -> None:
        if r == 1 and len(got.losses) >= 10:
            cancels[1].set()

    collected, finished = fused(specs, cancels, on_batch)
    ended = finished["run1"]
    assert ended.status == RunOutcome.cancelled
    assert 10 <= ended.steps_done < 60 and len(collected[1].losses) == ended.steps_done
    whole = alone(train, specs[1])
    assert bits(collected[1].losses) == bits(whole.losses[: ended.steps_done])
    for r in (0, 2):
        assert finished[f"run{r}"].status == RunOutcome.succeeded
        assert bits(collected[r].losses) == bits(alone(train, specs[r]).losses)


@pytest.mark.parametrize("variant", ["numpy", "nn", "optim"])
def test_a_diverging_run_fails_as_alone_and_the_others_go_on(
    variant: str, train: Callable[..., Trained]
) -> None:
    rate = BASE_RATE.get(variant, 1e-4)
    huge = {"numpy": 1.0, "nn": 10.0, "optim": 1e30}[variant]
    specs = group(variant, [(1, rate), (2, huge), (3, rate)], steps=200, **TINY)
    collected, finished = fused(specs)
    expected = alone(train, specs[1])
    assert expected.outcome.error_code == ErrorCode.diverged
    assert finished["run1"] == replace(expected.outcome, job_id="run1")
    assert bits(collected[1].losses) == bits(expected.losses)
    for r in (0, 2):
        assert finished[f"run{r}"].status == RunOutcome.succeeded
        assert bits(collected[r].losses) == bits(alone(train, specs[r]).losses)


def split_k_bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A batched product that adds its reduction in another order (two halves of K): equal to
    a @ b in exact arithmetic, another rounding in floating point."""
    k = a.shape[-1] // 2
    return torch.matmul(a[..., :k], b[..., :k, :]) + torch.matmul(a[..., k:], b[..., k:, :])


def split_k_baddbmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return bias + split_k_bmm(a, b)


@pytest.fixture
def differing_batched_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batched products made to round otherwise than each run's own mm."""
    monkeypatch.setattr(torch, "bmm", split_k_bmm)
    monkeypatch.setattr(torch, "baddbmm", split_k_baddbmm)


def test_per_run_kernels_pass_the_check_without_running_it() -> None:
    specs = group("nn", [(1, 1e-4), (2, 3e-4)], steps=50, **SMALL)
    plan = check.fusion_plan(specs)
    assert isinstance(plan, check.FusionPlan)
    assert (plan.kernels, plan.exact) == ("per_run", "by_construction")
    assert check.compare_fused_to_alone(specs, 30, kernels="per_run", draws=2) is None


@pytest.mark.usefixtures("differing_batched_kernels")
@pytest.mark.parametrize("variant", ["tensors", "nn", "optim"])
def test_the_check_refuses_batched_kernels_that_differ(variant: str) -> None:
    rate = BASE_RATE.get(variant, 1e-4)
    specs = group(variant, [(1, rate), (2, rate * 2)], steps=50, **SMALL)
    why = check.compare_fused_to_alone(specs, check.CHECK_STEPS, kernels="batched")
    assert why is not None and "differ at step" in why and variant in why
    # a per-run product never calls the batched kernel
    assert check.compare_fused_to_alone(specs, check.CHECK_STEPS, kernels="per_run") is None


def test_the_check_passes_batched_kernels_that_equal_the_runs_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a "batched" product that is each run's mm in disguise: the check must let it through
    def per_slice(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.stack([x.mm(y) for x, y in zip(a, b, strict=True)])

    monkeypatch.setattr(torch, "bmm", per_slice)
    monkeypatch.setattr(check, "EXACT_KERNELS", {"cpu": "batched"})
    check.forget_verdicts()
    try:
        specs = group("tensors", [(1, 1e-6), (2, 2e-6)], steps=50, **SMALL)
        plan = check.fusion_plan(specs)
        assert isinstance(plan, check.FusionPlan)
        assert (plan.kernels, plan.exact) == ("batched", "checked")
    finally:
        check.forget_verdicts()


@pytest.mark.parametrize("variant", ["nn", "optim", "tensors", "numpy"])
def test_batched_kernels_give_the_same_bits_every_time(variant: str) -> None:
    rate = BASE_RATE.get(variant, 1e-4)
    specs = group(variant, [(1, rate), (2, rate * 3), (3, rate / 3)], steps=60, **SMALL)
    runs = []
    for _ in range(2):
        collected = [Collected() for _ in specs]
        run_fused(specs, FUSED[variant], collected, lambda finished: None, kernels="batched")
        runs.append([bits(c.losses) for c in collected])
    assert runs[0] == runs[1] and all(len(curve) == 60 for curve in runs[0])


def test_a_sweep_that_asks_for_speed_trains_batched_and_says_so() -> None:
    specs = group("nn", [(1, 1e-4), (2, 3e-4)], steps=10, **SMALL)
    plan = check.fusion_plan(specs, exact=False)
    assert isinstance(plan, check.FusionPlan)
    assert (plan.kernels, plan.exact) == ("batched", "unchecked")
    assert plan.environment()["fused_exact"] == "unchecked"


def test_groups_split_by_what_runs_share_and_by_the_memory_budget() -> None:
    specs = [
        replace(make_spec("nn", seed, learning_rate=rate, hidden=hidden), job_id=f"{hidden}-{i}")
        for hidden in (10, 20)
        for i, (seed, rate) in enumerate([(1, 1e-4), (2, 1e-4), (1, 1e-3), (2, 1e-3), (3, 1e-5)])
    ]
    one = estimate_job_bytes("nn", specs[0].hyperparameters)
    two_fit = one * 2 + one // 2
    groups = plan_groups(specs, max_bytes=1 << 40)
    assert [[s.job_id for s in g] for g in groups] == [
        [f"10-{i}" for i in range(5)],
        [f"20-{i}" for i in range(5)],
    ]
    sizes = [len(g) for g in plan_groups(specs[:5], max_bytes=two_fit)]
    assert sizes == [2, 2, 1]
    assert [len(g) for g in plan_groups(specs[:5], max_bytes=1 << 40, max_runs=3)] == [3, 2]
    assert [len(g) for g in plan_groups(specs, max_bytes=1 << 40, slots=2)] == [3, 2, 3, 2]


# -- the pool ---------------------------------------------------------------------------------


@pytest.fixture
def make_pool() -> Iterator[Callable[..., tuple[LocalBackend, Messages]]]:
    made: list[tuple[LocalBackend, Messages]] = []

    def make(**kw: Any) -> tuple[LocalBackend, Messages]:
        options: dict[str, Any] = {"cpu_workers": 1, "jobs_per_gpu": 0, "cpu_threads": 1}
        pool = LocalBackend(**{**options, "gpus": [], **kw})
        messages = Messages(pool)
        made.append((pool, messages))
        pool.start()
        assert pool.wait_ready(60)
        return pool, messages

    with threadpool_limits(limits=None, user_api="blas"):
        yield make
        for pool, messages in made:
            messages.close()
            pool.stop(timeout=WAIT)


@pytest.mark.parametrize("processes", [False, True], ids=["thread", "process"])
def test_the_pool_runs_a_group_as_one_and_reports_each_run(
    make_pool: Callable[..., tuple[LocalBackend, Messages]],
    train: Callable[..., Trained],
    processes: bool,
) -> None:
    pool, messages = make_pool(processes=processes)
    specs = group("custom_module", [(1, 1e-4), (2, 1e-3), (3, 1e-5)], steps=30, **TINY)
    assert pool.fuses("custom_module")
    pool.submit_group(specs)
    for spec in specs:
        finished = messages.wait_done(spec.job_id)
        assert finished.status == RunOutcome.succeeded and finished.steps_done == 30
        environment = messages.environment[spec.job_id]
        assert environment["fused_runs"] == 3 and environment["threads"] == 1
        assert environment["fused_exact"] == "by_construction"
        assert bits(messages.losses[spec.job_id]) == bits(alone(train, spec).losses)


@pytest.mark.parametrize("processes", [False, True], ids=["thread", "process"])
def test_a_run_cancelled_in_a_queued_or_running_group_ends_alone(
    make_pool: Callable[..., tuple[LocalBackend, Messages]], processes: bool
) -> None:
    pool, messages = make_pool(processes=processes)
    blocker = replace(make_spec("numpy", 0, steps=1_000_000, **TINY), job_id="blocker")
    pool.submit(blocker)
    messages.wait_first_loss("blocker")
    specs = group("nn", [(1, 1e-4), (2, 1e-4), (3, 1e-4)], steps=1_000_000, **TINY)
    pool.submit_group(specs)
    assert pool.queued() == 3
    assert pool.cancel("run0") == "queued"  # taken out of the waiting group: nothing follows
    assert pool.queued() == 2 and [s.job_id for s in pool.queued_specs()] == ["run1", "run2"]
    assert pool.cancel("blocker") == "running"
    messages.wait_first_loss("run1")
    assert pool.cancel("run1") == "running"
    assert messages.wait_done("run1").status == RunOutcome.cancelled
    assert "run2" not in messages.finished  # the other run trains on
    assert pool.cancel("run2") == "running"
    assert messages.wait_done("run2").status == RunOutcome.cancelled
    assert "run0" not in messages.started and "run0" not in messages.finished
    assert pool.cancel("run2") is None


@pytest.mark.usefixtures("differing_batched_kernels")
def test_a_group_the_check_refuses_runs_as_plain_jobs(
    make_pool: Callable[..., tuple[LocalBackend, Messages]],
    train: Callable[..., Trained],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(check, "EXACT_KERNELS", {"cpu": "batched"})  # as on a GPU
    check.forget_verdicts()
    try:
        pool, messages = make_pool(processes=False)
        specs = group("tensors", [(1, 1e-6), (2, 2e-6)], steps=20, **SMALL)
        pool.submit_group(specs)
        for spec in specs:
            assert messages.wait_done(spec.job_id).status == RunOutcome.succeeded
            assert "fused_runs" not in messages.environment[spec.job_id]
            assert bits(messages.losses[spec.job_id]) == bits(alone(train, spec).losses)
    finally:
        check.forget_verdicts()


@pytest.mark.parametrize("processes", [False, True], ids=["thread", "process"])
def test_the_pool_trains_a_group_that_asks_for_speed_on_batched_kernels(
    make_pool: Callable[..., tuple[LocalBackend, Messages]], processes: bool
) -> None:
    pool, messages = make_pool(processes=processes)
    specs = group("nn", [(1, 1e-4), (2, 1e-3)], steps=30, **SMALL)
    pool.submit_group(specs, exact=False)
    for spec in specs:
        assert messages.wait_done(spec.job_id).status == RunOutcome.succeeded
        environment = messages.environment[spec.job_id]
        assert environment["fused_runs"] == 2
        assert (environment["fused_kernels"], environment["fused_exact"]) == (
            "batched",
            "unchecked",
        )
