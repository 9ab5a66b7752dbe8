"""The eight variants: hand-written gradients against autograd, the tutorial's curves, and which
variants are the same computation written differently."""

from __future__ import annotations

import threading
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import numpy as np
import pytest
import torch

from trainwire.jobs import JobSpec
from workers.problem import Problem
from workers.recorder import LossRecorder
from workers.runner import Run
from workers.variants import VARIANTS
from workers.variants.custom_function import MyReLU

HANDWRITTEN = ["numpy", "tensors", "autograd", "custom_function"]
SEEDS = [0, 1, 2]


def relative_gap(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b)
    return max(abs(p - q) / abs(q) for p, q in zip(a, b, strict=True))


# -- the backward passes ----------------------------------------------------------------------


class KeptProblem(Problem):
    """A problem that keeps the arrays it hands out, so that a test sees the variant's in-place
    weight update (on the CPU, `tensors()` wraps these same arrays without a copy)."""

    handed_out: tuple[np.ndarray, ...] = ()

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        arrays = super().arrays()
        self.handed_out = arrays
        return arrays


def gradients_from_one_step(
    spec: Callable[..., JobSpec], variant: str, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Run one step of `variant` at learning rate 1 and read its gradients off the update.

    w_after = w - 1 * grad, with |grad| >> |w| here, so w - w_after is grad to about 1e-15.
    """
    job = spec(variant, seed, steps=1, learning_rate=1.0, dtype="float64")
    run = Run(job, LossRecorder(lambda first, losses: None, 1), threading.Event(), None)
    run.problem = KeptProblem(seed, *run.sizes, "float64")
    _, _, w1, w2 = Problem(seed, *run.sizes, "float64").arrays()
    VARIANTS[variant].train(run)
    _, _, w1_after, w2_after = run.problem.handed_out
    assert not np.array_equal(w1_after, w1), "the variant did not update the weights it was given"
    return w1 - w1_after, w2 - w2_after


def autograd_gradients(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y, w1, w2 = Problem(seed, 64, 1000, 100, 10, "float64").tensors(
        torch.device("cpu"), requires_grad=True
    )
    loss = (torch.relu(x @ w1) @ w2 - y).square().sum()
    loss.backward()
    assert w1.grad is not None and w2.grad is not None
    return w1.grad, w2.grad


@pytest.mark.parametrize("variant", HANDWRITTEN)
@pytest.mark.parametrize("seed", [0, 3])
def test_the_gradient_of_each_variant_is_autograds(
    spec: Callable[..., JobSpec], variant: str, seed: int
) -> None:
    grad_w1, grad_w2 = gradients_from_one_step(spec, variant, seed)
    want_w1, want_w2 = autograd_gradients(seed)
    for got, want in [(grad_w1, want_w1), (grad_w2, want_w2)]:
        scale = want.abs().max().item()
        assert scale > 1e3  # far from zero: a wrong mask or factor would show
        torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-9, atol=1e-12 * scale)


def test_myrelu_backward_passes_gradcheck() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(20, 30, dtype=torch.float64, generator=generator)
    x = x + 0.1 * torch.sign(x)  # away from the kink at 0, where finite differences fail
    assert torch.autograd.gradcheck(MyReLU.apply, (x.requires_grad_(),))


def test_myrelu_matches_autograd_of_clamp_including_zeros() -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(50, 40, dtype=torch.float64, generator=generator)
    x[::7, ::3] = 0.0
    upstream = torch.randn(50, 40, dtype=torch.float64, generator=generator)
    mine, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = MyReLU.apply(mine)
    assert torch.equal(out, ref.clamp(min=0))
    out.backward(upstream)
    ref.clamp(min=0).backward(upstream)
    assert mine.grad is not None and ref.grad is not None
    assert torch.equal(mine.grad, ref.grad)


# -- the tutorial's curves over 50 default steps ----------------------------------------------

# (first loss range, last loss range, falls at every step) as the tutorial's printed runs go
CURVES: dict[str, tuple[tuple[float, float], tuple[float, float], bool]] = {
    # 2.8e7 -> 1.3e4, 3.4e7 -> 1.4e4, 2.7e7 -> 1.0e4, 2.8e7 -> 1.0e4
    **{v: ((1e7, 1e8), (3e3, 5e4), False) for v in HANDWRITTEN},
    "nn": ((4e2, 1.2e3), (15, 60), True),  # 697 -> 37
    "custom_module": ((4e2, 1.2e3), (15, 60), True),  # 693 -> 18
    "optim": ((4e2, 1.2e3), (120, 320), True),  # 721 -> 219: Adam at 1e-4 is slow here
}


@pytest.mark.parametrize("variant", list(CURVES))
def test_the_curve_is_the_tutorials(train: Callable[..., Any], variant: str) -> None:
    (first_lo, first_hi), (last_lo, last_hi), monotonic = CURVES[variant]
    for seed in SEEDS:
        result = train(variant, seed)
        losses = result.losses
        assert result.outcome.status == "succeeded"
        assert result.outcome.steps_done == len(losses) == 50
        assert first_lo < losses[0] < first_hi, (seed, losses[0])
        assert last_lo < losses[-1] < last_hi, (seed, losses[-1])
        falls = [b < a for a, b in pairwise(losses)]
        if monotonic:
            assert all(falls), (seed, losses)
        else:
            # the hand-written runs may rise in the first few steps, then fall at every step
            assert all(falls[10:]), (seed, losses)
            assert losses[-1] < 1e-2 * losses[0]


def test_the_dynamic_curve_is_noisy_and_ends_well_below_its_start(
    train: Callable[..., Any],
) -> None:
    for seed in SEEDS:
        losses = train("dynamic", seed).losses
        assert len(losses) == 50
        assert 4e2 < losses[0] < 1.2e3  # 645 in the tutorial
        assert losses[-1] < 0.5 * losses[0], (seed, losses)  # 645 -> 108
        assert min(losses) < 0.2 * losses[0], (seed, losses)
        assert any(b > a for a, b in pairwise(losses)), "a random depth per step is noisy"


def test_adam_falls_slower_than_plain_sgd(train: Callable[..., Any]) -> None:
    for seed in SEEDS[:2]:
        sgd, adam = train("custom_module", seed).losses, train("optim", seed).losses
        assert sgd[0] == adam[0]
        assert adam[-1] > 3 * sgd[-1]


def test_losses_are_plain_python_floats(train: Callable[..., Any]) -> None:
    for variant in VARIANTS:
        losses = train(variant, steps=3, d_in=20, hidden=5).losses
        assert [type(v) for v in losses] == [float] * 3, variant


# -- the same computation, written differently ------------------------------------------------


@pytest.mark.parametrize("seed", [0, 4])
def test_hand_written_variants_follow_one_curve_in_float64(
    train: Callable[..., Any], seed: int
) -> None:
    numpy_losses = train("numpy", seed, dtype="float64").losses
    for variant in ["tensors", "autograd", "custom_function"]:
        losses = train(variant, seed, dtype="float64").losses
        assert relative_gap(losses, numpy_losses) <= 1e-9, variant


# Unit roundoff of float32: every float32 operation is exact to within a factor (1 +- U32).
U32 = 2.0**-24


def float32_bound(batch_size: int, d_in: int, hidden: int, d_out: int, steps: int) -> float:
    """What float32 can promise for a run's relative gap to the same run in float64.

    A dot product of length n is exact to within n * U32 of its terms' magnitudes (first-order
    worst case). One step's loss goes through dot products of length D_in (x w1) and H (h w2)
    and a sum of N * D_out squares; the backward pass uses the same lengths. Assume the worst,
    that each step's errors add to all those before it and nothing cancels them: the loss after
    `steps` steps is off by at most steps * (D_in + H + N * D_out) * U32 (5.2e-3 for the
    tutorial's sizes and 50 steps). Real runs stay far inside it (1e-5 to 6e-5, on Intel and
    AMD EPYC CPUs), and a wrong program misses by far more: the curve falls by three decades.
    """
    return steps * (d_in + hidden + batch_size * d_out) * U32


@pytest.mark.parametrize("seed", [0, 7])
def test_hand_written_variants_follow_one_curve_in_float32(
    train: Callable[..., Any], seed: int
) -> None:
    reference = train("numpy", seed, dtype="float64").losses
    bound = float32_bound(64, 1000, 100, 10, steps=50)
    curves = {variant: train(variant, seed, dtype="float32").losses for variant in HANDWRITTEN}
    for variant, losses in curves.items():
        assert relative_gap(losses, reference) <= bound, variant
    # the torch ones make the same float32 operations in the same order, by hand or by autograd
    assert curves["tensors"] == curves["autograd"] == curves["custom_function"]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_nn_and_custom_module_follow_one_curve(train: Callable[..., Any], dtype: str) -> None:
    """The same layers and plain SGD; only the update is written differently.

    nn rounds `learning_rate * grad` before subtracting it, torch.optim.SGD does `add_(grad,
    alpha=-lr)` in one operation: each step the two updates part by at most one rounding, a
    relative U of that step's change to the weights. A step changes the loss by at most the
    loss itself, so it moves the loss apart by at most U relative; a squared error doubles a
    relative error, and the steps' parts add up: at most 2 * steps * U, with U the dtype's unit
    roundoff (6.0e-6 in float32 for 50 steps; measured: at most 3.9e-7 over 40 seeds on one
    CPU, 8.9e-7 over 12 seeds on another).
    """
    unit_roundoff = {"float64": 2.0**-53, "float32": U32}[dtype]
    tolerance = 2 * 50 * unit_roundoff
    for seed in range(12):
        nn_losses = train("nn", seed, dtype=dtype).losses
        module_losses = train("custom_module", seed, dtype=dtype).losses
        assert nn_losses[0] == module_losses[0]
        assert relative_gap(module_losses, nn_losses) <= tolerance, seed


def test_dynamic_without_middle_layers_or_momentum_is_custom_module(
    train: Callable[..., Any],
) -> None:
    for seed in SEEDS[:2]:
        dynamic = train("dynamic", seed, max_middle_layers=0, momentum=0.0).losses
        assert dynamic == train("custom_module", seed).losses


@pytest.mark.parametrize("seed", [0, 6])
def test_module_variants_start_from_the_same_layers(train: Callable[..., Any], seed: int) -> None:
    first = {
        variant: train(variant, seed, steps=1).losses[0]
        for variant in ["nn", "optim", "custom_module"]
    }
    first["dynamic"] = train("dynamic", seed, steps=1, max_middle_layers=0).losses[0]
    assert len(set(first.values())) == 1, first
    # and they then part ways: Adam, SGD and SGD with momentum take different second steps
    second = {train(variant, seed, steps=2).losses[1] for variant in ["nn", "optim", "dynamic"]}
    assert len(second) == 3


def test_dynamic_uses_its_middle_layer(train: Callable[..., Any]) -> None:
    """Where a seed draws one or more middle layers for step 0, its first loss is not nn's."""
    differs = [
        train("dynamic", seed, steps=1).losses[0] != train("nn", seed, steps=1).losses[0]
        for seed in range(6)
    ]
    assert any(differs)
