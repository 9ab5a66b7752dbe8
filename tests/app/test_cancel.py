"""Cancelling and deleting jobs, on a server with a single CPU worker (so jobs really queue)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from jobclient import all_losses, body, read_events
from servers import Server, submit, wait_final, wait_for

TINY = {"batch_size": 8, "d_in": 20, "hidden": 10, "d_out": 2}
ENDLESS = {**TINY, "steps": 1_000_000}  # minutes of work: it ends only when cancelled


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("one-worker"), {"TRAINWIRE_CPU_WORKERS": "1"})
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.stop(signal.SIGKILL)


@pytest.fixture
def client(one_worker: Server) -> Iterator[httpx.Client]:
    with one_worker.client() as c:
        yield c


@pytest.fixture
def busy_worker(client: httpx.Client) -> Iterator[dict[str, Any]]:
    """The only worker, running an endless job; cancelled at the end whatever happens."""
    job = submit(client, "tensors", hp=ENDLESS)
    wait_for(lambda: _running_past(client, job["id"], 0), timeout=60)
    yield job
    client.post(f"/v1/jobs/{job['id']}/cancel")
    wait_final(client, job["id"])


def _running_past(client: httpx.Client, job_id: str, step: int) -> bool:
    job = body(client.get(f"/v1/jobs/{job_id}"))
    assert job["status"] in {"queued", "running"}, job
    return bool(job["status"] == "running" and job["step"] > step)


def test_a_queued_job_is_cancelled_at_once_and_never_runs(
    client: httpx.Client, busy_worker: dict[str, Any]
) -> None:
    queued = submit(client, "numpy", hp={"steps": 5})
    assert queued["status"] == "queued"

    response = client.post(f"/v1/jobs/{queued['id']}/cancel")

    assert response.status_code == 202
    cancelled = body(response)
    assert cancelled["id"] == queued["id"]
    assert cancelled["status"] == "cancelled"
    assert cancelled["step"] == 0 and cancelled["started_at"] is None
    assert cancelled["finished_at"] is not None
    assert body(client.get(f"/v1/jobs/{queued['id']}")) == cancelled
    assert client.post(f"/v1/jobs/{queued['id']}/cancel").status_code == 409

    # free the worker and let a later job run: the queue has moved past the cancelled one
    assert client.post(f"/v1/jobs/{busy_worker['id']}/cancel").status_code == 202
    later = submit(client, "numpy", hp={"steps": 5})
    assert wait_final(client, later["id"])["status"] == "succeeded"
    assert body(client.get(f"/v1/jobs/{queued['id']}")) == cancelled  # never ran
    assert all_losses(client, queued["id"]) == ([], [])
    stream = read_events(client, queued["id"])
    assert [e.event for e in stream.events] == ["status", "status"]
    assert stream.statuses[-1]["status"] == "cancelled"


def test_a_running_job_stops_with_contiguous_losses_and_its_stream_ends_cancelled(
    one_worker: Server, client: httpx.Client
) -> None:
    job = submit(client, "tensors", hp=ENDLESS, seed=21)

    def watch() -> Any:
        with one_worker.client() as watcher:
            return read_events(watcher, job["id"])

    with ThreadPoolExecutor(max_workers=1) as pool:
        watching = pool.submit(watch)
        try:
            wait_for(lambda: _running_past(client, job["id"], 300), timeout=60)
            response = client.post(f"/v1/jobs/{job['id']}/cancel")
        finally:
            client.post(f"/v1/jobs/{job['id']}/cancel")  # never leave the worker busy
        stream = watching.result(timeout=60)

    assert response.status_code == 202
    assert body(response)["id"] == job["id"]
    assert body(response)["status"] in {"running", "cancelled"}
    final = wait_final(client, job["id"])
    assert final["status"] == "cancelled"
    assert 300 < final["step"] < final["steps"]
    assert final["finished_at"] is not None
    stored = all_losses(client, job["id"])
    assert stored[0] == list(range(final["step"]))  # contiguous from 0, nothing after the stop
    assert final["last_loss"] == stored[1][-1]
    stream.assert_complete(first_step=0, final_status="cancelled")
    assert (stream.steps, stream.losses) == stored
    assert stream.statuses[-1] == final
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 409


def test_a_finished_job_cannot_be_cancelled(client: httpx.Client) -> None:
    succeeded = wait_final(client, submit(client, "numpy", hp={"steps": 3})["id"])
    diverged = wait_final(
        client, submit(client, "numpy", hp={"steps": 50, "learning_rate": 1.0})["id"]
    )
    assert (succeeded["status"], diverged["status"]) == ("succeeded", "failed")
    for job in (succeeded, diverged):
        response = client.post(f"/v1/jobs/{job['id']}/cancel")
        assert response.status_code == 409
        assert "detail" in body(response)
        assert body(client.get(f"/v1/jobs/{job['id']}")) == job  # unchanged


def test_cancelling_an_unknown_job_is_404(client: httpx.Client) -> None:
    assert client.post("/v1/jobs/0000000000000000/cancel").status_code == 404


def test_delete_removes_a_final_job_and_its_losses(client: httpx.Client) -> None:
    keep = wait_final(client, submit(client, "nn", hp={"steps": 20})["id"])
    gone = wait_final(client, submit(client, "nn", hp={"steps": 20})["id"])
    kept_losses = all_losses(client, keep["id"])

    response = client.delete(f"/v1/jobs/{gone['id']}")

    assert response.status_code == 204
    assert response.content == b""
    assert client.get(f"/v1/jobs/{gone['id']}").status_code == 404
    assert client.get(f"/v1/jobs/{gone['id']}/losses").status_code == 404
    assert client.get(f"/v1/jobs/{gone['id']}/events").status_code == 404
    assert client.delete(f"/v1/jobs/{gone['id']}").status_code == 404
    listed = [j["id"] for j in body(client.get("/v1/jobs", params={"limit": 500}))["items"]]
    assert gone["id"] not in listed and keep["id"] in listed
    assert all_losses(client, keep["id"]) == kept_losses  # the others' losses are untouched


def test_a_queued_or_running_job_cannot_be_deleted(
    client: httpx.Client, busy_worker: dict[str, Any]
) -> None:
    queued = submit(client, "numpy", hp={"steps": 5})
    try:
        for job in (busy_worker, queued):
            response = client.delete(f"/v1/jobs/{job['id']}")
            assert response.status_code == 409
            assert "detail" in body(response)
            assert client.get(f"/v1/jobs/{job['id']}").status_code == 200
        assert body(client.get(f"/v1/jobs/{busy_worker['id']}"))["status"] == "running"
    finally:
        client.post(f"/v1/jobs/{queued['id']}/cancel")
