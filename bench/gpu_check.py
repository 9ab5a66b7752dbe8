"""GPU check: the `gpu` tests, then steps/s of each torch variant on one GPU.

For each torch variant, at the tutorial's sizes and at a large size, three ways of running the
same loop (the variant's own `train`):
  (a) item:   `.item()` on every step's loss, as the tutorial prints it (a host sync per step);
  (b) nosync: no per-step sync at all (losses discarded; one sync at the end);
  (c) runner: trainwire's runner, whose recorder copies losses back in batches.
Then the total steps/s of 1, 2, 4 and 8 concurrent jobs on one GPU through the worker pool.
Then sweeps: runs/s of R runs of `nn` and `tensors` (R = 1, 16, 64, 256; learning rates and seeds
differing) as R plain jobs on the pool against one fused group (workers.fused), and whether the
fused runs' first steps equal the runs alone bit for bit on this GPU (if not, the service runs
such a group as plain jobs: the "fused" column then measures what fusing would give).

Needs torch, numpy and pydantic only. Without a GPU it says so and exits 0.
Reproduce: `make gpu-check` (or `python -m bench.gpu_check`; `--cpu` dry-runs it on the CPU).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import torch

from trainwire.jobs import JobSpec
from workers.backend import wait_finished
from workers.fused.check import CHECK_STEPS, compare_fused_to_alone, record_verdict
from workers.hyperparameters import Limits, parse_hyperparameters
from workers.pool import LocalBackend
from workers.runner import Run, run_job
from workers.variants import VARIANTS

NO_LIMITS = Limits(max_steps=10**9, max_job_bytes=1 << 62)
TORCH_VARIANTS = [name for name, v in VARIANTS.items() if "cuda" in v.devices]
SIZES = {
    "tutorial": {},
    "large": {"batch_size": 4096, "hidden": 4096},
}


def spec(variant: str, device: str, steps: int, size: str, seed: int = 0) -> JobSpec:
    hp: dict[str, Any] = {"steps": steps, **SIZES[size]}
    model = VARIANTS[variant].hyperparameters
    if size != "tutorial":
        # the gradients grow with batch x hidden: scale the rate down so the run stays finite
        default = model.model_fields["learning_rate"].default
        hp["learning_rate"] = default * (64 * 100) / (hp["batch_size"] * hp["hidden"])
    return JobSpec(variant, parse_hyperparameters(model, hp, variant, NO_LIMITS), seed, device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class ItemRecorder:
    """The tutorial's way: `loss.item()` every step (waits for the device each time)."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def record(self, t: int, loss: Any) -> None:
        self.losses.append(loss.item())

    def flush(self) -> None:
        pass


class NoSyncRecorder:
    """No per-step sync: the loss is dropped (the upper bound on speed)."""

    def record(self, t: int, loss: Any) -> None:
        pass

    def flush(self) -> None:
        pass


def time_loop(job: JobSpec, mode: str) -> float:
    """Steps per second of one run of `job` in `mode`."""
    sync(job.device)
    began = time.perf_counter()
    if mode == "runner":
        outcome = run_job(job, lambda first, values: None)
        assert outcome.status == "succeeded", outcome
    else:
        recorder = ItemRecorder() if mode == "item" else NoSyncRecorder()
        run = Run(job, recorder, threading.Event(), None)  # type: ignore[arg-type]
        stream = torch.cuda.Stream() if job.device.startswith("cuda") else None
        with torch.cuda.stream(stream) if stream is not None else _null():
            VARIANTS[job.variant].train(run)
    sync(job.device)
    return job.hyperparameters.steps / (time.perf_counter() - began)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def concurrent_steps_per_s(device: str, jobs: int, variant: str, steps: int, size: str) -> float:
    cpu = device == "cpu"
    pool = LocalBackend(
        cpu_workers=jobs if cpu else 0,
        jobs_per_gpu=0 if cpu else jobs,
        cpu_threads=1,
        gpus=[] if cpu else [device],
    )
    pool.start()
    began = time.perf_counter()
    for i in range(jobs):
        pool.submit(replace(spec(variant, device, steps, size, seed=i), job_id=f"job{i}"))
    outcomes, _ = wait_finished(pool, jobs)
    elapsed = time.perf_counter() - began
    pool.stop()
    assert all(o.status == "succeeded" for o in outcomes), outcomes
    return jobs * steps / elapsed


def sweep_specs(variant: str, device: str, runs: int, steps: int) -> list[JobSpec]:
    """R runs of a sweep: rates spread over a decade below the default, seeds 0..R-1."""
    model = VARIANTS[variant].hyperparameters
    default = model.model_fields["learning_rate"].default
    return [
        replace(
            JobSpec(
                variant,
                parse_hyperparameters(
                    model,
                    {"steps": steps, "learning_rate": default * 10 ** (-r / max(1, runs - 1))},
                    variant,
                    NO_LIMITS,
                ),
                r,
                device,
            ),
            job_id=f"run{r}",
        )
        for r in range(runs)
    ]


