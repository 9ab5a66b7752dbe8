"""Hyperparameters of each variant, with the tutorial's defaults, and the server-wide limits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Dtype = Literal["float32", "float64"]

_ITEMSIZE = {"float32": 4, "float64": 8}


class Hyperparameters(BaseModel):
    """What every variant takes: the tutorial's N, D_in, H, D_out, the step count and the rate."""

    # strict: "64" is not a batch size and 64.5 is not an int; extra: a misspelt field is an error
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    batch_size: int = Field(64, gt=0, description="N, the number of examples in the batch.")
    d_in: int = Field(1000, gt=0, description="D_in, the input dimension.")
    hidden: int = Field(100, gt=0, description="H, the hidden dimension.")
    d_out: int = Field(10, gt=0, description="D_out, the output dimension.")
    steps: int = Field(
        50, gt=0, description="Training steps (the tutorial's `for t in range(50)`)."
    )
    learning_rate: float = Field(
        1e-6, gt=0, allow_inf_nan=False, description="Step size of the weight update."
    )
    dtype: Dtype = Field("float32", description="Floating-point type of every tensor.")


class HandwrittenHyperparameters(Hyperparameters):
    """numpy, tensors, autograd, custom_function: raw weight matrices, learning rate 1e-6."""


class Float64Hyperparameters(HandwrittenHyperparameters):
    dtype: Dtype = Field("float64", description="Floating-point type of every tensor.")


class ModuleHyperparameters(Hyperparameters):
    """nn, optim, custom_module: nn.Linear layers, learning rate 1e-4."""

    learning_rate: float = Field(
        1e-4, gt=0, allow_inf_nan=False, description="Step size of the weight update."
    )


class DynamicHyperparameters(ModuleHyperparameters):
    """dynamic: SGD with momentum and a random number of reused middle layers per step."""

    momentum: float = Field(
        0.9, ge=0, lt=1, allow_inf_nan=False, description="SGD momentum factor."
    )
    max_middle_layers: int = Field(
        3,
        ge=0,
        le=16,
        description="Each forward pass reuses the middle layer random.randint(0, this) times.",
    )


@dataclass(frozen=True)
class Limits:
    """Server-wide caps on what one job may ask for."""

    max_steps: int = 1_000_000
    max_job_bytes: int = 1 << 30


class HyperparameterError(ValueError):
    """Hyperparameters that fail validation; `errors` are pydantic-style dicts (loc, msg, type)."""

    def __init__(self, errors: list[dict[str, Any]]):
        self.errors = errors
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))


def estimate_job_bytes(variant: str, hp: Hyperparameters) -> int:
    """Upper estimate of the tensor memory one run of `variant` allocates."""
    n, d_in, h, d_out = hp.batch_size, hp.d_in, hp.hidden, hp.d_out
    params = d_in * h + h * d_out + h + d_out
    activations = 4 * n * h + 4 * n * d_out
    if variant == "dynamic":
        middle = getattr(hp, "max_middle_layers", 3)
        params += h * h + h
        activations += 3 * middle * n * h
    # weights + gradients + update temporaries; Adam adds two moments, momentum one buffer
    states = {"optim": 5, "dynamic": 4}.get(variant, 3)
    data = n * d_in + n * d_out + d_in * h  # x, y, and x.T-shaped products in the backward
    elements = data + states * params + activations
    return elements * _ITEMSIZE[hp.dtype] + 1024 * hp.steps // 128  # + the loss buffer


def check_limits(variant: str, hp: Hyperparameters, limits: Limits) -> None:
    """Raise HyperparameterError when `hp` asks for more than the server allows."""
    errors: list[dict[str, Any]] = []
    if hp.steps > limits.max_steps:
        errors.append(
            {
                "loc": ("steps",),
                "msg": f"steps is {hp.steps}, above this server's limit of {limits.max_steps}",
                "type": "less_than_equal",
            }
        )
    need = estimate_job_bytes(variant, hp)
    if need > limits.max_job_bytes:
        sizes = {
            "batch_size": hp.batch_size,
            "d_in": hp.d_in,
            "hidden": hp.hidden,
            "d_out": hp.d_out,
        }
        biggest = max(sizes, key=lambda k: sizes[k])
        errors.append(
            {
                "loc": (biggest,),
                "msg": (
                    f"tensors of batch_size={hp.batch_size}, d_in={hp.d_in}, hidden={hp.hidden}, "
                    f"d_out={hp.d_out} ({hp.dtype}) need about {need:,} bytes, above this "
                    f"server's limit of {limits.max_job_bytes:,} bytes per job; "
                    f"reduce {biggest} or the other sizes"
                ),
                "type": "memory_budget",
            }
        )
    if errors:
        raise HyperparameterError(errors)


def parse_hyperparameters(
    model: type[Hyperparameters], data: dict[str, Any], variant: str, limits: Limits
) -> Hyperparameters:
    """Validate a request's hyperparameters for `variant`: types, ranges, then the limits."""
    try:
        hp = model.model_validate(data)
    except ValidationError as exc:
        errors = []
        for e in exc.errors(include_url=False, include_context=False):
            msg = e["msg"]
            if e["type"] == "extra_forbidden":
                msg = f"{variant!r} does not take this hyperparameter"
            errors.append({"loc": tuple(e["loc"]), "msg": msg, "type": e["type"]})
        raise HyperparameterError(errors) from None
    check_limits(variant, hp, limits)
    return hp
