"""The shared problem instance: x, y and starting weights drawn from the run's seed alone."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from workers import problem as problem_module
from workers.problem import Problem
from workers.variants import VARIANTS

CPU = torch.device("cpu")
SIZES = (64, 1000, 100, 10)
HANDWRITTEN = {"numpy", "tensors", "autograd", "custom_function"}


def problem(seed: int = 0, dtype: str = "float64", sizes: tuple[int, ...] = SIZES) -> Problem:
    return Problem(seed, *sizes, dtype)  # type: ignore[arg-type]


def test_the_same_seed_gives_the_same_instance() -> None:
    for a, b in zip(problem(3).arrays(), problem(3).arrays(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_different_seeds_give_different_instances() -> None:
    for a, b in zip(problem(0).arrays(), problem(1).arrays(), strict=True):
        assert not np.array_equal(a, b)


def test_shapes_and_dtype_are_the_tutorials() -> None:
    x, y, w1, w2 = problem(dtype="float32").arrays()
    assert (x.shape, y.shape, w1.shape, w2.shape) == ((64, 1000), (64, 10), (1000, 100), (100, 10))
    assert {a.dtype for a in (x, y, w1, w2)} == {np.dtype(np.float32)}


def test_values_are_standard_normal() -> None:
    x, y, w1, w2 = problem().arrays()
    for a in (x, w1):  # 64,000 and 100,000 draws
        assert abs(a.mean()) < 0.02
        assert abs(a.std() - 1) < 0.02


def test_float32_is_the_float64_instance_rounded() -> None:
    """Drawn in float64 and then cast: the instance depends on (seed, sizes, dtype) only."""
    for a32, a64 in zip(problem(dtype="float32").arrays(), problem().arrays(), strict=True):
        np.testing.assert_array_equal(a32, a64.astype(np.float32))


def test_arrays_tensors_and_data_agree() -> None:
    p = problem(5)
    x, y, w1, w2 = p.arrays()
    tx, ty, tw1, tw2 = p.tensors(CPU)
    dx, dy = p.data(CPU)
    for a, t in [(x, tx), (y, ty), (w1, tw1), (w2, tw2), (x, dx), (y, dy)]:
        assert t.dtype == torch.float64
        np.testing.assert_array_equal(t.numpy(), a)


def test_layers_and_depth_draws_do_not_shift_the_data() -> None:
    """Each kind of draw has its own stream: asking for layers first changes nothing."""
    layers_first = problem(2)
    layers_first.linear("input", 1000, 100, CPU)
    layers_first.choices().random()
    for a, b in zip(layers_first.arrays(), problem(2).arrays(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_each_call_hands_out_fresh_arrays() -> None:
    """Variants update their weights in place; that must not change the instance."""
    p = problem()
    x, _, w1, _ = p.arrays()
    x_kept, w1_kept = x.copy(), w1.copy()
    x += 1
    w1 -= 1
    _, _, tw1, _ = p.tensors(CPU, requires_grad=True)
    with torch.no_grad():
        tw1 -= 1
    x2, _, w1_2, _ = p.arrays()
    np.testing.assert_array_equal(x2, x_kept)
    np.testing.assert_array_equal(w1_2, w1_kept)


def test_tensors_require_grad_only_when_asked() -> None:
    x, y, w1, w2 = problem().tensors(CPU, requires_grad=True)
    assert (x.requires_grad, y.requires_grad, w1.requires_grad, w2.requires_grad) == (
        False,
        False,
        True,
        True,
    )
    assert not any(t.requires_grad for t in problem().tensors(CPU))


# -- nn.Linear layers -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_layers_follow_pytorchs_init_distribution(dtype: str) -> None:
    layer = problem(dtype=dtype).linear("input", 1000, 100, CPU)
    assert isinstance(layer, torch.nn.Linear)
    assert layer.weight.shape == (100, 1000) and layer.bias.shape == (100,)
    assert layer.weight.dtype == layer.bias.dtype == getattr(torch, dtype)
    bound = 1 / math.sqrt(1000)
    for p in (layer.weight, layer.bias):
        assert p.requires_grad
        assert p.abs().max() <= bound
    # U(-b, b): mean 0, variance b^2 / 3
    w = layer.weight.detach().double()
    assert abs(w.mean().item()) < 0.02 * bound
    assert w.var().item() == pytest.approx(bound**2 / 3, rel=0.02)


def test_layers_are_seeded_per_name() -> None:
    p, q = problem(4), problem(4)
    same_a, same_b = p.linear("input", 100, 100, CPU), q.linear("input", 100, 100, CPU)
    torch.testing.assert_close(same_a.weight, same_b.weight, rtol=0, atol=0)
    torch.testing.assert_close(same_a.bias, same_b.bias, rtol=0, atol=0)
    other_name = p.linear("middle", 100, 100, CPU)
    other_seed = problem(5).linear("input", 100, 100, CPU)
    assert not torch.equal(same_a.weight, other_name.weight)
    assert not torch.equal(same_a.weight, other_seed.weight)


def test_float32_layers_are_the_float64_layers_rounded() -> None:
    l32 = problem(dtype="float32").linear("output", 100, 10, CPU)
    l64 = problem(dtype="float64").linear("output", 100, 10, CPU)
    assert torch.equal(l32.weight, l64.weight.float())
    assert torch.equal(l32.bias, l64.bias.float())


def test_the_dynamic_nets_depth_draws_come_from_the_seed() -> None:
    def draws(seed: int) -> list[int]:
        rng = problem(seed).choices()
        return [rng.randint(0, 3) for _ in range(200)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    assert set(draws(7)) == {0, 1, 2, 3}


def test_drawing_an_instance_leaves_the_global_generators_alone() -> None:
    torch_state, np_state, py_state = (
        torch.get_rng_state(),
        np.random.get_state(),
        random.getstate(),
    )
    p = problem(9, dtype="float32")
    p.tensors(CPU)
    p.linear("input", 1000, 100, CPU)
    p.choices().random()
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state[1])
    assert random.getstate() == py_state


# -- every variant trains on the instance of its seed -----------------------------------------


def hand_written_loss(p: Problem) -> float:
    x, y, w1, w2 = p.arrays()
    return float(np.square(np.maximum(x @ w1, 0) @ w2 - y).sum())


def module_loss(p: Problem) -> float:
    x, y = p.data(CPU)
    first, last = p.linear("input", 1000, 100, CPU), p.linear("output", 100, 10, CPU)
    with torch.no_grad():
        return float((last(first(x).clamp(min=0)) - y).pow(2).sum())


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("seed", [0, 11])
def test_every_variant_starts_on_the_instance_of_its_seed(
    train: Callable[..., Any], variant: str, seed: int
) -> None:
    """Step 0's loss is the loss of the seed's x, y and starting weights, in every variant."""
    hp: dict[str, Any] = {"steps": 1, "dtype": "float64"}
    if variant == "dynamic":
        hp["max_middle_layers"] = 0  # step 0 uses the input and output layers only
    got = train(variant, seed, **hp).losses
    assert len(got) == 1
    p = problem(seed)
    want = hand_written_loss(p) if variant in HANDWRITTEN else module_loss(p)
    assert got[0] == pytest.approx(want, rel=1e-12)


# -- drawn a chunk at a time ------------------------------------------------------------------


def one_draw(seed: int, key: tuple[int, ...], shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """The arrays of `shapes` drawn from one stream as whole float64 arrays, in order."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))
    return [rng.standard_normal(shape) for shape in shapes]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("chunk", [1, 37, 1000, 1 << 40])