def sweep_runs_per_s(specs: list[JobSpec], fused: bool) -> float:
    """Runs/s of the specs through one worker of the pool: one fused group, or plain jobs."""
    device = specs[0].device
    cpu = device == "cpu"
    pool = LocalBackend(
        cpu_workers=1 if cpu else 0, jobs_per_gpu=0 if cpu else 1, cpu_threads=1,
        gpus=[] if cpu else [device],
    )  # fmt: skip
    pool.start()
    began = time.perf_counter()
    if fused and len(specs) > 1:
        pool.submit_group(specs)
    else:
        for one in specs:
            pool.submit(one)
    outcomes, started = wait_finished(pool, len(specs))
    elapsed = time.perf_counter() - began
    pool.stop()
    assert all(o.status == "succeeded" for o in outcomes), outcomes
    if fused and len(specs) > 1:
        assert all(s.environment.get("fused_runs") for s in started.values()), "not fused"
    return len(specs) / elapsed


def fused_section(device: str, steps: int, counts: tuple[int, ...]) -> None:
    print(
        "\nsweeps: runs/s of R runs through one worker, plain jobs vs one fused group; "
        f"`same`: the first {CHECK_STEPS} fused steps equal each run alone bit for bit\n"
    )
    print("| variant | runs | steps | plain runs/s | fused runs/s | fused/plain | same |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for variant in ("nn", "tensors"):
        warm = sweep_specs(variant, device, 2, 3)  # first uses set up lazily: not measured
        record_verdict(warm, None)
        sweep_runs_per_s(warm, fused=False)
        sweep_runs_per_s(warm, fused=True)
        for runs in counts:
            specs = sweep_specs(variant, device, runs, steps)
            differs = compare_fused_to_alone(specs, CHECK_STEPS) if runs > 1 else None
            plain = sweep_runs_per_s(specs, fused=False)
            record_verdict(specs, None)  # measure the fused computation whatever the check says
            fused = sweep_runs_per_s(specs, fused=True)
            same = "yes" if differs is None else f"no: {differs}"
            print(
                f"| {variant} | {runs} | {steps} | {plain:,.1f} | {fused:,.1f} | "
                f"{fused / plain:.1f}x | {same} |"
            )
            sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="dry run on the CPU, few steps")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument(
        "--sweeps-only", action="store_true", help="only the fused-vs-plain sweep section"
    )
    args = parser.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        print("gpu-check: no CUDA device on this host; nothing to check.")
        return 0
    device = "cpu" if args.cpu else "cuda:0"
    name = "cpu (dry run)" if args.cpu else torch.cuda.get_device_name(0)
    steps = {"tutorial": 50 if args.cpu else 2000, "large": 3 if args.cpu else 200}

    status = 0
    if args.sweeps_only:
        counts = (1, 4, 16) if args.cpu else (1, 16, 64, 256)
        fused_section(device, 20 if args.cpu else 500, counts)
        return status
    if not args.skip_tests and not args.cpu:
        status = subprocess.call(
            [sys.executable, "-m", "pytest", "--noconftest", "-q", "-m", "gpu", "tests/gpu"],
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )

    print(
        f"\n## GPU check: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"python {platform.python_version()}, {datetime.now(UTC):%Y-%m-%d}\n"
    )
    print(
        "steps/s of one job: (a) `.item()` every step, (b) no per-step sync, (c) trainwire's "
        "runner\n"
    )
    print("| variant | size | steps | (a) item | (b) no sync | (c) runner | (c)/(a) | (c)/(b) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for size in SIZES:
        for variant in TORCH_VARIANTS:
            warm = spec(variant, device, 5, size)
            for mode in ("item", "nosync", "runner"):
                time_loop(warm, mode)
            job = spec(variant, device, steps[size], size)
            rate = {mode: time_loop(job, mode) for mode in ("item", "nosync", "runner")}
            print(
                f"| {variant} | {size} | {steps[size]} | {rate['item']:,.0f} | "
                f"{rate['nosync']:,.0f} | {rate['runner']:,.0f} | "
                f"{rate['runner'] / rate['item']:.2f} | {rate['runner'] / rate['nosync']:.2f} |"
            )
        sys.stdout.flush()

    print(
        "\ntotal steps/s of N concurrent jobs on one device (worker pool, each job its own "
        "stream)\n"
    )
    print("| variant | size | steps/job | 1 | 2 | 4 | 8 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for variant, size in (("tensors", "tutorial"), ("optim", "tutorial"), ("tensors", "large")):
        rates = [
            concurrent_steps_per_s(device, n, variant, steps[size], size) for n in (1, 2, 4, 8)
        ]
        print(
            f"| {variant} | {size} | {steps[size]} | "
            + " | ".join(f"{r:,.0f}" for r in rates)
            + " |"
        )
    fused_section(device, 20 if args.cpu else 500, (1, 4, 16) if args.cpu else (1, 16, 64, 256))
    print("\nreproduce: make gpu-check")
    return status


if __name__ == "__main__":
    sys.exit(main())
