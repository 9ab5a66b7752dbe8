"""A run whose loss blows up: it fails as `diverged` at the step where it did, and every view of
it (the job, its list entry, its losses as JSON and CSV, its event stream, live and replayed)
stays strict JSON, with the non-finite loss written as null.

The tutorial's numpy program with a learning rate of 1e-2 instead of 1e-6 overflows within a few
steps: for seed 7 the loss reaches inf at step 4.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse
from servers import Server, submit, wait_final, wait_for

SEED = 7
DIVERGING = {"learning_rate": 1e-2, "steps": 50}
# on a tiny problem, 10**6 steps keep a worker busy for far longer than this module runs
BLOCKER = {"batch_size": 2, "d_in": 2, "hidden": 2, "d_out": 1, "steps": 1_000_000}


def strict_json(text: str) -> Any:
    """json.loads that refuses NaN, Infinity and -Infinity, as RFC 8259 and JSON.parse do."""

    def reject(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=reject)


@dataclass
class Subscriber:
    """Reads one job's event stream in a thread until the server ends it."""

    client: httpx.Client
    job_id: str
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (event, id, data)
    error: BaseException | None = None
    thread: threading.Thread | None = None

    def start(self) -> Subscriber:
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self) -> None:
        try:
            with connect_sse(self.client, "GET", f"/v1/jobs/{self.job_id}/events") as source:
                for sse in source.iter_sse():
                    self.events.append((sse.event, sse.id, sse.data))
        except BaseException as exc:  # reported by the test
            self.error = exc

    def join(self, timeout: float = 60.0) -> list[tuple[str, str, str]]:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the stream did not end"
        assert self.error is None, repr(self.error)
        return self.events


@dataclass
class Diverged:
    job_id: str
    live: list[tuple[str, str, str]]  # the stream of a subscriber that watched it run


@pytest.fixture(scope="module")
def diverged(shared_server: Server) -> Iterator[Diverged]:
    """A diverging job, run while a subscriber watches: every CPU worker is held by a blocker
    until the subscriber is connected, so that every loss reaches it live, not from the store."""
    workers = int(shared_server.env["TRAINWIRE_CPU_WORKERS"])
    with shared_server.client() as client:
        blockers = [
            # one thread each: a blocker alone would take every core, and the next would wait
            submit(client, "tensors", hp=BLOCKER, seed=i, device="cpu", threads=1)["id"]
            for i in range(workers)
        ]
        wait_for(
            lambda: all(client.get(f"/v1/jobs/{b}").json()["status"] == "running" for b in blockers)
        )
        job_id = submit(client, "numpy", hp=DIVERGING, seed=SEED)["id"]
        with shared_server.client() as watcher:
            subscriber = Subscriber(watcher, job_id).start()
            wait_for(lambda: subscriber.events)  # connected: the first status event is in
            assert strict_json(subscriber.events[0][2])["status"] == "queued"
            for b in blockers:
                assert client.post(f"/v1/jobs/{b}/cancel").status_code == 202
            wait_final(client, job_id)
            live = subscriber.join()
        for b in blockers:
            wait_final(client, b)
        yield Diverged(job_id, live)


def test_diverged_job_fails_with_its_step_and_strict_json_everywhere(
    shared_server: Server, diverged: Diverged
) -> None:
    with shared_server.client() as client:
        job = strict_json(client.get(f"/v1/jobs/{diverged.job_id}").text)
        assert job["status"] == "failed"
        assert job["error"]["code"] == "diverged"
        step = job["error"]["step"]
        assert step == 4, job["error"]
        assert job["step"] == step + 1  # the diverged step is recorded, and none after it
        assert job["last_loss"] is None
        assert "learning_rate" in job["error"]["message"]

        listed = strict_json(client.get("/v1/jobs", params={"status": "failed"}).text)
        entry = next(j for j in listed["items"] if j["id"] == diverged.job_id)
        assert entry["error"] == job["error"]

        page = strict_json(client.get(f"/v1/jobs/{diverged.job_id}/losses").text)
        assert page["steps"] == list(range(step + 1))
        assert page["losses"][step] is None
        assert all(isinstance(v, float) for v in page["losses"][:step])

        chart = strict_json(client.get(f"/v1/jobs/{diverged.job_id}/losses?max_points=2").text)
        assert len(chart["steps"]) <= 2

        csv = client.get(f"/v1/jobs/{diverged.job_id}/losses", headers={"Accept": "text/csv"})
        assert csv.headers["content-type"].startswith("text/csv")
        rows = csv.text.splitlines()
        assert rows[0] == "step,loss"
        assert rows[-1] == f"{step},"  # null: an empty field
        for row, loss in zip(rows[1:-1], page["losses"][:-1], strict=True):
            assert float(row.split(",")[1]) == loss
        assert not any(word in csv.text.lower() for word in ("nan", "inf"))


def test_diverged_job_stream_is_strict_json_live_and_replayed(
    shared_server: Server, diverged: Diverged
) -> None:
    with shared_server.client() as client:
        replayed = Subscriber(client, diverged.job_id).start().join()
    for events in (diverged.live, replayed):
        data = [(event, strict_json(payload)) for event, _, payload in events]
        losses = [d for event, d in data if event == "loss"]
        assert [d["step"] for d in losses] == list(range(5))
        assert losses[-1]["loss"] is None
        assert all(isinstance(d["loss"], float) for d in losses[:-1])
        final = data[-1]
        assert final[0] == "status"
        assert final[1]["status"] == "failed"
        assert final[1]["error"]["code"] == "diverged"
        assert final[1]["error"]["step"] == 4
