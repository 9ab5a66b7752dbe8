"""Idempotency-Key on POST /v1/jobs and POST /v1/sweeps: a retry with the same key and body
finds what the first request made, and nothing else is created."""

from __future__ import annotations

import concurrent.futures
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from jobclient import body
from servers import Server, wait_final

JOB = {"variant": "numpy", "hyperparameters": {"steps": 3}}
SWEEP = {"variant": "numpy", "hyperparameters": {"steps": 3}, "grid": {"seed": [1, 2]}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("idempotency"), {"TRAINWIRE_CPU_WORKERS": "1"})
    yield server.start()
    if server.process is not None and server.process.poll() is None:
        server.stop(signal.SIGKILL)


def post(client: httpx.Client, path: str, payload: dict[str, Any], key: str) -> httpx.Response:
    return client.post(path, json=payload, headers={"Idempotency-Key": key})


def listed(client: httpx.Client, path: str) -> list[str]:
    return [item["id"] for item in body(client.get(path, params={"limit": 100}))["items"]]


@pytest.mark.parametrize(("path", "payload"), [("/v1/jobs", JOB), ("/v1/sweeps", SWEEP)])
def test_the_same_key_and_body_answer_the_first_request(
    server: Server, path: str, payload: dict[str, Any]
) -> None:
    with server.client() as client:
        before = listed(client, "/v1/jobs")
        first = post(client, path, payload, f"same-{path}")
        assert first.status_code == 201, first.text
        assert "idempotent-replayed" not in first.headers
        made = body(first)
        # the same request again, written otherwise (a field given at its default value)
        again = post(client, path, {**payload, "device": "auto"}, f"same-{path}")
        assert again.status_code == 201, again.text
        assert again.headers["idempotent-replayed"] == "true"
        assert again.headers["location"] == first.headers["location"]
        assert body(again)["id"] == made["id"]
        assert body(again)["seed"] == made["seed"]  # the seed drawn for the first, not another
        runs = 1 if path == "/v1/jobs" else 2
        assert len(listed(client, "/v1/jobs")) == len(before) + runs
        # another key is another request
        other = post(client, path, payload, f"other-{path}")
        assert other.status_code == 201 and body(other)["id"] != made["id"]


@pytest.mark.parametrize(("path", "payload"), [("/v1/jobs", JOB), ("/v1/sweeps", SWEEP)])
def test_the_same_key_with_another_body_is_a_422_naming_it(
    server: Server, path: str, payload: dict[str, Any]
) -> None:
    with server.client() as client:
        assert post(client, path, payload, f"reused-{path}").status_code == 201
        changed = {**payload, "hyperparameters": {"steps": 4}}
        before = listed(client, "/v1/jobs")
        reused = post(client, path, changed, f"reused-{path}")
        assert reused.status_code == 422, reused.text
        error = body(reused)["detail"][0]
        assert error["loc"] == ["header", "Idempotency-Key"]
        assert error["type"] == "idempotency_key_reused"
        assert listed(client, "/v1/jobs") == before


@pytest.mark.parametrize("key", [b"", b"x" * 256, b"has space", "é".encode()])
def test_a_bad_key_is_a_422_naming_the_header(server: Server, key: bytes) -> None:
    with server.client() as client:
        before = listed(client, "/v1/jobs")
        response = client.post("/v1/jobs", json=JOB, headers={"Idempotency-Key": key})
        assert response.status_code == 422, response.text
        assert ["header", "Idempotency-Key"] in [e["loc"] for e in body(response)["detail"]]
        assert listed(client, "/v1/jobs") == before


def test_concurrent_requests_with_one_key_make_one_job(server: Server) -> None:
    with server.client() as client:
        before = listed(client, "/v1/jobs")

        def send(_: int) -> httpx.Response:
            with server.client() as own:
                return post(own, "/v1/jobs", JOB, "all-at-once")

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(send, range(8)))
        assert [a.status_code for a in answers] == [201] * 8
        assert len({body(a)["id"] for a in answers}) == 1
        assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 7
        assert len(listed(client, "/v1/jobs")) == len(before) + 1


def test_keys_outlive_a_restart_and_a_deleted_job_is_a_409(server: Server) -> None:
    with server.client() as client:
        made = body(post(client, "/v1/jobs", JOB, "kept"))
        doomed = body(post(client, "/v1/jobs", JOB, "doomed"))
        assert wait_final(client, doomed["id"])["status"] == "succeeded"
        assert client.delete(f"/v1/jobs/{doomed['id']}").status_code == 204
    server.stop(signal.SIGKILL)
    server.start()
    with server.client() as client:
        again = post(client, "/v1/jobs", JOB, "kept")
        assert again.status_code == 201 and body(again)["id"] == made["id"]
        gone = post(client, "/v1/jobs", JOB, "doomed")
        assert gone.status_code == 409, gone.text
        assert doomed["id"] in body(gone)["detail"]
