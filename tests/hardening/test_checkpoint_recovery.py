"""kill -9 in the middle of a run with checkpoints: the next start goes on from the newest
checkpoint whose steps before it are stored, not from step 0, and the curve is exact."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from servers import Server, submit, wait_final, wait_for
from test_store_outage import small_disk

HP = {"batch_size": 16, "d_in": 16, "hidden": 8, "d_out": 4, "steps": 30_000}
EVERY = 2_000


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """A sample of the server's /metrics (0 where it has none yet)."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def test_kill_9_then_restart_goes_on_from_the_last_checkpoint(
    make_server: Callable[..., Server],
) -> None:
    env = {"TRAINWIRE_CPU_WORKERS": "1", "TRAINWIRE_FLUSH_SECONDS": "0.02"}
    first = make_server(**env)
    body = {"hp": HP, "seed": 9, "device": "cpu", "threads": 1, "checkpoint_every": EVERY}
    with first.client() as client:
        job_id = submit(client, "tensors", **body)["id"]
        # queued behind it on the one worker, then paused: it waits for a resume, restarts or not
        waiting = submit(client, "numpy", hp={**HP, "steps": 50}, seed=1)["id"]
        assert client.post(f"/v1/jobs/{waiting}/pause").json()["status"] == "paused"

        def two_checkpoints() -> bool:
            items = client.get(f"/v1/jobs/{job_id}/checkpoints").json()["items"]
            return len(items) >= 2

        wait_for(two_checkpoints, timeout=90, interval=0.01)
    first.kill()

    newest = first.query(
        "SELECT max(step) FROM checkpoints WHERE job_pk = (SELECT pk FROM jobs WHERE id = :id)",
        id=job_id,
    )[0][0]
    stored, _, _, _ = first.stored_steps(job_id)
    assert EVERY <= newest <= stored < HP["steps"], "killed in the middle, after a checkpoint"

    second = make_server(data_dir=first.data_dir, **env)
    with second.client() as client:
        rerun = wait_final(client, job_id, timeout=120)
        assert rerun["status"] == "succeeded" and rerun["attempts"] == 2
        # from the checkpoint: the steps before it were not trained again
        trained = metric(client, "trainwire_steps_total", variant="tensors", device="cpu")
        assert trained == HP["steps"] - newest
        reference = submit(client, "tensors", **{**body, "checkpoint_every": 0})["id"]
        wait_final(client, reference, timeout=120)
        mine = client.get(f"/v1/jobs/{job_id}/losses", params={"limit": 100_000}).json()
        theirs = client.get(f"/v1/jobs/{reference}/losses", params={"limit": 100_000}).json()
        assert mine["steps"] == list(range(HP["steps"]))
        assert mine["losses"] == theirs["losses"]  # bit for bit
        assert client.get(f"/v1/jobs/{waiting}").json()["status"] == "paused"
        assert client.post(f"/v1/jobs/{waiting}/resume").status_code == 202
        assert wait_final(client, waiting)["step"] == 50
    assert second.stored_steps(job_id) == (HP["steps"], HP["steps"], 0, HP["steps"] - 1)


def test_a_full_disk_fails_checkpoints_not_the_job(
    make_server: Callable[..., Server], tmp_path: Path
) -> None:
    # a checkpoint of this model (~70 KB) does not fit a 64 KiB disk; then the disk grows
    with small_disk(tmp_path / "disk") as resize:
        resize(64 << 10)
        server = make_server(
            TRAINWIRE_CPU_WORKERS="1", TRAINWIRE_CHECKPOINT_DIR=str(tmp_path / "disk")
        )
        hp = {"batch_size": 8, "d_in": 64, "hidden": 256, "d_out": 4, "steps": 1_000_000}
        with server.client() as client:
            job_id = submit(client, "nn", hp=hp, seed=1, checkpoint_every=50)["id"]

            def get() -> dict[str, Any]:
                return dict(client.get(f"/v1/jobs/{job_id}").json())

            failing = wait_for(lambda: (j := get())["checkpoint_error"] and j, timeout=90)
            assert failing["status"] == "running"
            assert client.get(f"/v1/jobs/{job_id}/checkpoints").json()["items"] == []
            assert metric(client, "trainwire_checkpoint_failures_total") >= 1
            resize(16 << 20)
            # the next one goes through, and the job's object says so
            wait_for(lambda: get()["checkpoint_error"] is None, timeout=90)
            assert client.get(f"/v1/jobs/{job_id}/checkpoints").json()["items"]
            assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
            done = wait_final(client, job_id)
        assert done["status"] == "cancelled" and done["error"] is None
        stored, distinct, first, last = server.stored_steps(job_id)
        assert stored == distinct == done["step"] and first == 0 and last == stored - 1
        assert "checkpoint of step" in server.log()
