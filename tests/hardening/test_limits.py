"""Server-wide limits: a full queue answers 429 with Retry-After, a job past its time limit fails.

A long job is the tutorial's tensors program on a tiny problem with many steps: each step takes
microseconds, so the job holds its worker for minutes unless it is stopped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

import httpx
from servers import Server, submit, wait_final, wait_for

LONG = {"batch_size": 2, "d_in": 2, "hidden": 2, "d_out": 1, "steps": 1_000_000}
SHORT = {"steps": 5}


def test_full_queue_answers_429_with_retry_after(make_server: Callable[..., Server]) -> None:
    server = make_server(TRAINWIRE_CPU_WORKERS="1", TRAINWIRE_MAX_QUEUED="2")
    with server.client() as client:
        running = submit(client, "tensors", hp=LONG, seed=1, device="cpu")["id"]
        wait_for(lambda: client.get(f"/v1/jobs/{running}").json()["status"] == "running")
        queued = [submit(client, "numpy", hp=SHORT, seed=s)["id"] for s in (2, 3)]

        refused = client.post("/v1/jobs", json={"variant": "numpy", "hyperparameters": SHORT})
        assert refused.status_code == 429, refused.text
        retry_after = refused.headers["Retry-After"]
        assert retry_after.isdigit() and int(retry_after) >= 1, retry_after
        assert "queue" in refused.json()["detail"]
        # a refused job leaves no trace
        assert len(client.get("/v1/jobs").json()["items"]) == 3

        # room again once a queued job goes
        assert client.post(f"/v1/jobs/{queued[0]}/cancel").status_code == 202
        accepted = submit(client, "numpy", hp=SHORT, seed=4)["id"]

        assert client.post(f"/v1/jobs/{running}/cancel").status_code == 202
        assert wait_final(client, running)["status"] == "cancelled"
        for job_id in (queued[1], accepted):
            assert wait_final(client, job_id)["status"] == "succeeded"


def test_job_past_its_time_limit_fails_with_timeout(make_server: Callable[..., Server]) -> None:
    server = make_server(TRAINWIRE_CPU_WORKERS="1", TRAINWIRE_JOB_TIMEOUT_S="1")
    with server.client() as client:
        long = submit(client, "tensors", hp=LONG, seed=1, device="cpu")["id"]
        short = submit(client, "numpy", hp=SHORT, seed=2)["id"]

        job = wait_final(client, long)
        assert job["status"] == "failed"
        assert job["error"]["code"] == "timeout", job["error"]
        assert 0 < job["step"] < LONG["steps"]
        ran = datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])
        assert 1.0 <= ran.total_seconds() < 30, ran
        # what it did before the limit is kept
        page = 100_000
        stored = client.get(f"/v1/jobs/{long}/losses", params={"limit": page}).json()
        assert stored["steps"] == list(range(min(job["step"], page)))

        # the worker goes on to the next job
        assert wait_final(client, short)["status"] == "succeeded"


def test_concurrent_submissions_never_queue_past_the_limit(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(TRAINWIRE_CPU_WORKERS="1", TRAINWIRE_MAX_QUEUED="10")
    with server.client() as client:
        running = submit(client, "tensors", hp=LONG, seed=1, device="cpu")["id"]
        wait_for(lambda: client.get(f"/v1/jobs/{running}").json()["status"] == "running")

    async def flood() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as aclient:
            body = {"variant": "numpy", "hyperparameters": SHORT}
            answers = await asyncio.gather(
                *(aclient.post("/v1/jobs", json=body) for _ in range(200))
            )
        return [a.status_code for a in answers]

    codes = asyncio.run(flood())
    assert sorted(set(codes)) == [201, 429]
    assert codes.count(201) == 10
    with server.client() as client:
        queued = client.get("/v1/jobs", params={"status": "queued", "limit": 500}).json()
        assert len(queued["items"]) == 10
        assert client.post(f"/v1/jobs/{running}/cancel").status_code == 202


def test_retry_after_follows_the_work_queued(make_server: Callable[..., Server]) -> None:
    server = make_server(TRAINWIRE_CPU_WORKERS="1", TRAINWIRE_MAX_QUEUED="3")
    with server.client() as client:
        # a finished job teaches the server how long a step takes here
        done = submit(client, "tensors", hp={**LONG, "steps": 20_000}, seed=9, device="cpu")
        assert wait_final(client, done["id"], timeout=120)["status"] == "succeeded"
        running = submit(client, "tensors", hp=LONG, seed=1, device="cpu")["id"]
        wait_for(lambda: client.get(f"/v1/jobs/{running}").json()["status"] == "running")

        def retry_after() -> int:
            refused = client.post("/v1/jobs", json={"variant": "numpy", "hyperparameters": SHORT})
            assert refused.status_code == 429, refused.text
            return int(refused.headers["Retry-After"])

        short = [
            submit(client, "tensors", hp={**LONG, "steps": 10}, seed=s)["id"] for s in (2, 3, 4)
        ]
        little = retry_after()
        for job_id in short:
            assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
        # a hundred times the work queued: a wait that says so (cancelled jobs count for nothing)
        for s in (5, 6, 7):
            submit(client, "tensors", hp={**LONG, "steps": 1_000_000}, seed=s)
        much = retry_after()
        assert much > little, (little, much)
        for job in client.get("/v1/jobs", params={"status": ["queued", "running"]}).json()["items"]:
            client.post(f"/v1/jobs/{job['id']}/cancel")
