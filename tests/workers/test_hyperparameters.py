"""Hyperparameters: the tutorial's defaults, and every way a request's values are refused."""

from __future__ import annotations

import math
from typing import Any

import pytest

from workers.hyperparameters import (
    HyperparameterError,
    Limits,
    estimate_job_bytes,
    parse_hyperparameters,
)
from workers.variants import VARIANTS

HANDWRITTEN = ["numpy", "tensors", "autograd", "custom_function"]
MODULES = ["nn", "optim", "custom_module", "dynamic"]


def parse(variant: str, data: dict[str, Any], limits: Limits | None = None) -> Any:
    model = VARIANTS[variant].hyperparameters
    return parse_hyperparameters(model, data, variant, limits or Limits())


def refused(variant: str, data: dict[str, Any], limits: Limits | None = None) -> list[dict]:
    with pytest.raises(HyperparameterError) as info:
        parse(variant, data, limits)
    assert info.value.errors, "an error without details"
    # the message names each field, so a CLI or an HTTP 422 can point at it
    for error in info.value.errors:
        assert ".".join(map(str, error["loc"])) in str(info.value)
    return info.value.errors


def only_loc(errors: list[dict]) -> tuple[Any, ...]:
    assert len(errors) == 1, errors
    return tuple(errors[0]["loc"])


# -- defaults ---------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_defaults_are_the_tutorials_sizes(variant: str) -> None:
    hp = parse(variant, {})
    assert (hp.batch_size, hp.d_in, hp.hidden, hp.d_out, hp.steps) == (64, 1000, 100, 10, 50)


@pytest.mark.parametrize(
    ("variant", "learning_rate", "dtype"),
    [
        # the tutorial: numpy is float64; tensors and MyReLU use torch.float; autograd torch.double
        ("numpy", 1e-6, "float64"),
        ("tensors", 1e-6, "float32"),
        ("autograd", 1e-6, "float64"),
        ("custom_function", 1e-6, "float32"),
        # nn.Linear's default dtype, learning rate 1e-4 for SGD and Adam alike
        ("nn", 1e-4, "float32"),
        ("optim", 1e-4, "float32"),
        ("custom_module", 1e-4, "float32"),
        ("dynamic", 1e-4, "float32"),
    ],
)
def test_default_rate_and_dtype_per_variant(variant: str, learning_rate: float, dtype: str) -> None:
    hp = parse(variant, {})
    assert hp.learning_rate == learning_rate
    assert hp.dtype == dtype


def test_dynamic_defaults_are_momentum_0_9_and_up_to_3_middle_layers() -> None:
    hp = parse("dynamic", {})
    assert hp.momentum == 0.9
    assert hp.max_middle_layers == 3


def test_given_values_are_kept() -> None:
    hp = parse(
        "dynamic",
        {
            "batch_size": 8,
            "d_in": 20,
            "hidden": 5,
            "d_out": 2,
            "steps": 7,
            "learning_rate": 0.5,
            "dtype": "float64",
            "momentum": 0.0,
            "max_middle_layers": 0,
        },
    )
    assert (hp.batch_size, hp.d_in, hp.hidden, hp.d_out, hp.steps) == (8, 20, 5, 2, 7)
    assert (hp.learning_rate, hp.dtype, hp.momentum, hp.max_middle_layers) == (
        0.5,
        "float64",
        0.0,
        0,
    )


def test_an_integer_learning_rate_is_a_number() -> None:
    assert parse("nn", {"learning_rate": 1}).learning_rate == 1.0


# -- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_an_unknown_field_is_refused_by_name(variant: str) -> None:
    errors = refused(variant, {"learning_rat": 1e-3})
    assert only_loc(errors) == ("learning_rat",)
    assert variant in errors[0]["msg"]


@pytest.mark.parametrize(
    ("variant", "field", "value"),
    [
        ("nn", "momentum", 0.9),
        ("optim", "momentum", 0.9),
        ("custom_module", "max_middle_layers", 2),
        ("numpy", "momentum", 0.9),
        ("tensors", "max_middle_layers", 1),
    ],
)
def test_a_field_the_variant_does_not_use_is_refused(variant: str, field: str, value: Any) -> None:
    errors = refused(variant, {field: value})
    assert only_loc(errors) == (field,)
    assert errors[0]["msg"] == f"{variant!r} does not take this hyperparameter"


@pytest.mark.parametrize("field", ["batch_size", "d_in", "hidden", "d_out", "steps"])
@pytest.mark.parametrize("value", ["64", 64.5, 64.0, True, None, [64]])
def test_a_size_must_be_an_int(field: str, value: Any) -> None:
    assert only_loc(refused("nn", {field: value})) == (field,)


