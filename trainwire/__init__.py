"""trainwire: the training runs of 'Learning PyTorch with Examples' over HTTP.

This package is what a user of the service imports: the client (`Client`, `AsyncClient`), the
job vocabulary (`trainwire.jobs`), the API's models (`trainwire.models`) and the hyperparameters
(`trainwire.hyperparameters`). It loads no torch and no server code.

    from trainwire import Client
    with Client() as tw:
        job = tw.wait(tw.submit("optim", steps=500).id)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainwire.client import (
        APIError,
        AsyncClient,
        Client,
        Event,
        Loss,
        ProtocolError,
        RunLoss,
        ServerUnreachable,
        Status,
        SweepUpdate,
        TrainwireError,
    )
    from trainwire.models import Job, JobStatus
    from trainwire.sweeps import Sweep

__all__ = [
    "APIError",
    "AsyncClient",
    "Client",
    "Event",
    "Job",
    "JobStatus",
    "Loss",
    "ProtocolError",
    "RunLoss",
    "ServerUnreachable",
    "Status",
    "Sweep",
    "SweepUpdate",
    "TrainwireError",
]

# the service and its workers import trainwire.jobs and trainwire.hyperparameters: the client
# (and httpx with it) loads only when one of its names is asked for
_HOMES = {name: "trainwire.client" for name in __all__} | {
    "Job": "trainwire.models",
    "JobStatus": "trainwire.models",
    "Sweep": "trainwire.sweeps",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'trainwire' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
