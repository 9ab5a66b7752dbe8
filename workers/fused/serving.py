"""The local backend's side of fused groups (a mixin of workers.pool.LocalBackend): queue a
group, and serve one when a worker takes it.

A worker that takes a group checks that it may fuse on this device (workers.fused.check, in the
worker's child process when it has one), waits for memory for all its runs on a GPU, says that
each run started (its environment says how many runs trained together, and on the CPU that they
trained on one thread), then trains them as one; each run's losses and end are that run's own
messages. A group that may not fuse goes back to the head of the queue as plain jobs.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from trainwire.jobs import ErrorCode, Finished, JobSpec, LossBatch, RunOutcome, Started
from trainwire.jobs import WorkerMessage as Message
from workers.fused import FUSED
from workers.fused.batch import run_fused
from workers.fused.check import FusionPlan, fusion_plan
from workers.fused.group import FusedGroup

if TYPE_CHECKING:
    from workers.processes import ChildWorker

log = logging.getLogger("workers.pool")


class FusedGroupServing:
    """Fused groups in LocalBackend's queue and workers."""

    if TYPE_CHECKING:
        _cond: threading.Condition
        _queue: list[Any]
        _running: dict[str, Any]
        _stopping: bool
        _timeout_s: float | None
        _flush_seconds: float

        def _emit(self, message: Message) -> None: ...
        def _wait_for_memory(
            self, item: Any, device: str, child: ChildWorker | None
        ) -> Finished | None: ...
        def _unfuse(self, group: FusedGroup) -> None: ...

    def fuses(self, variant: str) -> bool:
        return variant in FUSED

    def submit_group(self, specs: list[JobSpec], exact: bool = True) -> None:
        with self._cond:
            self._queue.append(FusedGroup(list(specs), exact=exact))
            self._cond.notify_all()

    def _serve_group(self, group: FusedGroup, device: str, child: ChildWorker | None) -> None:
        """Run a fused group taken by a worker of `device` (see the module's docstring)."""
        from workers.processes import device_facts

        specs = [replace(spec, device=device) for spec in group.specs]
        facts = child.facts if child is not None and child.facts else None
        environment = {**(facts or device_facts(device)), "fused_runs": len(specs)}
        if device == "cpu":
            environment["threads"] = 1  # a fused group trains on one thread (fused.batch)

        def started(plan: FusionPlan) -> None:
            facts = {**environment, **plan.environment()}
            for spec in specs:
                self._emit(Started(spec.job_id, device, facts))

        def finish(finished: Finished) -> None:
            with self._cond:
                if self._stopping and finished.status == RunOutcome.cancelled:
                    finished = replace(finished, status=RunOutcome.interrupted)
            self._emit(finished)
            with self._cond:
                self._running.pop(finished.job_id, None)

        def sink(job_id: str) -> Any:
            return lambda first, values: self._emit(LossBatch(job_id, first, values))

        why: str | None = None
        try:
            refused = self._wait_for_memory(group, device, child) if device != "cpu" else None
            if refused is not None:
                for spec in specs:
                    finish(replace(refused, job_id=spec.job_id))
                return
            if child is not None:
                why = child.run_group(
                    specs, self._emit, finish, started, group.flags(), self._timeout_s,
                    self._flush_seconds, group.exact,
                )  # fmt: skip
            else:
                plan = fusion_plan(specs, group.exact)
                if isinstance(plan, str):
                    why = plan
                else:
                    started(plan)
                    run_fused(
                        specs, FUSED[specs[0].variant], [sink(s.job_id) for s in specs], finish,
                        group.flags(), self._timeout_s, self._flush_seconds, plan.kernels,
                        plan.exact != "unchecked",
                    )  # fmt: skip
        except Exception as exc:  # the worker outlives any one group
            log.exception("fused group of %s failed outside its run", group.job_id)
            text = f"{type(exc).__name__}: {exc}"[:500]
            for job_id in group.job_ids:
                if job_id in self._running:
                    finish(Finished(job_id, RunOutcome.failed, 0, ErrorCode.internal, text))
            return
        if why is not None:
            log.info("runs %s train one by one: %s", ", ".join(group.job_ids), why)
            self._unfuse(group)
