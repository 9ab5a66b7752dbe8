"""The eight programs of "Learning PyTorch with Examples", one module each, and their catalogue."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from trainwire.hyperparameters import HYPERPARAMETERS
from trainwire.jobs import VARIANT_NAMES
from workers.hyperparameters import (
    DynamicHyperparameters,
    Float64Hyperparameters,
    HandwrittenHyperparameters,
    Hyperparameters,
    ModuleHyperparameters,
)
from workers.variants import (
    autograd,
    custom_function,
    custom_module,
    dynamic,
    nn,
    numpy_,
    optim,
    tensors,
)

if TYPE_CHECKING:
    from workers.runner import Run


@dataclass(frozen=True)
class Variant:
    name: str
    title: str
    description: str
    devices: tuple[str, ...]
    hyperparameters: type[Hyperparameters]
    train: Callable[[Run], None]


_TORCH = ("cpu", "cuda")

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        Variant(
            "numpy",
            "numpy two-layer network",
            "numpy, hand-written forward and backward",
            ("cpu",),
            Float64Hyperparameters,
            numpy_.train,
        ),
        Variant(
            "tensors",
            "torch tensors, hand-written backward",
            "torch tensors, hand-written backward",
            _TORCH,
            HandwrittenHyperparameters,
            tensors.train,
        ),
        Variant(
            "autograd",
            "autograd",
            "torch autograd, manual SGD update",
            _TORCH,
            Float64Hyperparameters,
            autograd.train,
        ),
        Variant(
            "custom_function",
            "MyReLU",
            "custom torch.autograd.Function ReLU",
            _TORCH,
            HandwrittenHyperparameters,
            custom_function.train,
        ),
        Variant(
            "nn",
            "pytorch: nn",
            "nn.Sequential + MSELoss(sum), manual update",
            _TORCH,
            ModuleHyperparameters,
            nn.train,
        ),
        Variant(
            "optim",
            "pytorch: optim",
            "nn.Sequential + torch.optim.Adam",
            _TORCH,
            ModuleHyperparameters,
            optim.train,
        ),
        Variant(
            "custom_module",
            "custom nn modules",
            "TwoLayerNet(nn.Module) + torch.optim.SGD",
            _TORCH,
            ModuleHyperparameters,
            custom_module.train,
        ),
        Variant(
            "dynamic",
            "dynamic network",
            "DynamicNet, 0-3 reused middle layers, SGD + momentum 0.9",
            _TORCH,
            DynamicHyperparameters,
            dynamic.train,
        ),
    ]
}

# the catalogue and the torch-free names agree (trainwire.jobs and trainwire.hyperparameters)
assert tuple(VARIANTS) == VARIANT_NAMES
assert all(v.hyperparameters is HYPERPARAMETERS[v.name] for v in VARIANTS.values())
