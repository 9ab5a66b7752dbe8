"""Checkpoints through a real server: pause and resume, fork, the weights, and bad requests.

A resumed job's curve is the curve of the job that never stopped, bit for bit; a fork with the
parent's hyperparameters makes the parent's steps after its start, bit for bit; the downloaded
file loads into the tutorial's model with safetensors. Threads are pinned (float32 curves
depend on them), sizes are tiny, and each variant runs about a second.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent
from jobclient import all_losses, body, read_events
from servers import Server, submit, wait_final, wait_for

SIZES = {"batch_size": 16, "d_in": 16, "hidden": 8, "d_out": 4}
# about a second of training each on a busy 2-core host
STEPS = {"numpy": 40_000, "tensors": 12_000, "autograd": 6_000}
DEFAULT_STEPS = 3_000
VARIANTS = [
    "numpy",
    "tensors",
    "autograd",
    "custom_function",
    "nn",
    "optim",
    "custom_module",
    "dynamic",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("checkpoints")
    env = {
        "TRAINWIRE_CPU_WORKERS": "2",
        "TRAINWIRE_FLUSH_SECONDS": "0.01",
        "TRAINWIRE_CHECKPOINTS_KEPT": "3",
    }
    server = Server(data, env).start()
    yield server
    server.kill()


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    return dict(body(client.get(f"/v1/jobs/{job_id}")))


def checkpoints(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    return list(body(client.get(f"/v1/jobs/{job_id}/checkpoints"))["items"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_pause_resume_and_fork_make_the_uninterrupted_curve(
    client: httpx.Client, variant: str
) -> None:
    steps = STEPS.get(variant, DEFAULT_STEPS)
    hp = {**SIZES, "steps": steps}
    every = steps // 4
    common = {"hp": hp, "seed": 11, "device": "cpu", "threads": 1}
    paused_id = submit(client, variant, checkpoint_every=0, **common)["id"]
    whole_id = submit(client, variant, checkpoint_every=every, **common)["id"]

    wait_for(lambda: job(client, paused_id)["step"] >= 20, timeout=60, interval=0.005)
    answer = client.post(f"/v1/jobs/{paused_id}/pause")
    assert answer.status_code == 202, answer.text
    paused = wait_for(lambda: (j := job(client, paused_id))["status"] == "paused" and j, 60)
    at = paused["step"]
    assert 20 <= at < steps, "paused in the middle of the run"
    assert [c["step"] for c in checkpoints(client, paused_id)] == [at]
    assert client.post(f"/v1/jobs/{paused_id}/pause").status_code == 409

    assert client.post(f"/v1/jobs/{paused_id}/resume").status_code == 202
    resumed = wait_final(client, paused_id)
    whole = wait_final(client, whole_id)
    assert resumed["status"] == whole["status"] == "succeeded"
    assert resumed["attempts"] == 2
    steps_seen, losses = all_losses(client, paused_id)
    whole_steps, whole_losses = all_losses(client, whole_id)
    assert steps_seen == whole_steps == list(range(steps))
    assert losses == whole_losses  # bit for bit: JSON floats round-trip exactly
    assert [c["step"] for c in checkpoints(client, paused_id)] == [at, steps]

    # the newest 3 and the final one
    listed = [c["step"] for c in checkpoints(client, whole_id)]
    assert listed == [every, 2 * every, 3 * every, steps]

    # a fork from 3/4 of the way, hyperparameters unchanged: the parent's steps, bit for bit
    start = 3 * every
    fork = submit(client, variant, **{"from": {"job_id": whole_id, "step": start}}, threads=1)
    assert fork["forked_from"] == {"job_id": whole_id, "step": start}
    assert fork["hyperparameters"] == whole["hyperparameters"] and fork["seed"] == 11
    assert wait_final(client, fork["id"])["status"] == "succeeded"
    fork_steps, fork_losses = all_losses(client, fork["id"])
    assert fork_steps == list(range(steps)), "the parent's steps before its start, then its own"
    assert fork_losses == whole_losses


def test_a_fork_with_another_learning_rate_goes_its_own_way(client: httpx.Client) -> None:
    hp = {**SIZES, "steps": 400}
    parent = submit(client, "optim", hp=hp, seed=3, threads=1, checkpoint_every=100)["id"]
    wait_final(client, parent)
    fork = submit(
        client,
        "optim",
        hp={"learning_rate": 1e-2, "steps": 500},
        **{"from": {"job_id": parent, "step": 200}},
    )
    assert fork["hyperparameters"]["learning_rate"] == 1e-2
    assert fork["hyperparameters"]["hidden"] == SIZES["hidden"], "the parent's, where not given"
    assert wait_final(client, fork["id"])["status"] == "succeeded"
    _, mine = all_losses(client, fork["id"])
    _, theirs = all_losses(client, parent)
    assert len(mine) == 500
    assert mine[:201] == theirs[:201], "step 200 is computed from the checkpoint's weights"
    assert mine[201] != theirs[201]


def test_a_downloaded_checkpoint_loads_into_the_tutorials_model(
    client: httpx.Client, tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import load_file

    from workers.problem import Problem

    hp = {**SIZES, "steps": 300, "dtype": "float64"}
    job_id = submit(client, "nn", hp=hp, seed=5, threads=1, checkpoint_every=100)["id"]
    wait_final(client, job_id)
    listed = checkpoints(client, job_id)
    assert [c["step"] for c in listed] == [100, 200, 300]
    answer = client.get(f"/v1/jobs/{job_id}/checkpoints/200")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/octet-stream"
    sha = hashlib.sha256(answer.content).hexdigest()
    assert answer.headers["x-checkpoint-sha256"] == sha == listed[1]["sha256"]
    assert len(answer.content) == listed[1]["bytes"]
    path = tmp_path / "weights.safetensors"
    path.write_bytes(answer.content)

    # the tutorial's model, its weights from the file
    model = torch.nn.Sequential(
        torch.nn.Linear(SIZES["d_in"], SIZES["hidden"]),
        torch.nn.ReLU(),
        torch.nn.Linear(SIZES["hidden"], SIZES["d_out"]),
    ).double()
    model.load_state_dict(load_file(path))
    x, y = Problem(5, 16, 16, 8, 4, "float64").data(torch.device("cpu"))
    loss = torch.nn.functional.mse_loss(model(x), y, reduction="sum").item()
    _, losses = all_losses(client, job_id)
    assert loss == pytest.approx(losses[200], rel=1e-12)

    assert client.get(f"/v1/jobs/{job_id}/checkpoints/150").status_code == 404
    # deleting the job deletes its checkpoints
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert client.get(f"/v1/jobs/{job_id}/checkpoints").status_code == 404


def _error_loc(response: httpx.Response) -> list[Any]:
    assert response.status_code == 422, response.text
    return list(body(response)["detail"][0]["loc"])


def test_bad_forks_and_pauses_are_refused_naming_the_field(client: httpx.Client) -> None:
    parent = submit(client, "nn", hp={**SIZES, "steps": 50}, seed=2, checkpoint_every=0)["id"]
    wait_final(client, parent)

    def fork(step: int = 50, **body: Any) -> httpx.Response:
        payload = {"variant": "nn", "from": {"job_id": parent, "step": step}, **body}
        return client.post("/v1/jobs", json=payload)

    unknown = {"variant": "nn", "from": {"job_id": "j_doesnotexist", "step": 0}}
    assert client.post("/v1/jobs", json=unknown).status_code == 404
    assert _error_loc(fork(step=10)) == ["body", "from", "step"]
    assert _error_loc(fork(hyperparameters={"hidden": 9})) == ["body", "hyperparameters", "hidden"]
    assert _error_loc(fork(hyperparameters={"steps": 50})) == ["body", "hyperparameters", "steps"]
    assert _error_loc(fork(seed=3)) == ["body", "seed"]
    assert _error_loc(fork(variant="optim")) == ["body", "variant"]
    assert _error_loc(fork(step=-1)) == ["body", "from", "step"]
    assert _error_loc(client.post("/v1/jobs", json={"variant": "nn", "checkpoint_every": -1})) == [
        "body",
        "checkpoint_every",
    ]
    assert fork(hyperparameters={"steps": 60}).status_code == 201

    # a final job neither pauses nor resumes
    assert client.post(f"/v1/jobs/{parent}/pause").status_code == 409
    assert client.post(f"/v1/jobs/{parent}/resume").status_code == 409
    assert client.post("/v1/jobs/j_doesnotexist/pause").status_code == 404


def test_a_queued_job_pauses_at_once_and_resumes_from_step_0(client: httpx.Client) -> None:
    hp = {**SIZES, "steps": 1_000_000}
    busy = [submit(client, "numpy", hp=hp, seed=1, threads=1)["id"] for _ in range(2)]
    wait_for(lambda: all(job(client, b)["status"] == "running" for b in busy), 60)
    queued = submit(client, "numpy", hp={**SIZES, "steps": 30}, seed=1)["id"]
    answer = client.post(f"/v1/jobs/{queued}/pause")
    assert answer.status_code == 202 and body(answer)["status"] == "paused"
    for b in busy:
        assert client.post(f"/v1/jobs/{b}/cancel").status_code == 202
        wait_final(client, b)
    assert job(client, queued)["status"] == "paused", "it waits for a resume"
    assert checkpoints(client, queued) == []
    assert client.post(f"/v1/jobs/{queued}/resume").status_code == 202
    assert wait_final(client, queued)["status"] == "succeeded"
    assert all_losses(client, queued)[0] == list(range(30))


def test_the_stream_says_paused_stays_open_and_carries_every_step_once(server: Server) -> None:
    steps = 6_000
    with server.client() as reader, server.client() as control:
        job_id = submit(reader, "tensors", hp={**SIZES, "steps": steps}, seed=8, threads=1)["id"]
        done: set[str] = set()

        def on_event(event: ServerSentEvent) -> None:
            data = json.loads(event.data)
            if event.event == "loss" and data["step"] >= 20 and "pause" not in done:
                done.add("pause")
                assert control.post(f"/v1/jobs/{job_id}/pause").status_code == 202
            if event.event == "status" and data["status"] == "paused" and "resume" not in done:
                done.add("resume")
                assert control.post(f"/v1/jobs/{job_id}/resume").status_code == 202

        stream = read_events(reader, job_id, on_event=on_event)
    statuses = [s["status"] for s in stream.statuses]
    assert statuses.count("paused") == 1 and statuses[-1] == "succeeded", statuses
    assert statuses.index("paused") < statuses.index("queued", statuses.index("paused"))
    assert stream.steps == list(range(steps))


def test_a_sweep_pauses_and_resumes_every_run(client: httpx.Client) -> None:
    payload = {
        "variant": "numpy",
        "hyperparameters": {**SIZES, "steps": 1_000_000},
        "grid": {"learning_rate": [1e-7, 2e-7]},
        "seed": 1,
        "fuse": False,
    }
    created = client.post("/v1/sweeps", json=payload)
    assert created.status_code == 201, created.text
    sweep_id = created.json()["id"]

    def counts() -> dict[str, int]:
        return dict(client.get(f"/v1/sweeps/{sweep_id}").json()["counts"])

    wait_for(lambda: counts()["running"] == 2, 60)
    assert client.post(f"/v1/sweeps/{sweep_id}/pause").status_code == 202
    wait_for(lambda: counts()["paused"] == 2, 60)
    assert client.post(f"/v1/sweeps/{sweep_id}/resume").status_code == 202
    wait_for(lambda: counts()["paused"] == 0, 60)
    assert client.post(f"/v1/sweeps/{sweep_id}/cancel").status_code == 202
    wait_for(lambda: counts()["cancelled"] == 2, 60)
    assert client.post(f"/v1/sweeps/{sweep_id}/pause").status_code == 409
