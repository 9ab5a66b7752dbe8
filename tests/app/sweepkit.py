"""What a user's client does with a sweep: submit it, wait for it, read its event stream.

Bodies and events are parsed strictly (no NaN or Infinity), as in jobclient.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, connect_sse
from jobclient import IDLE_SECONDS, body, strict_json
from servers import wait_for

from app.sweep_stream import Cursor

SWEEP_FINAL = {"succeeded", "failed", "cancelled"}


def submit_sweep(
    client: httpx.Client, variant: str, expect: int = 201, **fields: Any
) -> dict[str, Any]:
    """POST a sweep; hyperparameters go in `hp=...`."""
    payload: dict[str, Any] = {"variant": variant, **fields}
    if "hp" in payload:
        payload["hyperparameters"] = payload.pop("hp")
    response = client.post("/v1/sweeps", json=payload)
    assert response.status_code == expect, response.text
    return dict(strict_json(response.text))


def wait_sweep_final(client: httpx.Client, sweep_id: str, timeout: float = 120.0) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        sweep = body(client.get(f"/v1/sweeps/{sweep_id}"))
        return sweep if sweep["status"] in SWEEP_FINAL else None

    return dict(wait_for(final, timeout, interval=0.05))


@dataclass
class SweepStream:
    """The events of one connection to a sweep's stream, in the order they arrived."""

    events: list[ServerSentEvent]

    @property
    def sweeps(self) -> list[dict[str, Any]]:
        return [strict_json(e.data) for e in self.events if e.event == "sweep"]

    def points(self) -> dict[str, list[tuple[int, float | None]]]:
        """Each run's (step, loss) pairs in the order they came."""
        found: dict[str, list[tuple[int, float | None]]] = {}
        for event in self.events:
            if event.event == "loss":
                data = strict_json(event.data)
                assert set(data) == {"job_id", "step", "loss"}, data
                found.setdefault(data["job_id"], []).append((data["step"], data["loss"]))
        return found

    def assert_complete(self) -> dict[str, Any]:
        """sweep first, every run's steps 0.. once and in order, the final sweep last and
        nothing after it; returns the final sweep."""
        kinds = [e.event for e in self.events]
        assert set(kinds) <= {"sweep", "loss"}, set(kinds)
        assert kinds[0] == "sweep" and kinds[-1] == "sweep", kinds[:2] + kinds[-2:]
        final = self.sweeps[-1]
        assert final["status"] in SWEEP_FINAL, final
        assert not any(s["status"] in SWEEP_FINAL for s in self.sweeps[1:-1]), [
            s["status"] for s in self.sweeps
        ]
        points = self.points()
        # every id is where the stream stands: each run's next step, in the runs' order
        order = [run["id"] for run in self.sweeps[0]["jobs"]]
        at = dict.fromkeys(order, 0)
        ids, last_id = 0, ""
        for event in self.events:
            if event.event == "loss":
                data = strict_json(event.data)
                at[data["job_id"]] = data["step"] + 1
            if event.id != last_id:  # httpx_sse carries an id on to the events without one
                ids, last_id = ids + 1, event.id
                assert Cursor.decode(event.id, len(order)) == [at[r] for r in order], event.id
        assert ids >= 2  # the first sweep, the last one, and one per batch of losses
        for run in final["jobs"]:
            steps = [step for step, _ in points.get(run["id"], [])]
            assert steps == list(range(run["step"])), (run["id"], run["step"], steps[:5])
        assert set(points) <= {run["id"] for run in final["jobs"]}
        return final


def read_sweep_events(
    client: httpx.Client,
    sweep_id: str,
    *,
    params: dict[str, Any] | None = None,
    timeout: float = 120.0,
) -> SweepStream:
    """Every event of the sweep's stream until the server ends it; fails after `timeout` s or
    when nothing arrives for IDLE_SECONDS."""
    deadline = time.monotonic() + timeout
    events: list[ServerSentEvent] = []
    with connect_sse(
        client,
        "GET",
        f"/v1/sweeps/{sweep_id}/events",
        params=params,
        timeout=httpx.Timeout(30.0, read=IDLE_SECONDS),
    ) as source:
        assert source.response.status_code == 200, source.response.read()
        assert source.response.headers["content-type"].startswith("text/event-stream")
        for event in source.iter_sse():
            if event.data:
                strict_json(event.data)
            events.append(event)
            assert time.monotonic() < deadline, f"stream still open after {timeout} s"
    return SweepStream(events)
