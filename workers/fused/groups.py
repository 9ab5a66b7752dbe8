"""Which runs of a sweep can share one batched computation, in groups that fit the memory budget.

Runs fuse when they share everything a computation's shapes and graph depend on: the variant,
the device and every hyperparameter but the learning rate (a per-run scalar of the update). The
seed differs freely: each run's problem is drawn from its own seed and the instances are stacked.
"""

from __future__ import annotations

from trainwire.jobs import JobSpec
from workers.hyperparameters import estimate_job_bytes

# the most runs in one batched computation (the child's cancel flags are sized for it)
MAX_FUSED_RUNS = 256


def fusion_key(spec: JobSpec) -> tuple[object, ...]:
    """What runs must share to fuse."""
    shared = spec.hyperparameters.model_dump(exclude={"learning_rate"})
    return (spec.variant, spec.device, tuple(sorted(shared.items())))


def plan_groups(
    specs: list[JobSpec], max_bytes: int, max_runs: int = MAX_FUSED_RUNS, slots: int = 1
) -> list[list[JobSpec]]:
    """The runs, in groups that may fuse: same fusion key, at most `max_runs`, their tensors
    (runs x one run's estimate) within `max_bytes`, and spread over `slots` workers (a group
    trains in one worker slot: with two slots, two groups of half the runs finish sooner than
    one). Groups of one key follow each other in the order of the key's first run, runs within
    a group in the order given; a group of one runs as a plain job."""
    by_key: dict[tuple[object, ...], list[JobSpec]] = {}
    for spec in specs:
        by_key.setdefault(fusion_key(spec), []).append(spec)
    groups: list[list[JobSpec]] = []
    for same in by_key.values():
        one = estimate_job_bytes(same[0].variant, same[0].hyperparameters)
        spread = -(-len(same) // max(1, slots))  # ceil
        size = max(1, min(max_runs, max_bytes // max(1, one), spread))
        groups += [same[i : i + size] for i in range(0, len(same), size)]
    return groups
