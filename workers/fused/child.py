"""A fused group in a worker's child process (workers.processes): the pipe's messages, the
child's side, and `ChildWorker.run_group` on the server's side (a mixin of ChildWorker).

To the child: RunGroup. From it: GroupRefused (the group may not fuse here: nothing ran, its
runs go back to the queue as plain jobs), or GroupAccepted, then the runs' LossBatch and Finished
messages as they come, then GroupDone. Each run's cancel is a byte of an array in shared memory,
set by the server and read by the child before every step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from trainwire.jobs import ErrorCode, Finished, JobSpec, LossBatch, RunOutcome

if TYPE_CHECKING:
    from workers.fused.check import FusionPlan


@dataclass(frozen=True)
class RunGroup:
    specs: list[JobSpec]
    timeout_s: float | None
    flush_seconds: float
    exact: bool = True  # the runs must equal the runs alone (workers.fused.check)


@dataclass(frozen=True)
class GroupRefused:
    reason: str


@dataclass(frozen=True)
class GroupAccepted:
    plan: FusionPlan


@dataclass(frozen=True)
class GroupDone:
    pass


class ArrayFlag:
    """Run i's cancel flag: a byte of a shared array, read with a plain load."""

    def __init__(self, array: Any, i: int):
        self._array, self._i = array, i

    def is_set(self) -> bool:
        return bool(self._array[self._i])


def run_group_in_child(conn: Connection, message: RunGroup, run_cancels: Any) -> None:
    """In the child: check that the group may fuse here, then train it."""
    from workers.fused import FUSED
    from workers.fused.batch import run_fused
    from workers.fused.check import fusion_plan

    try:
        plan = fusion_plan(message.specs, message.exact)
    except Exception as exc:  # a check that cannot run is a no
        plan = f"the check failed: {type(exc).__name__}: {exc}"[:500]
    if isinstance(plan, str):
        conn.send(GroupRefused(plan))
        return
    conn.send(GroupAccepted(plan))
    sinks = [
        lambda first, values, job_id=spec.job_id: conn.send(LossBatch(job_id, first, values))
        for spec in message.specs
    ]
    flags = [ArrayFlag(run_cancels, i) for i in range(len(message.specs))]
    run_fused(
        message.specs,
        FUSED[message.specs[0].variant],
        sinks,
        conn.send,
        flags,
        message.timeout_s,
        message.flush_seconds,
        plan.kernels,
        plan.exact != "unchecked",
    )
    conn.send(GroupDone())


class FusedGroupChild:
    """ChildWorker's side of a fused group."""

    _run_cancels: Any  # RawArray("b", MAX_FUSED_RUNS), made with the child

    if TYPE_CHECKING:

        def _ensure(self) -> Connection: ...
        def _reap(self) -> str: ...

    def run_group(
        self,
        specs: list[JobSpec],
        emit: Callable[[LossBatch], None],
        finish: Callable[[Finished], None],
        started: Callable[[FusionPlan], None],
        cancels: Sequence[Any],
        timeout_s: float | None,
        flush_seconds: float,
        exact: bool = True,
    ) -> str | None:
        """Run a fused group in the child: `started(plan)` once it takes the group, each run's
        losses to `emit` and its end to `finish`. Returns why the group may not fuse here
        (nothing ran), or None."""
        conn = self._ensure()
        flags = self._run_cancels
        for i in range(len(specs)):
            flags[i] = 0
        conn.send(RunGroup(specs, timeout_s, flush_seconds, exact))
        delivered: dict[str, int] = {}
        ended: set[str] = set()
        try:
            while True:
                for i, cancel in enumerate(cancels):  # a cancel reaches the child while it trains
                    if not flags[i] and cancel.is_set():
                        flags[i] = 1
                if not conn.poll(0.05):
                    continue
                message = conn.recv()
                if isinstance(message, LossBatch):
                    delivered[message.job_id] = message.end_step
                    emit(message)
                elif isinstance(message, Finished):
                    ended.add(message.job_id)
                    finish(message)
                elif isinstance(message, GroupAccepted):
                    started(message.plan)
                elif isinstance(message, GroupRefused):
                    return message.reason
                else:
                    assert isinstance(message, GroupDone), message
                    return None
        except (EOFError, OSError):
            why = f"the worker process died ({self._reap()})"
            for spec in specs:
                if spec.job_id not in ended:
                    steps = delivered.get(spec.job_id, 0)
                    finish(Finished(spec.job_id, RunOutcome.failed, steps, ErrorCode.internal, why))
            return None
