"""A fused group in a worker's queue: the runs, and a cancel flag for each of them."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from trainwire.jobs import JobSpec
from workers.hyperparameters import estimate_job_bytes


class AnyFlag:
    """Set when any of its flags is: a run stops when it is cancelled or its group is."""

    def __init__(self, *flags: threading.Event):
        self._flags = flags

    def is_set(self) -> bool:
        return any(flag.is_set() for flag in self._flags)


@dataclass
class FusedGroup:
    """Runs to train as one batched computation (see workers.fused.groups.plan_groups)."""

    specs: list[JobSpec]
    cancel: threading.Event = field(default_factory=threading.Event)  # every run (a shutdown)
    run_cancels: dict[str, threading.Event] = field(default_factory=dict)
    threads: int | None = None  # granted when a CPU worker takes it (one: see fused.batch)
    exact: bool = True  # its runs must equal the runs alone (see workers.fused.check)

    def __post_init__(self) -> None:
        for spec in self.specs:
            self.run_cancels.setdefault(spec.job_id, threading.Event())

    @property
    def spec(self) -> JobSpec:
        """The first run's spec: its device is every run's."""
        return self.specs[0]

    @property
    def job_id(self) -> str:
        return self.specs[0].job_id

    @property
    def job_ids(self) -> list[str]:
        return [spec.job_id for spec in self.specs]

    @property
    def bytes_needed(self) -> int:
        return sum(estimate_job_bytes(s.variant, s.hyperparameters) for s in self.specs)

    def flags(self) -> list[AnyFlag]:
        """Each run's cancel flag, in the runs' order."""
        return [AnyFlag(self.cancel, self.run_cancels[spec.job_id]) for spec in self.specs]

    def drop(self, job_id: str) -> None:
        """Take a run out before the group starts."""
        self.specs = [spec for spec in self.specs if spec.job_id != job_id]
        self.run_cancels.pop(job_id, None)
