"""Hyperparameters of each variant, with the tutorial's defaults: pydantic models only.

Shared by the service (validation, `GET /v1/variants`), the workers (what a run takes) and the
client (the command line's flags), so it imports nothing heavier than pydantic.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Dtype = Literal["float32", "float64"]


class Hyperparameters(BaseModel):
    """What every variant takes: the tutorial's N, D_in, H, D_out, the step count and the rate."""

    # strict: "64" is not a batch size and 64.5 is not an int; extra: a misspelt field is an error
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    batch_size: int = Field(
        64, gt=0, title="Batch size", description="N, the number of examples in the batch."
    )
    d_in: int = Field(1000, gt=0, title="Input size", description="D_in, the input dimension.")
    hidden: int = Field(100, gt=0, title="Hidden size", description="H, the hidden dimension.")
    d_out: int = Field(10, gt=0, title="Output size", description="D_out, the output dimension.")
    steps: int = Field(
        50, gt=0, title="Steps", description="Training steps (the tutorial's `for t in range(50)`)."
    )
    learning_rate: float = Field(
        1e-6,
        gt=0,
        title="Learning rate",
        allow_inf_nan=False,
        description="Step size of the weight update.",
    )
    dtype: Dtype = Field(
        "float32", title="dtype", description="Floating-point type of every tensor."
    )


class HandwrittenHyperparameters(Hyperparameters):
    """numpy, tensors, autograd, custom_function: raw weight matrices, learning rate 1e-6."""


class Float64Hyperparameters(HandwrittenHyperparameters):
    dtype: Dtype = Field(
        "float64", title="dtype", description="Floating-point type of every tensor."
    )


class ModuleHyperparameters(Hyperparameters):
    """nn, optim, custom_module: nn.Linear layers, learning rate 1e-4."""

    learning_rate: float = Field(
        1e-4,
        gt=0,
        title="Learning rate",
        allow_inf_nan=False,
        description="Step size of the weight update.",
    )


class DynamicHyperparameters(ModuleHyperparameters):
    """dynamic: SGD with momentum and a random number of reused middle layers per step."""

    momentum: float = Field(
        0.9, ge=0, title="Momentum", lt=1, allow_inf_nan=False, description="SGD momentum factor."
    )
    max_middle_layers: int = Field(
        3,
        title="Max middle layers",
        ge=0,
        le=16,
        description="Each forward pass reuses the middle layer random.randint(0, this) times.",
    )


# which model each variant takes (the catalogue in workers.variants says the same, with code)
HYPERPARAMETERS: dict[str, type[Hyperparameters]] = {
    "numpy": Float64Hyperparameters,
    "tensors": HandwrittenHyperparameters,
    "autograd": Float64Hyperparameters,
    "custom_function": HandwrittenHyperparameters,
    "nn": ModuleHyperparameters,
    "optim": ModuleHyperparameters,
    "custom_module": ModuleHyperparameters,
    "dynamic": DynamicHyperparameters,
}
