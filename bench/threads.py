"""How to size the CPU pool: one long job and many small ones, for several worker/thread splits.

Runs the worker pool directly (no HTTP) so that only the split of the cores is measured, with
the server's default of one child process per worker; the clock starts once every worker's
process is up.
Reproduce: `.venv/bin/python -m bench.threads`
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

from trainwire.jobs import JobSpec
from workers.backend import wait_finished
from workers.hyperparameters import Limits, parse_hyperparameters
from workers.pool import LocalBackend
from workers.variants import VARIANTS

NO_LIMITS = Limits(max_steps=10**9, max_job_bytes=1 << 62)


def spec(variant: str, seed: int, **hp: object) -> JobSpec:
    model = VARIANTS[variant].hyperparameters
    return JobSpec(variant, parse_hyperparameters(model, dict(hp), variant, NO_LIMITS), seed)


def run_batch(cpu_workers: int, threads: int, specs: list[JobSpec]) -> float:
    """Seconds for the pool to finish every spec."""
    pool = LocalBackend(
        cpu_workers=cpu_workers, jobs_per_gpu=0, cpu_threads=threads, gpus=[], processes=True
    )
    pool.start()
    if not pool.wait_ready(300):
        raise RuntimeError("the worker processes did not start within 300 s")
    began = time.perf_counter()
    for i, s in enumerate(specs):
        pool.submit(replace(s, job_id=f"job{i}"))
    wait_finished(pool, len(specs))
    elapsed = time.perf_counter() - began
    pool.stop()
    return elapsed


def main() -> None:
    cores = os.cpu_count() or 1
    long_job = [spec("tensors", 0, batch_size=512, d_in=4096, hidden=1024, steps=60)]
    small = list(VARIANTS)
    small_jobs = [spec(small[i % 8], i) for i in range(80)]
    run_batch(1, 1, small_jobs[:8])  # warm up lazy imports
    splits = [(1, cores), (cores, 1), (cores, cores), (2 * cores, 1)]
    print(f"cores: {cores}")
    print(f"{'workers':>8} {'threads':>8} {'long job s':>11} {'80 small jobs/s':>16}")
    for workers, threads in splits:
        long_s = run_batch(workers, threads, long_job)
        small_s = run_batch(workers, threads, small_jobs)
        print(f"{workers:>8} {threads:>8} {long_s:>11.2f} {len(small_jobs) / small_s:>16.1f}")
    print("reproduce: .venv/bin/python -m bench.threads")


if __name__ == "__main__":
    main()