def test_chunked_draws_are_one_whole_draw_cast(
    monkeypatch: pytest.MonkeyPatch, dtype: str, chunk: int
) -> None:
    """Chunks that end mid-row, or one chunk for everything: the same numbers as drawing each
    array whole in float64 and casting it, which is what fixes a seed's instance."""
    monkeypatch.setattr(problem_module, "DRAW_CHUNK", chunk)
    sizes = (23, 41, 13, 3)  # x 943 and w1 533 values: not a multiple of any chunk above
    n, d_in, h, d_out = sizes
    x, y, w1, w2 = problem(7, dtype, sizes).arrays()
    want = [
        *one_draw(7, (0,), [(n, d_in), (n, d_out)]),
        *one_draw(7, (1,), [(d_in, h), (h, d_out)]),
    ]
    for got, whole in zip((x, y, w1, w2), want, strict=True):
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, whole.astype(dtype))

    layer = problem(7, dtype, sizes).linear("middle", 41, 13, CPU)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(7, spawn_key=(2, 2))))
    bound = 1 / math.sqrt(41)
    weight, bias = rng.uniform(-bound, bound, (13, 41)), rng.uniform(-bound, bound, (13,))
    assert torch.equal(layer.weight.detach(), torch.from_numpy(weight.astype(dtype)))
    assert torch.equal(layer.bias.detach(), torch.from_numpy(bias.astype(dtype)))
