"""torch.cuda's sync debug mode over the step loop of every job, not over its set-up.

A job's set-up copies its problem to the device (pageable host-to-device copies: synchronising,
and expected); its step loop must not synchronise at all (workers.recorder). `step_loop_sync_debug`
turns the mode on after each CUDA job's first step (first uses set up lazily) and off when the
loop ends, so that "error" raises in the job at the first host sync a step makes. For the GPU
tests and `make gpu-check`; the mode is process-wide, so run one job at a time under it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from workers.runner import Run


@contextlib.contextmanager
def step_loop_sync_debug(
    mode: str | int = "error", set_mode: Callable[[str | int], None] | None = None
) -> Iterator[list[int]]:
    """While inside, each CUDA job's steps after its first run under `mode`; yields a list that
    gets each counted job's number of steps so counted (`set_mode`: a seam for tests on the CPU,
    where every device is counted)."""
    setter = set_mode or torch.cuda.set_sync_debug_mode
    counted: list[int] = []
    original = Run.steps

    def steps(self: Run) -> Iterator[int]:
        on = False
        n = 0
        try:
            for t in original(self):
                if not on and t > self.start and (set_mode or self.device.type == "cuda"):
                    setter(mode)
                    on = True
                n += on
                yield t
        finally:
            if on:
                setter(0)
                counted.append(n)

    Run.steps = steps  # type: ignore[method-assign]
    try:
        yield counted
    finally:
        Run.steps = original  # type: ignore[method-assign]
