"""Fused execution: runs of a sweep that differ only in learning rate and seed, trained as one
batched computation (one module per variant, as in workers.variants), each run's curve the same
as the run's alone, bit for bit where `workers.fused.check` says so."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from workers.fused import (
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
    from workers.fused.batch import FusedRun

FUSED: dict[str, Callable[[FusedRun], None]] = {
    "numpy": numpy_.train,
    "tensors": tensors.train,
    "autograd": autograd.train,
    "custom_function": custom_function.train,
    "nn": nn.train,
    "optim": optim.train,
    "custom_module": custom_module.train,
    "dynamic": dynamic.train,
}