@pytest.mark.parametrize("value", ["1e-4", True, None])
def test_the_learning_rate_must_be_a_number(value: Any) -> None:
    assert only_loc(refused("optim", {"learning_rate": value})) == ("learning_rate",)


@pytest.mark.parametrize("field", ["batch_size", "d_in", "hidden", "d_out", "steps"])
@pytest.mark.parametrize("value", [0, -1])
def test_a_size_must_be_positive(field: str, value: int) -> None:
    errors = refused("tensors", {field: value})
    assert only_loc(errors) == (field,)
    assert errors[0]["type"] == "greater_than"


@pytest.mark.parametrize("variant", ["numpy", "nn", "dynamic"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1e-3, 0.0, -0.0])
def test_the_learning_rate_must_be_finite_and_positive(variant: str, value: float) -> None:
    assert only_loc(refused(variant, {"learning_rate": value})) == ("learning_rate",)


@pytest.mark.parametrize("value", ["float16", "float", "double", "bfloat16", "FLOAT32", 32])
def test_dtype_is_float32_or_float64(value: Any) -> None:
    assert only_loc(refused("autograd", {"dtype": value})) == ("dtype",)


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, math.nan, math.inf])
def test_momentum_is_in_0_to_1(value: float) -> None:
    assert only_loc(refused("dynamic", {"momentum": value})) == ("momentum",)


@pytest.mark.parametrize("value", [-1, 17, 2.0])
def test_max_middle_layers_is_an_int_from_0_to_16(value: Any) -> None:
    assert only_loc(refused("dynamic", {"max_middle_layers": value})) == ("max_middle_layers",)


def test_every_bad_field_is_reported_at_once() -> None:
    errors = refused("nn", {"batch_size": 0, "dtype": "half", "momentum": 0.5})
    assert {tuple(e["loc"]) for e in errors} == {("batch_size",), ("dtype",), ("momentum",)}


# -- server limits ----------------------------------------------------------------------------


def test_steps_above_the_server_limit_are_refused() -> None:
    limits = Limits(max_steps=1000)
    assert parse("nn", {"steps": 1000}, limits).steps == 1000
    errors = refused("nn", {"steps": 1001}, limits)
    assert only_loc(errors) == ("steps",)
    assert "1000" in errors[0]["msg"]


def test_the_default_step_limit_is_a_million() -> None:
    assert parse("numpy", {"steps": 1_000_000}).steps == 1_000_000
    assert only_loc(refused("numpy", {"steps": 1_000_001})) == ("steps",)


@pytest.mark.parametrize(
    ("sizes", "biggest"),
    [
        ({"d_in": 200_000, "hidden": 10_000}, "d_in"),
        ({"hidden": 300_000, "d_in": 2_000}, "hidden"),
        ({"batch_size": 2_000_000, "d_in": 1_000}, "batch_size"),
        ({"d_out": 500_000, "hidden": 2_000}, "d_out"),
    ],
)
def test_sizes_over_the_memory_budget_are_refused_naming_the_biggest(
    sizes: dict[str, int], biggest: str
) -> None:
    errors = refused("nn", sizes)
    assert only_loc(errors) == (biggest,)
    assert errors[0]["type"] == "memory_budget"


def test_the_memory_budget_follows_the_limit_and_the_dtype() -> None:
    hp64 = parse("numpy", {})
    hp32 = parse("numpy", {"dtype": "float32"})
    need64 = estimate_job_bytes("numpy", hp64)
    need32 = estimate_job_bytes("numpy", hp32)
    assert need32 < need64
    # the defaults' own tensors: x (64x1000), w1 (1000x100) and more, in float64
    assert need64 > 8 * (64 * 1000 + 1000 * 100)
    assert parse("numpy", {}, Limits(max_job_bytes=need64)) == hp64
    assert only_loc(refused("numpy", {}, Limits(max_job_bytes=need64 - 1))) == ("d_in",)
    # the same sizes fit in float32
    assert parse("numpy", {"dtype": "float32"}, Limits(max_job_bytes=need32)) == hp32


def test_the_defaults_fit_the_default_budget_for_every_variant() -> None:
    for variant in VARIANTS:
        parse(variant, {})


def test_too_many_steps_and_too_big_are_both_reported() -> None:
    errors = refused("tensors", {"steps": 2_000_000, "d_in": 10_000_000})
    assert {tuple(e["loc"]) for e in errors} == {("steps",), ("d_in",)}
