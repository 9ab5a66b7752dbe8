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


# The arrays a step of each variant holds at its peak, counted from its code and checked against
# the high-water mark of a process that runs it (tests/workers/test_memory.py):
#   (N, H) arrays: numpy, tensors: h, h_relu, grad_h_relu and grad_h, and the next step's h
#     made while the last step's are still bound; autograd, custom_function: x w1 and its ReLU
#     (both saved for the backward pass) and the gradient coming back through them; the module
#     variants: the first Linear's output, its ReLU and the gradient (dynamic: two more for
#     each use of the middle layer);
#   (N, D_out) arrays besides y: numpy, tensors: y_pred, y_pred - y, its square, grad_y_pred;
#     autograd, custom_function: y_pred, y_pred - y (saved by pow), its square, and pow's
#     backward 2 (y_pred - y) grad (two); the module variants: y_pred and MSELoss's gradient;
#   parameter-sized arrays, for each weight and bias: the parameter, its gradient and the
#     update's temporary `learning_rate * grad` (numpy, tensors, autograd, custom_function, nn);
#     Adam's two moments and two temporaries (optim); SGD updates in place (custom_module);
#     SGD's momentum buffer (dynamic; its middle layer, used up to max_middle_layers times,
#     also holds a gradient per use being summed).
# (N, H) arrays: measured at the tutorial's D_in, H, D_out with the largest batch a 256 MiB
# budget takes (tests/workers/test_memory.py), rounded up with room: torch's backward and the
# allocator keep more of them alive than the program names
_ARRAYS = {  # variant: ((N, H), (N, D_out) besides y, per parameter)
    "numpy": (5, 4, 3),
    "tensors": (7, 4, 3),
    "autograd": (7, 5, 3),
    "custom_function": (8, 5, 3),
    "nn": (8, 2, 3),
    "optim": (7, 2, 6),
    "custom_module": (6, 2, 2),
    "dynamic": (12, 2, 3),
}
# a variant not listed (a test's, a new one) is counted as the most any listed one holds
_MOST = (5, 5, 6)
_DYNAMIC_MIDDLE_PARAMETER_ARRAYS = 6
# the ReLUs' boolean masks (`h < 0`, clamp's backward), one byte an element, and what else an
# (N, H) step allocates: measured 1 to 4 bytes an element
_MASK_BYTES = 4
# problem.py draws the instance DRAW_CHUNK (65,536) float64 values at a time and casts them
_DRAW_BYTES = 1 << 20


def estimate_job_bytes(variant: str, hp: Hyperparameters) -> int:
    """Upper estimate of the memory one run of `variant` holds at its peak: the instance, the
    parameters and their optimizer state, a step's activations and gradients, the draw's chunk
    and the loss buffer."""
    n, d_in, h, d_out = hp.batch_size, hp.d_in, hp.hidden, hp.d_out
    per_hidden, per_output, per_parameter = _ARRAYS.get(variant, _MOST)
    hand_written = variant in ("numpy", "tensors", "autograd", "custom_function")
    parameters = d_in * h + h * d_out + (0 if hand_written else h + d_out)  # the biases
    elements = n * d_in + n * d_out  # x and y
    elements += per_parameter * parameters
    elements += per_hidden * n * h + per_output * n * d_out
    mask_bytes = _MASK_BYTES * n * h
    if variant == "dynamic":
        middle = getattr(hp, "max_middle_layers", 3)
        elements += _DYNAMIC_MIDDLE_PARAMETER_ARRAYS * (h * h + h)
        elements += 2 * middle * n * h
        mask_bytes += _MASK_BYTES * middle * n * h
    # on a GPU the loss buffer holds 8 bytes a step (and as much again in pinned host memory)
    losses = 8 * hp.steps
    return elements * _ITEMSIZE[hp.dtype] + mask_bytes + _DRAW_BYTES + losses


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
