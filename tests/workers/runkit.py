"""What the engine's tests share: a sink that checks each batch continues the last, a run's result,
and job specs validated as a request's are."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trainwire.jobs import Finished, JobSpec
from workers.hyperparameters import Limits, parse_hyperparameters
from workers.variants import VARIANTS

# What the tests may ask for: a million steps, and tensors of any size (the out-of-memory tests)
NO_LIMITS = Limits(max_steps=1_000_000, max_job_bytes=1 << 62)


@dataclass
class Collected:
    """What a sink received: every loss in order, and the (first_step, count) of each call."""

    losses: list[float] = field(default_factory=list)
    batches: list[tuple[int, int]] = field(default_factory=list)

    def __call__(self, first_step: int, losses: list[float]) -> None:
        # each batch continues where the last one ended
        assert first_step == len(self.losses), (first_step, len(self.losses))
        assert losses, "an empty batch"
        self.batches.append((first_step, len(losses)))
        self.losses.extend(losses)


@dataclass
class Trained:
    outcome: Finished
    losses: list[float]
    batches: list[tuple[int, int]]


def make_spec(variant: str, seed: int = 0, device: str = "cpu", **hp: Any) -> JobSpec:
    """A JobSpec whose hyperparameters went through the same validation as a request's."""
    model = VARIANTS[variant].hyperparameters
    return JobSpec(variant, parse_hyperparameters(model, hp, variant, NO_LIMITS), seed, device)
