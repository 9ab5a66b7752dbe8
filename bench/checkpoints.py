"""checkpoints: what a checkpoint weighs and costs a lone job.

Per variant at the tutorial's sizes (N=64, D_in=1000, H=100, D_out=10, each variant's default
dtype): the bytes of one checkpoint file and the median time to write it (serialise, fsync,
rename, fsync of the folder) into `--folder` (default: a temporary folder, i.e. the disk that
holds it). Then a lone `tensors` job of `--steps` steps on one thread, with a checkpoint every
`--every` steps (the server's default, TRAINWIRE_CHECKPOINT_EVERY) against checkpoint_every=0
(only the final one), `--pairs` interleaved pairs, the median wall time of each and their ratio.
No server: the runner in this process (workers.runner.run_job), as a worker's child runs it.
Reproduce: `.venv/bin/python -m bench.checkpoints [--steps N] [--every N] [--pairs N]`.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from trainwire.jobs import CheckpointPlan, JobSpec
from workers.hyperparameters import Limits, parse_hyperparameters
from workers.runner import run_job
from workers.variants import VARIANTS

TUTORIAL = {"batch_size": 64, "d_in": 1000, "hidden": 100, "d_out": 10}


def spec(variant: str, steps: int, folder: Path, every: int) -> JobSpec:
    hp = parse_hyperparameters(
        VARIANTS[variant].hyperparameters, {**TUTORIAL, "steps": steps}, variant, Limits()
    )
    plan = CheckpointPlan(str(folder), every)
    return JobSpec(variant, hp, 0, "cpu", job_id=f"bench-{variant}", checkpoint=plan)


def timed(job: JobSpec) -> float:
    start = time.perf_counter()
    run_job(job, lambda first, values: None)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.checkpoints")
    parser.add_argument("--steps", type=int, default=30_000)
    parser.add_argument("--every", type=int, default=10_000)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--writes", type=int, default=20, help="checkpoints timed per variant")
    parser.add_argument("--folder", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        folder = Path(tmp)
        print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}")
        print("| variant | bytes per checkpoint | write (median, ms) |")
        print("|---|---:|---:|")
        for variant in VARIANTS:
            # `writes` steps with a checkpoint after each one: the time is the loop's minus
            # the same loop without checkpoints
            with_each = spec(variant, args.writes, folder / variant, 1)
            bare = replace(with_each, checkpoint=CheckpointPlan(str(folder / "bare"), 0))
            costs = []
            for _ in range(3):
                costs.append((timed(with_each) - timed(bare)) / args.writes)
            size = (folder / variant / f"{args.writes:012d}.safetensors").stat().st_size
            print(f"| {variant} | {size:,} | {statistics.median(costs) * 1e3:.2f} |")
        every = spec("tensors", args.steps, folder / "every", args.every)
        none = replace(every, checkpoint=CheckpointPlan(str(folder / "none"), 0))
        walls: dict[str, list[float]] = {"every": [], "none": []}
        for _ in range(args.pairs):
            walls["every"].append(timed(every))
            walls["none"].append(timed(none))
        a, b = statistics.median(walls["every"]), statistics.median(walls["none"])
        ratios = [x / y for x, y in zip(walls["every"], walls["none"], strict=True)]
        print()
        print(
            f"lone tensors job, {args.steps} steps, 1 thread, {args.pairs} interleaved pairs: "
            f"checkpoint_every={args.every} {a:.3f} s, checkpoint_every=0 {b:.3f} s (medians); "
            f"median of the pairs' ratios {statistics.median(ratios):.4f}, "
            f"fastest of each {min(walls['every']):.3f} s / {min(walls['none']):.3f} s"
        )


if __name__ == "__main__":
    main()
