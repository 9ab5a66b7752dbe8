"""fused_exactness: do fused runs equal the jobs alone on this machine, and what does each way cost?

`nn` and `optim` at the tutorial's sizes (N=64, D_in=1000, H=100, D_out=10), 2,000 steps, learning
rates 1e-5, 3e-5, 1e-4, 3e-4 x seeds 0, 1: the 8 runs in two groups of 4 (as a sweep on two CPU
workers splits them), each group fused with per-run kernels (the default: `exact`) and with
batched ones (`exact: false`), against each run alone on one thread (what a fused run claims
to be). Per way: how many runs equal their run alone bit for bit, the first step where one
differs, the largest relative difference of a loss, and the wall time of the 8 runs.
No server: the fused programs and the runner, in this process (workers.fused.batch.run_fused,
workers.runner.run_job). Reproduce: `.venv/bin/python -m bench.fused_exactness [--steps N]`.
"""

from __future__ import annotations

import argparse
import math
import platform
import struct
import time
from dataclasses import replace

import torch

from trainwire.jobs import JobSpec
from workers.fused import FUSED
from workers.fused.batch import one_thread, run_fused
from workers.runner import run_job
from workers.variants import VARIANTS

RATES = [1e-5, 3e-5, 1e-4, 3e-4]
SEEDS = [0, 1]
GROUP = 4


def specs_for(variant: str, steps: int) -> list[JobSpec]:
    model = VARIANTS[variant].hyperparameters
    return [
        JobSpec(
            variant, model(steps=steps, learning_rate=rate), seed, "cpu", job_id=f"{rate}/{seed}"
        )
        for rate in RATES
        for seed in SEEDS
    ]


def collect(into: list[float]):  # type: ignore[no-untyped-def]
    return lambda first, values: into.extend(values)


def alone(specs: list[JobSpec]) -> tuple[list[list[float]], float]:
    curves: list[list[float]] = []
    began = time.perf_counter()
    for spec in specs:
        curve: list[float] = []
        with one_thread(torch.device("cpu")):
            run_job(replace(spec, threads=1), collect(curve))
        curves.append(curve)
    return curves, time.perf_counter() - began


def fused(specs: list[JobSpec], kernels: str) -> tuple[list[list[float]], float]:
    curves: list[list[float]] = [[] for _ in specs]
    began = time.perf_counter()
    for start in range(0, len(specs), GROUP):
        group = specs[start : start + GROUP]
        run_fused(
            group,
            FUSED[group[0].variant],
            [collect(curves[start + r]) for r in range(len(group))],
            lambda finished: None,
            kernels=kernels,
        )
    return curves, time.perf_counter() - began


def compare(got: list[list[float]], expected: list[list[float]]) -> tuple[int, int | None, float]:
    """(runs equal bit for bit, first differing step over the runs, largest relative difference)."""
    equal, first, worst = 0, None, 0.0
    for a, b in zip(got, expected, strict=True):
        steps = [
            t
            for t, (x, y) in enumerate(zip(a, b, strict=True))
            if struct.pack("<d", x) != struct.pack("<d", y)
        ]
        if not steps and len(a) == len(b):
            equal += 1
            continue
        first = steps[0] if first is None else min(first, steps[0])
        for x, y in zip(a, b, strict=True):
            if math.isfinite(x) and math.isfinite(y) and y != 0:
                worst = max(worst, abs(x - y) / abs(y))
    return equal, first, worst


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fused_exactness")
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"capability {torch.backends.cpu.get_cpu_capability()}, {args.steps} steps, "
        f"{len(RATES) * len(SEEDS)} runs in groups of {GROUP}"
    )
    print("| variant | way | runs equal to alone | first differing step | max rel. diff | wall s |")
    print("|---|---|---:|---:|---:|---:|")
    for variant in ("nn", "optim"):
        specs = specs_for(variant, args.steps)
        expected, wall = alone(specs)
        print(f"| {variant} | alone, 1 thread | - | - | - | {wall:.2f} |")
        for kernels in ("per_run", "batched"):
            got, wall = fused(specs, kernels)
            equal, first, worst = compare(got, expected)
            print(
                f"| {variant} | fused, {kernels} | {equal} / {len(specs)} | "
                f"{'-' if first is None else first} | {worst:.3g} | {wall:.2f} |"
            )


if __name__ == "__main__":
    main()
