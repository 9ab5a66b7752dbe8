"""How a stream's events become the client's: repeats dropped, gaps and bad JSON caught.

A real server never repeats or skips a step, so these feed the client's bookkeeping directly
with the events a faulty server or proxy could send.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from httpx_sse import ServerSentEvent

from trainwire.client import Loss, ProtocolError, Status, _StreamGap, _StreamState, format_detail

JOB: dict[str, Any] = {
    "id": "0123456789abcdef", "variant": "numpy", "label": None, "hyperparameters": {},
    "seed": 1, "device": "auto", "assigned_device": "cpu", "status": "running", "step": 0,
    "steps": 3, "last_loss": None, "created_at": "2026-01-01T00:00:00Z", "started_at": None,
    "finished_at": None, "environment": None, "error": None,
}  # fmt: skip


def loss(step: int, value: float | None = 1.5) -> ServerSentEvent:
    return ServerSentEvent("loss", json.dumps({"step": step, "loss": value}), str(step))


def status(**fields: Any) -> ServerSentEvent:
    return ServerSentEvent("status", json.dumps({**JOB, **fields}))


def test_every_step_once_in_order_and_the_final_status_ends_it() -> None:
    state = _StreamState(after=-1)
    given = [
        state.accept(e)
        for e in [
            status(status="running"),
            loss(0),
            loss(1, None),  # a non-finite loss is null
            ServerSentEvent("", "", None, 1000),  # the shutdown comment's retry hint
            status(status="running", step=2),  # a reconnect opens with the status again
            loss(0),  # and the server (wrongly) repeats steps
            loss(1),
            loss(2),
        ]
    ]
    assert [g for g in given if isinstance(g, Loss)] == [Loss(0, 1.5), Loss(1, None), Loss(2, 1.5)]
    statuses = [g for g in given if isinstance(g, Status)]
    assert [s.job.status.value for s in statuses] == ["running"]  # the repeat is not given out
    assert isinstance(given[0], Status)
    assert state.headers() == {"Last-Event-ID": "2"}
    assert not state.done
    end = state.accept(status(status="succeeded", step=3))
    assert isinstance(end, Status) and state.done


def test_a_finished_jobs_opening_status_is_held_until_its_losses_are_out() -> None:
    state = _StreamState(after=-1)
    assert state.accept(status(status="succeeded", step=2)) is None and not state.done
    assert state.accept(loss(0)) == Loss(0, 1.5)
    assert state.accept(loss(1)) == Loss(1, 1.5)
    assert isinstance(state.accept(status(status="succeeded", step=2)), Status) and state.done


def test_a_gap_is_caught() -> None:
    state = _StreamState(after=4)
    assert state.headers() == {"Last-Event-ID": "4"}
    assert state.accept(loss(5)) == Loss(5, 1.5)
    with pytest.raises(_StreamGap):
        state.accept(loss(7))


@pytest.mark.parametrize(
    "data",
    ['{"step": 0, "loss": NaN}', '{"step": 0, "loss": Infinity}', '{"step": "0", "loss": 1}',
     '{"step": 0}', "[0, 1.5]", "not json"],
)  # fmt: skip
def test_what_is_not_strict_json_or_not_a_loss_is_refused(data: str) -> None:
    with pytest.raises(ProtocolError):
        _StreamState(after=-1).accept(ServerSentEvent("loss", data, "0"))


def test_a_status_that_is_not_a_job_is_refused() -> None:
    with pytest.raises(ProtocolError):
        _StreamState(after=-1).accept(ServerSentEvent("status", '{"id": "x"}'))


def test_validation_errors_read_as_field_and_message() -> None:
    detail = [
        {"loc": ["body", "hyperparameters", "momentum"], "msg": "Extra inputs are not permitted"},
        {"loc": ["query", "limit"], "msg": "too big"},
    ]
    assert format_detail(detail) == (
        "hyperparameters.momentum: Extra inputs are not permitted; limit: too big"
    )
    assert format_detail("no job with id 'x'") == "no job with id 'x'"


def test_each_status_change_is_given_out() -> None:
    """A job put back in the queue by a restart, then run again: running, queued, running."""
    state = _StreamState(after=-1)
    events = [status(status=s) for s in ("running", "running", "queued", "running")]
    given = [state.accept(e) for e in events]
    assert [g.job.status.value if isinstance(g, Status) else None for g in given] == [
        "running", None, "queued", "running",
    ]  # fmt: skip
