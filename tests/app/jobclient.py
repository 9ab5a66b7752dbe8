"""What a user's client does with a job: read its event stream, page through its losses.

Every body and every event's data is parsed with a strict JSON parser: `NaN` or `Infinity`
(which Python's json module accepts by default) fail the test.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, connect_sse

FINAL = {"succeeded", "failed", "cancelled"}
IDLE_SECONDS = 10.0

JOB_FIELDS = {
    "id",
    "variant",
    "label",
    "hyperparameters",
    "seed",
    "device",
    "assigned_device",
    "status",
    "step",
    "steps",
    "last_loss",
    "created_at",
    "started_at",
    "finished_at",
    "environment",
    "error",
}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259)")


def strict_json(text: str) -> Any:
    """json.loads that refuses NaN, Infinity and -Infinity."""
    return json.loads(text, parse_constant=_reject_constant)


def chunk_events(chunk: bytes, loss_ids: bool = True) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of a chunk of a stream's bytes; comments and retry hints are left
    out. `loss_ids`: each `loss` event's `id:` must be its step (a job's stream; a sweep's has
    none)."""
    events = []
    for block in chunk.decode().split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":")
        )
        if "data" in fields:
            data = strict_json(fields["data"])
            if loss_ids and fields["event"] == "loss":
                assert fields["id"] == str(data["step"])
            events.append((fields["event"], data))
    return events


def body(response: httpx.Response) -> Any:
    """A response's JSON body, strictly parsed."""
    assert response.headers["content-type"].startswith("application/json"), response.headers
    return strict_json(response.text)


@dataclass
class Stream:
    """The events of one SSE connection, in the order they arrived."""

    events: list[ServerSentEvent]

    @property
    def statuses(self) -> list[dict[str, Any]]:
        return [strict_json(e.data) for e in self.events if e.event == "status"]

    @property
    def loss_events(self) -> list[ServerSentEvent]:
        return [e for e in self.events if e.event == "loss"]

    @property
    def steps(self) -> list[int]:
        return [strict_json(e.data)["step"] for e in self.loss_events]

    @property
    def losses(self) -> list[float | None]:
        return [strict_json(e.data)["loss"] for e in self.loss_events]

    def assert_complete(self, first_step: int, final_status: str) -> None:
        """status first, then losses first_step.. in order (id == step), the final status last."""
        kinds = [e.event for e in self.events]
        assert set(kinds) <= {"status", "loss"}, kinds
        assert kinds[0] == "status" and kinds[-1] == "status", kinds[:3] + kinds[-3:]
        final = self.statuses[-1]
        assert final["status"] == final_status, final
        # the first status is the job as it was at connection time (final for a replay); the
        # status changes after it, and only the last one, are final: nothing follows the end
        assert not any(s["status"] in FINAL for s in self.statuses[1:-1]), self.statuses
        for event in self.loss_events:
            data = strict_json(event.data)
            assert set(data) == {"step", "loss"}, data
            assert event.id == str(data["step"]), (event.id, data)
        assert self.steps == list(range(first_step, final["step"])), _gaps(self.steps, first_step)


def _gaps(steps: list[int], first: int) -> str:
    """A short description of what is wrong with a sequence of steps (for assertion messages)."""
    if not steps:
        return "no loss events"
    duplicates = len(steps) - len(set(steps))
    missing = sorted(set(range(first, max(steps) + 1)) - set(steps))
    disorder = sum(1 for a, b in zip(steps, steps[1:], strict=False) if b <= a)
    return (
        f"{len(steps)} steps from {steps[0]} to {steps[-1]}: {duplicates} repeated, "
        f"missing {missing[:10]}, {disorder} out of order"
    )


def read_events(
    client: httpx.Client,
    job_id: str,
    *,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
    on_event: Any = None,
) -> Stream:
    """Every event of the job's stream until the server ends it; fails after `timeout` s.

    Also fails when nothing arrives for IDLE_SECONDS: the jobs read here make a step every few
    milliseconds, so a silent stream (keep-alive comments come every 15 s) is one that is stuck.
    """
    deadline = time.monotonic() + timeout
    events: list[ServerSentEvent] = []
    with connect_sse(
        client,
        "GET",
        f"/v1/jobs/{job_id}/events",
        params=params,
        headers=dict(headers or {}),
        timeout=httpx.Timeout(30.0, read=IDLE_SECONDS),
    ) as source:
        assert source.response.status_code == 200, source.response.read()
        assert source.response.headers["content-type"].startswith("text/event-stream")
        for event in source.iter_sse():
            if event.data:
                strict_json(event.data)
            events.append(event)
            if on_event is not None:
                on_event(event)
            assert time.monotonic() < deadline, f"stream still open after {timeout} s"
    return Stream(events)


def all_losses(
    client: httpx.Client, job_id: str, limit: int = 10_000
) -> tuple[list[int], list[float | None]]:
    """Every stored loss, page by page (after / next_after)."""
    steps: list[int] = []
    losses: list[float | None] = []
    after = -1
    while True:
        response = client.get(f"/v1/jobs/{job_id}/losses", params={"after": after, "limit": limit})
        assert response.status_code == 200, response.text
        page = body(response)
        assert page["job_id"] == job_id
        assert len(page["steps"]) == len(page["losses"]) <= limit
        steps += page["steps"]
        losses += page["losses"]
        if page["next_after"] is None:
            return steps, losses
        assert page["next_after"] == page["steps"][-1], page["next_after"]
        after = page["next_after"]


def parse_csv(text: str) -> tuple[list[int], list[float | None]]:
    """`step,loss` rows; an empty loss is a non-finite one."""
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["step", "loss"], rows[:1]
    steps = [int(r[0]) for r in rows[1:]]
    losses = [float(r[1]) if r[1] else None for r in rows[1:]]
    return steps, losses
