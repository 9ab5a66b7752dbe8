"""Before a group runs fused: do a few fused steps equal the same runs alone, bit for bit?

The fused programs are written so that every run's numbers are the ones it computes alone, but
that rests on kernels choosing the same path for a batched call as for one run's (ATen's bmm
takes another path for small products; a GPU library may pick another kernel for a batch). So
the first group of each kind (variant, sizes and dtype, device kind, library versions, number
of runs) in a process runs its first `CHECK_STEPS` steps both ways; when any loss differs, the
group's runs go back to the queue as plain jobs. Verdicts are kept for the life of the process.
"""

from __future__ import annotations

import math
import struct
import threading
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from trainwire.jobs import JobSpec
from workers.fused import FUSED
from workers.fused.batch import one_thread, run_fused
from workers.runner import run_job

CHECK_STEPS = 5

# (kind of group) -> None (fuses) or why not; shared by the worker threads of one process
_verdicts: dict[tuple[object, ...], str | None] = {}
_verdicts_lock = threading.Lock()


def group_kind(specs: list[JobSpec]) -> tuple[object, ...]:
    """What a verdict holds for: runs that share it compute through the same kernels."""
    first = specs[0]
    shared = first.hyperparameters.model_dump(exclude={"learning_rate", "steps"})
    return (
        first.variant,
        tuple(sorted(shared.items())),
        torch.device(first.device).type,
        torch.__version__,
        np.__version__,
        len(specs),
    )


def fusion_refused(specs: list[JobSpec]) -> str | None:
    """None if this group may run fused here; else why not (one line)."""
    if specs[0].variant not in FUSED:
        return f"{specs[0].variant} has no fused program"
    kind = group_kind(specs)
    with _verdicts_lock:
        if kind in _verdicts:
            return _verdicts[kind]
    verdict = compare_fused_to_alone(specs, CHECK_STEPS)
    with _verdicts_lock:
        _verdicts[kind] = verdict
    return verdict


def compare_fused_to_alone(specs: list[JobSpec], steps: int) -> str | None:
    """Run the group's first `steps` steps fused and each run alone (on one thread on the
    CPU, as a fused group runs); None when every loss is the same, else the first difference."""
    short = [
        replace(
            spec,
            hyperparameters=spec.hyperparameters.model_copy(
                update={"steps": min(steps, spec.hyperparameters.steps)}
            ),
            job_id=str(i),
        )
        for i, spec in enumerate(specs)
    ]
    fused: list[list[float]] = [[] for _ in short]
    run_fused(
        short,
        FUSED[specs[0].variant],
        [_collector(fused[r]) for r in range(len(short))],
        lambda finished: None,
    )
    device = torch.device(specs[0].device)
    for r, spec in enumerate(short):
        alone: list[float] = []
        with one_thread(device):
            run_job(spec, _collector(alone))
        if _bits(alone) != _bits(fused[r]):
            step = next(
                (
                    i
                    for i, (a, b) in enumerate(zip(alone, fused[r], strict=False))
                    if _bits([a]) != _bits([b])
                ),
                min(len(alone), len(fused[r])),
            )
            return (
                f"fused and alone differ at step {step} of run {r} "
                f"({spec.variant}, {spec.hyperparameters.dtype}, {device.type})"
            )
    return None


def _collector(into: list[float]) -> Callable[[int, list[float]], None]:
    def sink(first: int, values: list[float]) -> None:
        into.extend(values)

    return sink


def _bits(values: list[float]) -> list[bytes | str]:
    """Losses compared bit for bit; every NaN alike (its payload is not the curve's)."""
    return [struct.pack("<d", v) if not math.isnan(v) else "nan" for v in values]


def record_verdict(specs: list[JobSpec], verdict: str | None) -> None:
    """Take `verdict` for groups of this kind without checking (a benchmark that measures the
    fused computation whatever the check would say)."""
    with _verdicts_lock:
        _verdicts[group_kind(specs)] = verdict


def forget_verdicts() -> None:
    """Drop every verdict (for tests)."""
    with _verdicts_lock:
        _verdicts.clear()
