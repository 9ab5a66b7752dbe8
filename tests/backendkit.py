"""A backend's consumer for the engine's tests: every message, in order, per job."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

from trainwire.jobs import Finished, JobSpec, LossBatch, Started
from workers.backend import Backend


class Messages:
    """A backend's consumer for tests: a thread that reads every message, in order, per job.

    `hold(job_id)` makes it stop reading at that job's first loss batch until the returned event
    is set: the backend's bounded queue then fills and its workers wait, as they do behind a
    store that cannot write.
    """

    def __init__(self, backend: Backend):
        self.backend = backend
        self.started: list[str] = []
        self.environment: dict[str, dict[str, Any]] = {}
        self.losses: dict[str, list[float]] = {}
        self.finished: dict[str, Finished] = {}
        self.order: list[str] = []
        self._first_loss: dict[str, threading.Event] = {}
        self._done: dict[str, threading.Event] = {}
        self._hold: dict[str, threading.Event] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _event(self, table: dict[str, threading.Event], job_id: str) -> threading.Event:
        return table.setdefault(job_id, threading.Event())

    def _read(self) -> None:
        while not self._stop.is_set():
            message = self.backend.next_message(0.05)
            if message is None:
                continue
            job_id = message.job_id
            if isinstance(message, Started):
                self.started.append(job_id)
                self.environment[job_id] = message.environment
            elif isinstance(message, LossBatch):
                got = self.losses.setdefault(job_id, [])
                assert message.first_step == len(got), (message.first_step, len(got))
                got.extend(message.values)
                self._event(self._first_loss, job_id).set()
                if job_id in self._hold:
                    self._hold[job_id].wait(WAIT)
            else:
                self.finished[job_id] = message
                self.order.append(job_id)
                self._event(self._done, job_id).set()

    def hold(self, job_id: str) -> threading.Event:
        release = threading.Event()
        self._hold[job_id] = release
        return release

    def wait_done(self, job_id: str) -> Finished:
        assert self._event(self._done, job_id).wait(WAIT), f"{job_id} did not finish"
        return self.finished[job_id]

    def wait_first_loss(self, job_id: str) -> None:
        assert self._event(self._first_loss, job_id).wait(WAIT), f"{job_id} sent no loss"

    def close(self) -> None:
        for release in self._hold.values():
            release.set()  # a test that failed half-way may have left a job held
        self._stop.set()
        self._thread.join(WAIT)


WAIT = 30.0  # seconds; every wait in the engine's tests ends


def submit(backend: Backend, job_id: str, spec: JobSpec) -> None:
    """Queue `spec` under the name `job_id`."""
    backend.submit(replace(spec, job_id=job_id))
