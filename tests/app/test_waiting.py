"""A queued job says why it waits: jobs ahead of it, every worker busy, or the cores held by
a running job; with a rough estimate of when it starts once jobs have finished."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import httpx
import pytest
from jobclient import body
from servers import Server, submit, wait_final, wait_for

LONG = {"batch_size": 8, "d_in": 20, "hidden": 10, "d_out": 2, "steps": 1_000_000}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    # two workers, whatever the host has
    env = {"TRAINWIRE_CPU_WORKERS": "2"}
    server = Server(tmp_path_factory.mktemp("waiting"), env).start()
    with server.client() as c:
        yield c
    server.stop(signal.SIGKILL)


def running(client: httpx.Client, threads: int) -> str:
    job_id = submit(client, "tensors", hp=LONG, threads=threads)["id"]
    wait_for(lambda: body(client.get(f"/v1/jobs/{job_id}"))["status"] == "running")
    return job_id


def test_a_queued_job_says_why_it_waits(client: httpx.Client) -> None:
    done = submit(client, "numpy", hp={"steps": 20})["id"]
    assert wait_final(client, done)["waiting"] is None
    # one job on every core (the server's are ours: it inherits this process's affinity): the
    # next waits for cores with a worker free, the one after it for the job ahead
    holder = running(client, threads=len(os.sched_getaffinity(0)))
    first = submit(client, "numpy", hp={"steps": 5})["id"]
    second = submit(client, "numpy", hp={"steps": 5})["id"]
    waits = {j: body(client.get(f"/v1/jobs/{j}"))["waiting"] for j in (first, second)}
    assert waits[first]["reason"] == "cores", waits
    assert (waits[first]["ahead"], waits[first]["running"], waits[first]["workers"]) == (0, 1, 2)
    assert "free cores" in waits[first]["message"]
    # a job has finished: the estimate is a number (its value depends on the host's speed)
    estimate = waits[first]["estimated_start_seconds"]
    assert isinstance(estimate, float) and estimate > 0
    assert waits[second]["reason"] == "queue" and waits[second]["ahead"] == 1
    listed = body(client.get("/v1/jobs", params={"status": ["queued", "running"]}))["items"]
    assert {j["id"]: j["waiting"] is not None for j in listed} == {
        second: True, first: True, holder: False
    }  # fmt: skip
    assert client.post(f"/v1/jobs/{holder}/cancel").status_code == 202
    for job_id in (first, second):
        finished = wait_final(client, job_id)
        assert finished["status"] == "succeeded" and finished["waiting"] is None

    # both workers busy, each job on a core of its own: the next waits for a worker
    holders = [running(client, threads=1) for _ in range(2)]
    third = submit(client, "numpy", hp={"steps": 5})["id"]
    waiting = body(client.get(f"/v1/jobs/{third}"))["waiting"]
    assert waiting["reason"] == "workers" and waiting["running"] == 2, waiting
    assert "every worker for cpu is busy" in waiting["message"]
    for job_id in holders:
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    assert wait_final(client, third)["status"] == "succeeded"
