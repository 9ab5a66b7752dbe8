"""Before a group runs fused: how its products are computed, and what that says of its runs.

A fused run's curve is always reproducible as what it is (the same group on the same kind of
machine computes the same bits). Whether it also equals the same job alone depends on the
kernels, and the service states which holds for every run (`environment.fused_exact`):

- `by_construction`: per-run kernels (workers.fused.batch.KERNELS): each run's products are the
  calls it makes alone, and the rest of a step is elementwise or within one run's slice. The
  default on the CPU, where a batched product may round otherwise than a single one (MKL's
  SGEMM_BATCH and SGEMM do on AMD EPYC, not on the Intel hosts measured).
- `checked`: batched kernels whose group was compared with its runs alone before fusing: the
  first `CHECK_STEPS` steps of the group itself and of `CHECK_DRAWS` more groups of the same
  shapes drawn from other seeds, every loss bit for bit. A check samples; it cannot prove the
  steps it did not run. The default on a GPU, where per-run products would give up the speed.
  A group the check refuses trains as plain jobs.
- `unchecked`: batched kernels, not compared (the sweep asked for speed: `exact: false`):
  reproducible as a group, within rounding of the jobs alone at each step, not equal to them.
"""

from __future__ import annotations

import math
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from trainwire.jobs import JobSpec
from workers.fused import FUSED
from workers.fused.batch import one_thread, run_fused
from workers.runner import run_job

CHECK_STEPS = 25
CHECK_DRAWS = 2

# the kernels an exact group uses on each device kind (tests set "cpu" to "batched" to
# exercise the check on a host without a GPU)
EXACT_KERNELS = {"cpu": "per_run", "cuda": "batched"}

# (group) -> None (equal) or why not; shared by the worker threads of one process
_verdicts: dict[tuple[object, ...], str | None] = {}
_verdicts_lock = threading.Lock()


@dataclass(frozen=True)
class FusionPlan:
    """How a group trains fused, and what its runs may claim."""

    kernels: str  # "per_run" or "batched" (workers.fused.batch.KERNELS)
    exact: str  # "by_construction", "checked" or "unchecked"
    reason: str  # one line, for the runs' environment

    def environment(self) -> dict[str, str]:
        """What each run's `environment` records of it."""
        return {"fused_kernels": self.kernels, "fused_exact": self.exact, "fused_note": self.reason}


def fusion_plan(specs: list[JobSpec], exact: bool = True) -> FusionPlan | str:
    """How this group may run fused here, or why it may not (one line). `exact`: its runs must
    equal the runs alone (else batched kernels, unchecked)."""
    first = specs[0]
    if first.variant not in FUSED:
        return f"{first.variant} has no fused program"
    if not exact:
        return FusionPlan(
            "batched", "unchecked", "batched products, not compared with the runs alone"
        )
    kernels = EXACT_KERNELS.get(torch.device(first.device).type, "batched")
    if kernels == "per_run":
        return FusionPlan(
            "per_run", "by_construction", "each run's products are its own calls, as alone"
        )
    key = _group_key(specs)
    with _verdicts_lock:
        known = key in _verdicts
        verdict = _verdicts.get(key)
    if not known:
        verdict = compare_fused_to_alone(specs, CHECK_STEPS, kernels, CHECK_DRAWS)
        with _verdicts_lock:
            _verdicts[key] = verdict
    if verdict is not None:
        return verdict
    return FusionPlan(
        kernels,
        "checked",
        f"batched products equal to the runs alone in {CHECK_STEPS} steps of "
        f"{1 + CHECK_DRAWS} draws",
    )


def _group_key(specs: list[JobSpec]) -> tuple[object, ...]:
    """What a verdict holds for: this very group (its runs' hyperparameters and seeds) on this
    device kind and these library versions."""
    return (
        tuple(
            (s.variant, s.seed, tuple(sorted(s.hyperparameters.model_dump().items())))
            for s in specs
        ),
        torch.device(specs[0].device).type,
        torch.__version__,
        np.__version__,
    )


def compare_fused_to_alone(
    specs: list[JobSpec], steps: int, kernels: str = "batched", draws: int = 0
) -> str | None:
    """Run the group's first `steps` steps fused (with `kernels`) and each run alone (on one
    thread on the CPU, as a fused group runs), and as many again for `draws` groups of other
    seeds; None when every loss is the same, else the first difference."""
    for draw in range(draws + 1):
        group = [
            replace(
                spec,
                seed=spec.seed if draw == 0 else (spec.seed * 2654435761 + draw) % 2**32,
                hyperparameters=spec.hyperparameters.model_copy(
                    update={"steps": min(steps, spec.hyperparameters.steps)}
                ),
                job_id=str(i),
            )
            for i, spec in enumerate(specs)
        ]
        why = _first_difference(group, kernels)
        if why is not None:
            return why if draw == 0 else f"{why}, seeds drawn for the check"
    return None


def _first_difference(short: list[JobSpec], kernels: str) -> str | None:
    fused: list[list[float]] = [[] for _ in short]
    run_fused(
        short,
        FUSED[short[0].variant],
        [_collector(fused[r]) for r in range(len(short))],
        lambda finished: None,
        kernels=kernels,
    )
    device = torch.device(short[0].device)
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
    """Take `verdict` for this group without checking (a benchmark that measures the fused
    computation whatever the check would say)."""
    with _verdicts_lock:
        _verdicts[_group_key(specs)] = verdict


def forget_verdicts() -> None:
    """Drop every verdict (for tests)."""
    with _verdicts_lock:
        _verdicts.clear()
