"""kill -9 in the middle of a run: the next start finishes everything, and the curve is exact.

One worker runs a job that goes on until it is cancelled (the tensors program on a small problem
with the server's most steps, fixed seed) with two more queued behind it when the process is
killed with no chance to clean up. A new server on the same SQLite file must run the interrupted
job again (its stored steps are recomputed bit for bit and not stored twice) past where the kill
left it, with exactly the curve of an uninterrupted run with the same seed and hyperparameters,
and run the queued jobs once it is cancelled.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse
from servers import FINAL, Server, stored_losses, submit, wait_for

CURVE = {"batch_size": 16, "d_in": 64, "hidden": 16, "d_out": 4, "steps": 1_000_000}
SEED = 1234
KILL_AFTER_STEP = 2_000


def cancelled_past(client: httpx.Client, job_id: str, step: int) -> dict[str, Any]:
    """Wait until the job has run past `step`, cancel it, and return it once it is final."""
    wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json()["step"] > step, timeout=90)
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    return dict(wait_for(lambda: _final(client, job_id), timeout=30))


def _final(client: httpx.Client, job_id: str) -> dict[str, Any] | None:
    job = client.get(f"/v1/jobs/{job_id}").json()
    return job if job["status"] in FINAL else None


class Subscriber(threading.Thread):
    """Reads one job's event stream until the server ends it."""

    def __init__(self, url: str, job_id: str):
        super().__init__(daemon=True)
        self.url, self.job_id = url, job_id
        self.events: list[tuple[str, str]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with (
                httpx.Client(base_url=self.url, timeout=60) as client,
                connect_sse(client, "GET", f"/v1/jobs/{self.job_id}/events") as source,
            ):
                self.events.extend((sse.event, sse.data) for sse in source.iter_sse())
        except BaseException as exc:  # reported by the test
            self.error = exc


def test_kill_9_then_restart_runs_the_job_again_to_the_exact_curve_and_the_queue_on(
    make_server: Callable[..., Server],
) -> None:
    first = make_server(TRAINWIRE_CPU_WORKERS="1")
    with first.client() as client:
        long = submit(client, "tensors", hp=CURVE, seed=SEED, device="cpu")["id"]
        queued = [submit(client, "numpy", hp={"steps": 20}, seed=s)["id"] for s in (1, 2)]

        def long_is_well_under_way() -> bool:
            job = client.get(f"/v1/jobs/{long}").json()
            assert job["status"] in ("queued", "running"), job
            return bool(job["step"] >= KILL_AFTER_STEP)

        wait_for(long_is_well_under_way, timeout=60, interval=0.01)
    first.kill()

    left = dict(first.query("SELECT id, status FROM jobs"))
    assert left == {long: "running", queued[0]: "queued", queued[1]: "queued"}
    rows, distinct, low, high = first.stored_steps(long)
    assert rows == distinct and low == 0 and high == rows - 1 and rows >= KILL_AFTER_STEP

    second = make_server(data_dir=first.data_dir, TRAINWIRE_CPU_WORKERS="1")
    subscriber = Subscriber(second.url, long)
    subscriber.start()
    mine = [long, *queued]
    with second.client() as client:
        # the interrupted job runs again first, on the one worker, past the step of the kill
        rerun = cancelled_past(client, long, high + KILL_AFTER_STEP)
        assert rerun["status"] == "cancelled", rerun
        assert rerun["error"] is None
        assert rerun["attempts"] == 2
        n = rerun["step"]

        def all_final() -> bool:
            running = client.get("/v1/jobs", params={"status": "running"}).json()["items"]
            assert len(running) <= 1, "more jobs running than there are workers"
            jobs = [client.get(f"/v1/jobs/{j}").json() for j in mine]
            return all(job["status"] in FINAL for job in jobs)

        wait_for(all_final, timeout=90, interval=0.1)
        others = [client.get(f"/v1/jobs/{j}").json() for j in queued]
        assert [job["status"] for job in others] == ["succeeded", "succeeded"]

        # the same job, never interrupted, as far as the rerun went
        reference = submit(client, "tensors", hp=CURVE, seed=SEED, device="cpu")["id"]
        cancelled_past(client, reference, n)
        steps, losses = stored_losses(client, long)
        reference_steps, reference_losses = stored_losses(client, reference)
        assert steps == reference_steps[:n] == list(range(n))
        assert losses == reference_losses[:n]  # bit for bit: JSON floats round-trip exactly

        # nothing is left running or queued without a worker
        for status in ("running", "queued"):
            assert client.get("/v1/jobs", params={"status": status}).json()["items"] == []

    assert second.stored_steps(long) == (n, n, 0, n - 1)

    subscriber.join(60)
    assert not subscriber.is_alive(), "the stream did not end"
    assert subscriber.error is None, repr(subscriber.error)
    statuses: list[dict[str, Any]] = [json.loads(d) for e, d in subscriber.events if e == "status"]
    assert statuses[-1]["status"] == "cancelled"
    assert len(statuses) >= 2
    seen = [json.loads(d)["step"] for e, d in subscriber.events if e == "loss"]
    assert seen == list(range(n))  # every step once, in order, across the replay and live parts


@pytest.mark.timeout(900)
def test_a_restart_trusts_only_the_steps_the_store_holds_without_a_gap(
    make_server: Callable[..., Server],
) -> None:
    curve = {**CURVE, "steps": 20_000}  # one that ends: the rerun is compared whole
    # small batches: several chunks early in the run, so that one in the middle can go
    first = make_server(TRAINWIRE_CPU_WORKERS="1", TRAINWIRE_FLUSH_SECONDS="0.02")
    with first.client() as client:
        long = submit(client, "tensors", hp=curve, seed=SEED, device="cpu")["id"]
        wait_for(lambda: client.get(f"/v1/jobs/{long}").json()["step"] >= KILL_AFTER_STEP, 60)
        # and a chunk after the one that holds step 500
        later = (
            "SELECT first_step FROM loss_chunks WHERE first_step > 500 "
            "AND job_pk = (SELECT pk FROM jobs WHERE id = :id)"
        )
        wait_for(lambda: bool(first.query(later, id=long)), 60)
    first.kill()
    # a store that lost losses in the middle (and whose job row claims more than it holds)
    first.execute(
        "DELETE FROM loss_chunks WHERE first_step <= 500 AND end_step > 500 "
        "AND job_pk = (SELECT pk FROM jobs WHERE id = :id)",
        id=long,
    )
    rows, _, _, high = first.stored_steps(long)
    assert rows < high + 1  # a gap
    first.execute("UPDATE jobs SET step = step + 1000 WHERE id = :id", id=long)

    second = make_server(data_dir=first.data_dir, TRAINWIRE_CPU_WORKERS="1")
    with second.client() as client:
        rerun = wait_for(
            lambda: (j := client.get(f"/v1/jobs/{long}").json())["status"] in FINAL and j, 300
        )
        assert rerun["status"] == "succeeded" and rerun["step"] == curve["steps"]
        reference = submit(client, "tensors", hp=curve, seed=SEED, device="cpu")["id"]
        wait_for(lambda: client.get(f"/v1/jobs/{reference}").json()["status"] in FINAL, 300)
        steps, losses = stored_losses(client, long)
        assert steps == list(range(curve["steps"]))
        assert losses == stored_losses(client, reference)[1]
