"""With no TRAINWIRE_CPU_WORKERS, the CPU runs one job per usable core (at most 8) at once."""

from __future__ import annotations

import os
from collections.abc import Callable

from servers import Server, submit, wait_final, wait_for

from app.settings import MAX_AUTO_CPU_WORKERS

LONG = {"batch_size": 64, "d_in": 1000, "hidden": 1000, "steps": 100_000, "learning_rate": 1e-9}


def test_one_cpu_job_per_core_runs_at_once_by_default(
    make_server: Callable[..., Server],
) -> None:
    cores = len(os.sched_getaffinity(0))
    expected = min(cores, MAX_AUTO_CPU_WORKERS)
    server = make_server()
    assert "TRAINWIRE_CPU_WORKERS" not in server.env
    with server.client() as client:
        ids = [submit(client, "tensors", hp=LONG, seed=i)["id"] for i in range(expected + 1)]

        def statuses() -> list[str] | None:
            now = [client.get(f"/v1/jobs/{i}").json()["status"] for i in ids]
            return now if now.count("running") == expected else None

        now = wait_for(statuses, timeout=60)
        assert now == ["running"] * expected + ["queued"], now
        threads = {client.get(f"/v1/jobs/{i}").json()["environment"]["threads"] for i in ids[:-1]}
        assert threads == {max(1, cores // expected)}
        for job_id in ids:
            assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
        for job_id in ids:
            assert wait_final(client, job_id)["status"] == "cancelled"
