"""The numerics a CUDA curve depends on: set explicitly, and recorded in each job's environment.

A float32 loss curve on a GPU depends on more than "cuda": the card (model, SM count, a MIG
slice), the CUDA, cuBLAS and torch versions, the cuBLAS workspace (CUBLAS_WORKSPACE_CONFIG), and
whether float32 products may round through TF32. trainwire pins float32 products and
convolutions to IEEE float32 (`pin_numerics`, at every job's start: a library that changed the
setting is overruled) and runs the optimizers as a per-parameter loop on both devices
(`FOREACH`: torch's default is the foreach implementation on CUDA and the loop on the CPU);
`numerics_facts` is what a job's `environment` records of all of it.
"""

from __future__ import annotations

import importlib.metadata
import os
from typing import Any

import torch

# torch.optim's implementation, the same on every device (the loop: a fused group's per-run
# views then update as each run alone does)
FOREACH = False
FP32_PRECISION = "ieee"  # float32 matmul and convolutions: no TF32


def pin_numerics() -> None:
    """Float32 products and convolutions in IEEE float32 (the `fp32_precision` settings of
    torch >= 2.9; `set_float32_matmul_precision("highest")` before)."""
    matmul = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    if matmul is None:  # an older torch
        torch.set_float32_matmul_precision("highest")
        torch.backends.cudnn.allow_tf32 = False
        return
    if matmul != FP32_PRECISION:
        torch.backends.cuda.matmul.fp32_precision = FP32_PRECISION
    conv = torch.backends.cudnn.conv  # type: ignore[attr-defined]
    if conv.fp32_precision != FP32_PRECISION:
        conv.fp32_precision = FP32_PRECISION


def _precision(backend: Any) -> str | None:
    return getattr(backend, "fp32_precision", None)


def _package_version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def numerics_facts(device: str) -> dict[str, Any]:
    """What changes a curve on `device` beyond its name: for a job's `environment`."""
    facts: dict[str, Any] = {
        "matmul_fp32_precision": _precision(torch.backends.cuda.matmul),
        "conv_fp32_precision": _precision(getattr(torch.backends.cudnn, "conv", None)),
        "optimizer_foreach": FOREACH,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }
    if not device.startswith("cuda"):
        return facts
    props = torch.cuda.get_device_properties(torch.device(device))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    facts.update(
        gpu_sm_count=props.multi_processor_count,
        gpu_capability=f"{props.major}.{props.minor}",
        gpu_memory=props.total_memory,
        gpu_mig="MIG" in props.name or visible.startswith("MIG-"),
        cudnn=torch.backends.cudnn.version(),
        cublas=_package_version("nvidia-cublas-cu12", "nvidia-cublas-cu13", "nvidia-cublas"),
        cublas_workspace_config=os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    return facts
