"""How many CPU workers run: one per usable core (at most 8) by default; none on request, and then
no job is left waiting for a CPU worker that never comes."""

from __future__ import annotations

import os
from collections.abc import Callable

from servers import Server, submit, wait_final, wait_for

from app.settings import MAX_AUTO_CPU_WORKERS

# the server's most steps on a mid-size problem: it runs until it is cancelled
ENDLESS = {
    "batch_size": 64,
    "d_in": 1000,
    "hidden": 1000,
    "steps": 1_000_000,
    "learning_rate": 1e-9,
}


def test_one_cpu_job_per_core_runs_at_once_by_default(
    make_server: Callable[..., Server],
) -> None:
    cores = len(os.sched_getaffinity(0))
    expected = min(cores, MAX_AUTO_CPU_WORKERS)
    server = make_server()
    assert "TRAINWIRE_CPU_WORKERS" not in server.env
    with server.client() as client:
        # a lone job takes every core and the next ones wait for them (workers.threads): queue
        # them all behind it, so that they start together when it ends
        blocker = submit(client, "tensors", hp=ENDLESS, seed=99, device="cpu")["id"]
        wait_for(lambda: client.get(f"/v1/jobs/{blocker}").json()["status"] == "running")
        ids = [
            submit(client, "tensors", hp=ENDLESS, seed=i, device="cpu")["id"]
            for i in range(expected + 1)
        ]
        assert client.post(f"/v1/jobs/{blocker}/cancel").status_code == 202

        def statuses() -> list[str] | None:
            now = [client.get(f"/v1/jobs/{i}").json()["status"] for i in ids]
            return now if now.count("running") == expected else None

        now = wait_for(statuses, timeout=60)
        assert now == ["running"] * expected + ["queued"], now
        threads = [client.get(f"/v1/jobs/{i}").json()["environment"]["threads"] for i in ids[:-1]]
        # the cores shared among the jobs that started together, none left idle or oversold
        assert min(threads) >= max(1, cores // expected)
        assert sum(threads) == cores
        for job_id in ids:
            assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
        for job_id in ids:
            assert wait_final(client, job_id)["status"] == "cancelled"


def test_without_cpu_workers_a_cpu_job_is_refused_naming_the_device(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(TRAINWIRE_CPU_WORKERS="0")
    with server.client() as client:
        # numpy runs on the CPU only, so "auto" means the CPU for it on any host; a torch
        # variant's "auto" would take a GPU where the host has one
        for variant, device in [("numpy", "auto"), ("tensors", "cpu"), ("optim", "cpu")]:
            response = client.post("/v1/jobs", json={"variant": variant, "device": device})
            assert response.status_code == 422, response.text
            [error] = response.json()["detail"]
            assert error["loc"] == ["body", "device"], error
            assert "no CPU workers" in error["msg"] or "no GPU" in error["msg"], error
        assert client.get("/v1/jobs").json()["items"] == []


def test_a_queued_job_outlives_a_restart_without_its_workers_and_can_be_cancelled(
    make_server: Callable[..., Server],
) -> None:
    first = make_server(TRAINWIRE_CPU_WORKERS="1")
    with first.client() as client:
        blocker = submit(client, "tensors", hp=ENDLESS, seed=1, device="cpu")
        waiting = submit(client, "numpy", seed=2)
    first.kill()

    second = make_server(data_dir=first.data_dir, TRAINWIRE_CPU_WORKERS="0")
    with second.client() as client:
        assert client.get("/readyz").status_code == 200
        for job in (blocker, waiting):
            assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
            assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
            assert wait_final(client, job["id"])["status"] == "cancelled"
    assert "waits for a cpu worker" in second.log()
