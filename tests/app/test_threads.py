"""A CPU job's threads through a real server: a lone job gets every core, jobs that start
together share them, a pinned count is honoured, and a rerun after a crash keeps the count its
first run used, so its curve is the same to the bit."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from jobclient import all_losses
from servers import Server, submit, wait_final, wait_for

CORES = len(os.sched_getaffinity(0))
# a job that runs until it is cancelled, at the tutorial's sizes (where torch uses its threads)
LONG = {"steps": 1_000_000, "learning_rate": 1e-9}


def _job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    return dict(client.get(f"/v1/jobs/{job_id}").json())


def _running(client: httpx.Client, job_id: str) -> dict[str, Any]:
    return dict(wait_for(lambda: (j := _job(client, job_id))["status"] == "running" and j, 60))


def _cancel(client: httpx.Client, *job_ids: str) -> None:
    for job_id in job_ids:
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    for job_id in job_ids:
        assert wait_final(client, job_id)["status"] == "cancelled"


def test_a_lone_job_gets_every_core(make_server: Callable[..., Server]) -> None:
    server = make_server()
    with server.client() as client:
        job = submit(client, "tensors", hp={"steps": 200}, seed=1)
        assert job["environment"] is None  # chosen when it starts
        done = wait_final(client, job["id"])
        assert done["status"] == "succeeded"
        assert done["environment"]["threads"] == CORES


@pytest.mark.skipif(CORES < 2, reason="sharing needs two cores")
def test_jobs_that_start_together_share_the_cores(make_server: Callable[..., Server]) -> None:
    server = make_server(TRAINWIRE_CPU_WORKERS="2")
    with server.client() as client:
        blocker = submit(client, "tensors", hp=LONG, seed=1)["id"]
        assert _running(client, blocker)["environment"]["threads"] == CORES
        first = submit(client, "nn", hp=LONG, seed=2)["id"]
        second = submit(client, "optim", hp=LONG, seed=3)["id"]
        # every core is taken: both wait, though a worker is idle
        wait_for(lambda: _job(client, blocker)["step"] > 100, timeout=60)
        assert [_job(client, i)["status"] for i in (first, second)] == ["queued", "queued"]

        _cancel(client, blocker)  # two workers free, two jobs queued: half the cores each
        threads = [_running(client, i)["environment"]["threads"] for i in (first, second)]
        assert threads == [CORES // 2, CORES // 2]
        _cancel(client, first, second)


def test_a_pinned_count_is_honoured_and_recorded(make_server: Callable[..., Server]) -> None:
    server = make_server()
    with server.client() as client:
        job = submit(client, "nn", hp={"steps": 30}, seed=4, threads=1)
        assert job["environment"] == {"threads": 1}
        done = wait_final(client, job["id"])
        assert done["status"] == "succeeded"
        assert done["environment"]["threads"] == 1
        assert done["environment"]["torch"]  # the facts of the run, with the count it used

        for wrong in (0, -1, CORES + 1, "2", 1.5, True):
            response = client.post("/v1/jobs", json={"variant": "nn", "threads": wrong})
            assert response.status_code == 422, (wrong, response.text)
            assert [e["loc"] for e in response.json()["detail"]] == [["body", "threads"]], wrong


@pytest.mark.skipif(CORES < 2, reason="a curve that depends on the count needs two cores")
@pytest.mark.timeout(600)  # three runs on every core: slow on a host that other work keeps busy
def test_a_rerun_after_a_crash_keeps_the_recorded_count_and_the_curve(
    make_server: Callable[..., Server],
) -> None:
    hp = {"steps": 1000}
    first = make_server()
    with first.client() as client:
        job = submit(client, "nn", hp=hp, seed=5)["id"]
        wait_for(lambda: _job(client, job)["step"] > 100, timeout=120)
        assert _job(client, job)["environment"]["threads"] == CORES
    first.kill()

    # this server would give any new job one thread: the rerun must keep the count of its run
    second = make_server(data_dir=first.data_dir, TRAINWIRE_THREADS_PER_CPU_JOB="1")
    with second.client() as client:
        rerun = wait_final(client, job, timeout=300)
        assert rerun["status"] == "succeeded" and rerun["attempts"] == 2
        assert rerun["environment"]["threads"] == CORES
        steps, losses = all_losses(client, job)
        assert steps == list(range(1000))

        again = submit(client, "nn", hp=hp, seed=5, threads=CORES)["id"]
        one = submit(client, "nn", hp=hp, seed=5)["id"]  # one thread on this server
        assert wait_final(client, again, timeout=300)["status"] == "succeeded"
        assert wait_final(client, one, timeout=300)["environment"]["threads"] == 1
        assert all_losses(client, again)[1] == losses  # bit for bit
        assert all_losses(client, one)[1] != losses  # the count matters to this curve
