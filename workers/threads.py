"""How many torch/BLAS threads a CPU job runs with: chosen when it starts, fixed for its run.

float32 (and float64) curves of the torch variants change with torch's thread count: a reduction
split over 2 threads adds in another order than over 1. So a curve is a pure function of
(variant, hyperparameters, seed, device kind, threads), a job's count never changes while it
runs, it is recorded in `environment.threads`, and a rerun uses the recorded count again.

The rule (elastic, the default), applied when a CPU worker is about to take the first CPU job of
the queue, with `free` = cores minus the threads of the CPU jobs running:

- a job that names its count (pinned in the request, or recorded by an earlier run) starts once
  that many cores are free (all of them, if it names more than the host has); it waits otherwise;
- any other job starts once a core is free, with `max(1, free // starting)` threads, where
  `starting` = min(idle CPU workers, CPU jobs queued): the jobs that could start right now share
  the free cores evenly. A lone job gets every core; a burst of jobs gets one core each;
- nobody skips the queue: while the first CPU job waits for cores, the ones behind it wait too.

So the threads of the running CPU jobs never add up to more than the cores (two jobs that both
want every core would each run at a fraction of the speed: OpenMP threads wait for each other at
every parallel region), except for one job pinned above the cores. The price: a job that arrives
while a lone job holds every core waits until that job ends. Pin `threads: 1` on a long job to
leave the other cores to later jobs, or set TRAINWIRE_THREADS_PER_CPU_JOB to give every job a
fixed count and never wait (the pool of before: cores // workers each).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any


@dataclass
class CoreBudget:
    """The cores CPU jobs share: how many threads the next one gets, and which are in use.
    Not thread-safe: the pool calls it under its own lock."""

    cores: int
    fixed: int | None = None  # every job gets this many, and never waits (0/None: elastic)
    in_use: int = 0

    def grant(self, asked: int | None, idle_workers: int, queued: int) -> int | None:
        """Threads for the CPU job at the head of the queue, or None: it waits for cores.
        `asked`: the job's own count (pinned or recorded); `idle_workers`: CPU workers without a
        job, this one included; `queued`: CPU jobs in the queue, this one included."""
        if self.fixed:
            return asked or self.fixed
        free = self.cores - self.in_use
        if asked is not None:
            return asked if free >= min(asked, self.cores) else None
        if free <= 0:
            return None
        starting = max(1, min(idle_workers, queued))
        return max(1, free // starting)

    def take(self, threads: int) -> None:
        self.in_use += threads

    def release(self, threads: int) -> None:
        self.in_use -= threads


class ProcessThreads:
    """Sets this process's torch and BLAS thread counts for the next job (a worker's child: one
    job at a time). Only changes what differs from the last job's."""

    def __init__(self) -> None:
        from threadpoolctl import ThreadpoolController

        # inspecting the loaded libraries takes ms: once, after numpy and torch are imported
        self._blas = ThreadpoolController().select(user_api="blas")
        self.current: int | None = None

    def use(self, threads: int) -> None:
        import torch

        if threads == self.current:
            return
        torch.set_num_threads(threads)
        self._blas.limit(limits=threads)
        self.current = threads


def release_idle_threads() -> None:
    """Let the OpenMP threads of this process's last parallel region go now, instead of
    spinning for their next region (libgomp spins ~5 ms after each, on a core of their own).
    Called by a worker's child after a job that ran on several threads: the end of the job
    (its last losses and status, on their way to the watchers) then has every core, and the
    next job's first parallel region starts its threads afresh. A no-op where the OpenMP
    runtime has no `omp_pause_resource_all` (OpenMP 5.0)."""
    pause = _find_omp_pause()
    if pause is not None:
        pause(1)  # omp_pause_soft


@functools.cache
def _find_omp_pause() -> Any:
    """`omp_pause_resource_all` of the OpenMP runtime torch has loaded, or None."""
    import ctypes
    import re

    try:
        with open("/proc/self/maps") as f:
            paths = set(re.findall(r"(/\S*lib[gi]?omp[^/\s]*\.so[^/\s]*)", f.read()))
    except OSError:
        return None
    for path in sorted(paths):
        try:
            function = ctypes.CDLL(path).omp_pause_resource_all
        except (OSError, AttributeError):
            continue
        function.argtypes, function.restype = [ctypes.c_int], ctypes.c_int
        return function
    return None


def recorded_threads(environment: dict[str, Any] | None) -> int | None:
    """The thread count a job's stored environment fixes for its reruns: pinned at submission
    (`{"threads": n}`) or used by a run on the CPU. None: the next run's is chosen when it starts
    (a run on a GPU says nothing about the CPU's)."""
    if not environment:
        return None
    threads = environment.get("threads")
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        return None
    return threads if environment.get("device", "cpu") == "cpu" else None
