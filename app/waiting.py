"""Why a queued job waits: its place in its device's queue, the workers and what they run, and
a rough estimate of when it starts, from what the service knows when it is asked."""

from __future__ import annotations

from collections.abc import Sequence

from app.store import JobRow
from trainwire.jobs import JobSpec
from trainwire.models import Waiting


def _same_device(device: str, other: str | None) -> bool:
    """Whether a job asking for `device` and a worker (or job) on `other` compete."""
    if other is None:
        return False
    if device == "cuda":
        return other.startswith("cuda")
    return other == device or (device.startswith("cuda") and other == "cuda")


def explain(
    job_id: str,
    queued: Sequence[JobSpec],
    workers: Sequence[tuple[str, str]],
    running: Sequence[JobRow],
    seconds_per_step: float | None,
    cores: int,
) -> Waiting | None:
    """Why `job_id` waits (None when it is not in the queue: it is being started, or ended).
    `queued`: the backend's queue, first to start first; `workers`: (device, state) of each;
    `running`: the running jobs' rows; `seconds_per_step`: the mean of finished jobs, if any."""
    position = next((i for i, spec in enumerate(queued) if spec.job_id == job_id), None)
    if position is None:
        return None
    device = queued[position].device
    ahead = [s for s in queued[:position] if _same_device(device, s.device)]
    mine = [state for dev, state in workers if _same_device(device, dev)]
    busy = [r for r in running if _same_device(device, r.assigned_device)]
    idle = sum(1 for state in mine if state == "idle")
    if ahead:
        reason = "queue"
        message = f"{len(ahead)} queued job{'s' * (len(ahead) != 1)} start before it on {device}"
    elif idle == 0 and mine:
        reason = "workers"
        message = f"every worker for {device} is busy ({len(busy)} running of {len(mine)})"
    elif idle and device == "cpu":
        reason = "cores"
        holders = f"{len(busy)} running job{'s' * (len(busy) != 1)} hold{'s' * (len(busy) == 1)}"
        message = f"waiting for free cores: {holders} the {cores} cores of this host"
    elif idle:
        reason = "memory"
        message = f"waiting for free memory on {device}"
    else:
        reason = "starting"
        message = f"a worker for {device} is starting"
    estimate = None
    if seconds_per_step is not None:
        steps = sum(s.hyperparameters.steps for s in ahead) + sum(
            max(0, r.steps - r.step) for r in busy
        )
        estimate = round(steps * seconds_per_step / max(1, len(mine)), 3)
    return Waiting(
        reason=reason,
        ahead=len(ahead),
        running=len(busy),
        workers=len(mine),
        estimated_start_seconds=estimate,
        message=message,
    )
