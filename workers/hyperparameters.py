"""Server-wide limits on hyperparameters: validation, and what a job's tensors cost."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from trainwire.hyperparameters import (  # noqa: F401 (the models, re-exported for the workers)
    HYPERPARAMETERS,
    Dtype,
    DynamicHyperparameters,
    Float64Hyperparameters,
    HandwrittenHyperparameters,
    Hyperparameters,
    ModuleHyperparameters,
)

_ITEMSIZE = {"float32": 4, "float64": 8}


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
