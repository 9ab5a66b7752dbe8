"""Sweeps through a real server: runs equal to jobs alone, the stream, cancel, delete, listing."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jobclient import all_losses, body
from servers import Server, submit, wait_final, wait_for
from sweepkit import read_sweep_events, submit_sweep, wait_sweep_final

# small tensors: a step costs less than its bookkeeping
TINY = {"batch_size": 8, "d_in": 20, "hidden": 10, "d_out": 2}


@pytest.fixture(scope="module")
def sweep_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of two CPU workers (one thread each) for the tests that don't break it."""
    server = Server(tmp_path_factory.mktemp("sweeps"), {"TRAINWIRE_CPU_WORKERS": "2"}).start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.stop(signal.SIGKILL)


@pytest.fixture
def client(sweep_server: Server) -> Iterator[httpx.Client]:
    with sweep_server.client() as c:
        yield c


def test_each_run_of_a_sweep_equals_the_same_job_alone(client: httpx.Client) -> None:
    hp = {**TINY, "steps": 30}
    grid = {"learning_rate": [1e-4, 3e-4, 1e-3], "seed": [5, 6]}
    sweep = submit_sweep(client, "nn", hp=hp, grid=grid, label="lr scan", fuse=False)
    assert sweep["status"] == "queued" and sweep["fused"] is False and sweep["fuse"] is False
    assert sweep["counts"] == {
        "queued": 6,
        "running": 0,
        "paused": 0,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
    }
    # the grid's order: the last field varies fastest
    assert [(r["hyperparameters"]["learning_rate"], r["seed"]) for r in sweep["jobs"]] == [
        (lr, seed) for lr in grid["learning_rate"] for seed in grid["seed"]
    ]
    final = wait_sweep_final(client, sweep["id"])
    assert final["status"] == "succeeded", final
    assert final["counts"]["succeeded"] == 6 and final["finished_at"] is not None
    listed = body(client.get("/v1/jobs", params={"sweep": sweep["id"]}))["items"]
    assert {j["id"] for j in listed} == {r["id"] for r in sweep["jobs"]}

    for run in final["jobs"]:
        job = body(client.get(f"/v1/jobs/{run['id']}"))
        assert job["sweep_id"] == sweep["id"] and job["label"] == "lr scan"
        assert job["hyperparameters"] == {
            **hp,
            "learning_rate": run["hyperparameters"]["learning_rate"],
            "dtype": "float32",
        }
        # a curve is a function of the threads too: the job alone takes the run's count
        threads = job["environment"]["threads"]
        alone = submit(client, "nn", hp=job["hyperparameters"], seed=job["seed"], threads=threads)
        assert alone["sweep_id"] is None
        assert wait_final(client, alone["id"])["status"] == "succeeded"
        swept_steps, swept = all_losses(client, run["id"])
        assert swept_steps == list(range(30))
        # JSON carries each float exactly: equal numbers are equal bits
        assert swept == all_losses(client, alone["id"])[1], run["hyperparameters"]
        assert run["last_loss"] == swept[-1]


@pytest.mark.parametrize(
    ("variant", "rates"),
    [("tensors", [1e-6, 2e-6, 5e-7]), ("nn", [1e-4, 3e-4, 1e-3]), ("dynamic", [1e-4, 1e-3, 3e-5])],
)
def test_a_fused_sweep_gives_each_run_the_curve_of_the_job_alone(
    client: httpx.Client, variant: str, rates: list[float]
) -> None:
    hp = {**TINY, "steps": 40}
    sweep = submit_sweep(
        client, variant, hp=hp, grid={"learning_rate": rates, "seed": [3, 4]}, fuse=True
    )
    assert sweep["fuse"] is True and sweep["fused"] is True and sweep["exact"] is True
    stream = read_sweep_events(client, sweep["id"])
    final = stream.assert_complete()
    assert final["status"] == "succeeded", final
    points = stream.points()
    for run in final["jobs"]:
        job = body(client.get(f"/v1/jobs/{run['id']}"))
        # six runs in two batched computations (one per CPU worker) on one thread each: a job
        # alone with one thread makes the same curve
        assert job["environment"]["fused_runs"] == 3 and job["environment"]["threads"] == 1
        assert job["environment"]["fused_exact"] == "by_construction"
        alone = submit(client, variant, hp=job["hyperparameters"], seed=job["seed"], threads=1)
        assert wait_final(client, alone["id"])["environment"]["threads"] == 1
        expected = all_losses(client, alone["id"])[1]
        assert all_losses(client, run["id"])[1] == expected, run["hyperparameters"]
        assert [loss for _, loss in points[run["id"]]] == expected


def test_a_fused_sweep_that_asks_for_speed_says_its_runs_are_unchecked_and_repeats_its_bits(
    client: httpx.Client,
) -> None:
    hp = {"batch_size": 16, "d_in": 64, "hidden": 32, "d_out": 4, "steps": 60}
    grid = {"learning_rate": [1e-4, 3e-4], "seed": [3, 4]}
    curves = []
    for _ in range(2):
        sweep = submit_sweep(client, "nn", hp=hp, grid=grid, fuse=True, exact=False)
        assert sweep["fused"] is True and sweep["exact"] is False
        final = wait_sweep_final(client, sweep["id"])
        assert final["status"] == "succeeded", final
        for run in final["jobs"]:
            environment = body(client.get(f"/v1/jobs/{run['id']}"))["environment"]
            assert (environment["fused_kernels"], environment["fused_exact"]) == (
                "batched",
                "unchecked",
            )
        curves.append([all_losses(client, run["id"])[1] for run in final["jobs"]])
    # the same sweep again on the same machine: the same bits (floats compare exactly here)
    assert curves[0] == curves[1]


def test_exact_takes_only_a_boolean(client: httpx.Client) -> None:
    response = client.post("/v1/sweeps", json={"variant": "nn", "grid": {"seed": [1]}, "exact": 3})
    assert response.status_code == 422 and "exact" in response.text


def test_fuse_auto_runs_cpu_sweeps_as_plain_jobs(client: httpx.Client) -> None:
    sweep = submit_sweep(client, "nn", hp={**TINY, "steps": 5}, grid={"seed": [1, 2]})
    assert sweep["fuse"] == "auto" and sweep["fused"] is False
    wait_sweep_final(client, sweep["id"])
    for run in sweep["jobs"]:
        assert "fused_runs" not in body(client.get(f"/v1/jobs/{run['id']}"))["environment"]


def test_a_sweep_without_seed_in_its_grid_gives_every_run_one_seed(client: httpx.Client) -> None:
    drawn = submit_sweep(client, "tensors", hp=TINY, grid={"steps": [2, 3]})
    assert isinstance(drawn["seed"], int)
    assert {r["seed"] for r in drawn["jobs"]} == {drawn["seed"]}
    given = submit_sweep(
        client, "tensors", hp={**TINY, "steps": 2}, grid={"learning_rate": [1e-6, 2e-6]}, seed=9
    )
    assert given["seed"] == 9 and {r["seed"] for r in given["jobs"]} == {9}
    assert given["grid"] == {"learning_rate": [1e-6, 2e-6]}
    for sweep in (drawn, given):
        assert wait_sweep_final(client, sweep["id"])["status"] == "succeeded"


def test_the_stream_of_a_running_sweep_carries_every_step_of_every_run_once(
    client: httpx.Client,
) -> None:
    steps = 400
    sweep = submit_sweep(
        client,
        "autograd",
        hp={**TINY, "steps": steps},
        grid={"learning_rate": [1e-6, 2e-6], "seed": [1, 2]},
    )
    stream = read_sweep_events(client, sweep["id"])
    final = stream.assert_complete()
    assert final["status"] == "succeeded"
    assert final == body(client.get(f"/v1/sweeps/{sweep['id']}"))
    points = stream.points()
    for run in final["jobs"]:
        assert [loss for _, loss in points[run["id"]]] == all_losses(client, run["id"])[1]
    # the runs changed status while it streamed: those changes came as sweep events
    assert len(stream.sweeps) >= 3, [s["status"] for s in stream.sweeps]

    # a finished sweep is replayed whole, then thinned with max_points
    replay = read_sweep_events(client, sweep["id"])
    assert replay.assert_complete() == final
    assert replay.points() == points
    thin = read_sweep_events(client, sweep["id"], params={"max_points": 20})
    assert [e.event for e in thin.events][-1] == "sweep"
    for run in final["jobs"]:
        thinned = thin.points()[run["id"]]
        assert 2 <= len(thinned) <= 20
        expected = body(client.get(f"/v1/jobs/{run['id']}/losses", params={"max_points": 20}))
        assert thinned == list(zip(expected["steps"], expected["losses"], strict=True))


def test_cancel_stops_every_run_and_delete_removes_the_sweep(client: httpx.Client) -> None:
    sweep = submit_sweep(
        client,
        "tensors",
        hp={**TINY, "steps": 1_000_000},
        grid={"learning_rate": [1e-9, 2e-9, 3e-9], "seed": [1, 2]},
    )
    sweep_id = sweep["id"]
    wait_for(lambda: body(client.get(f"/v1/sweeps/{sweep_id}"))["status"] == "running")
    assert client.delete(f"/v1/sweeps/{sweep_id}").status_code == 409

    response = client.post(f"/v1/sweeps/{sweep_id}/cancel")
    assert response.status_code == 202, response.text
    final = wait_sweep_final(client, sweep_id)
    assert final["status"] == "cancelled"
    assert final["counts"]["cancelled"] == 6, final["counts"]
    assert client.post(f"/v1/sweeps/{sweep_id}/cancel").status_code == 409
    stream = read_sweep_events(client, sweep_id)
    assert stream.assert_complete()["status"] == "cancelled"

    assert client.delete(f"/v1/sweeps/{sweep_id}").status_code == 204
    assert client.get(f"/v1/sweeps/{sweep_id}").status_code == 404
    assert client.delete(f"/v1/sweeps/{sweep_id}").status_code == 404
    for run in sweep["jobs"]:
        assert client.get(f"/v1/jobs/{run['id']}").status_code == 404
    assert body(client.get("/v1/jobs", params={"sweep": sweep_id}))["items"] == []


def test_a_cancelled_run_leaves_the_others_running(client: httpx.Client) -> None:
    sweep = submit_sweep(client, "numpy", hp=TINY, grid={"steps": [1_000_000, 300]})
    first = sweep["jobs"][0]["id"]
    wait_for(lambda: body(client.get(f"/v1/jobs/{first}"))["status"] == "running")
    response = client.post(f"/v1/jobs/{first}/cancel")
    assert response.status_code == 202
    final = wait_sweep_final(client, sweep["id"])
    assert [r["status"] for r in final["jobs"]] == ["cancelled", "succeeded"]
    assert final["status"] == "cancelled"  # not every run succeeded, and none failed


def test_unknown_sweeps_are_404(client: httpx.Client) -> None:
    for path in ("/v1/sweeps/0123456789abcdef", "/v1/sweeps/nope", "/v1/sweeps/nope/events"):
        assert client.get(path).status_code == 404, path
    assert client.post("/v1/sweeps/0123456789abcdef/cancel").status_code == 404
    assert client.delete("/v1/sweeps/0123456789abcdef").status_code == 404


@pytest.mark.parametrize(
    ("fields", "loc", "words"),
    [
        ({"grid": {"learning_rate": []}}, ["body", "grid", "learning_rate"], "at least one"),
        ({"grid": {}}, ["body", "grid"], "at least one field"),
        ({"grid": {"momentum": [0.5]}}, ["body", "grid", "momentum"], "does not take"),
        ({"grid": {"learning_rate": [1e-4, -1.0]}}, ["body", "grid", "learning_rate", 1], "-1.0"),
        ({"grid": {"hidden": [4, "8"]}}, ["body", "grid", "hidden", 1], '"8"'),
        ({"grid": {"dtype": ["float16"]}}, ["body", "grid", "dtype", 0], "float16"),
        ({"grid": {"seed": [1, 2**32]}}, ["body", "grid", "seed", 1], "4294967296"),
        ({"grid": {"seed": [1, 1]}}, ["body", "grid", "seed"], "more than once"),
        (
            {"hp": {"hidden": 4}, "grid": {"hidden": [4, 8]}},
            ["body", "grid", "hidden"],
            "in hyperparameters too",
        ),
        ({"seed": 3, "grid": {"seed": [1]}}, ["body", "grid", "seed"], "outside the grid"),
        ({"hp": {"stepz": 3}, "grid": {"seed": [1]}}, ["body", "hyperparameters", "stepz"], ""),
        ({"grid": {"steps": [10, 10**9]}}, ["body", "grid", "steps"], "limit"),
        ({"grid": {"hidden": [10**6]}}, ["body", "grid", "hidden"], "bytes"),
        (
            {
                "grid": {
                    "learning_rate": [1e-4] * 0 + [i * 1e-5 for i in range(1, 20)],
                    "seed": list(range(20)),
                }
            },
            ["body", "grid"],
            "380 runs",
        ),
    ],
)
def test_a_bad_grid_is_422_naming_the_field_and_value(
    client: httpx.Client, fields: dict[str, Any], loc: list[Any], words: str
) -> None:
    response = client.post("/v1/sweeps", json={"variant": "nn", **_body(fields)})
    assert response.status_code == 422, response.text
    detail = body(response)["detail"]
    assert any(e["loc"] == loc and words in e["msg"] for e in detail), detail


def test_a_grid_as_large_as_a_body_may_be_is_refused_by_its_size(client: httpx.Client) -> None:
    """~150,000 seeds fill a 1 MiB body: refused by the count, whatever the values (a check of
    each value against the others first would take time quadratic in them, on the loop)."""
    seeds = list(range(150_000))
    while len(json.dumps({"variant": "nn", "grid": {"seed": seeds}})) > 1 << 20:
        seeds.pop()
    repeated = seeds[:-1] + [0]  # and a repeat at the very end
    for grid in ({"seed": seeds}, {"seed": repeated}, {"seed": seeds, "learning_rate": [1.0]}):
        response = client.post("/v1/sweeps", json={"variant": "nn", "grid": grid})
        assert response.status_code == 422, response.text[:300]
        (error,) = body(response)["detail"]
        assert error["loc"] == ["body", "grid"] and f"{len(seeds)} runs" in error["msg"], error
    assert client.get("/healthz").status_code == 200


def _body(fields: dict[str, Any]) -> dict[str, Any]:
    out = dict(fields)
    if "hp" in out:
        out["hyperparameters"] = out.pop("hp")
    return out


def test_a_sweep_the_queue_cannot_take_whole_is_429_and_leaves_nothing(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(TRAINWIRE_CPU_WORKERS="1", TRAINWIRE_MAX_QUEUED="4")
    with server.client() as client:
        blocker = submit(client, "tensors", hp={**TINY, "steps": 1_000_000})
        wait_for(lambda: body(client.get(f"/v1/jobs/{blocker['id']}"))["status"] == "running")
        response = client.post(
            "/v1/sweeps",
            json={"variant": "tensors", "hyperparameters": TINY, "grid": {"seed": [1, 2, 3, 4, 5]}},
        )
        assert response.status_code == 429, response.text
        assert int(response.headers["Retry-After"]) >= 1
        assert body(client.get("/v1/sweeps"))["items"] == []
        assert [j["id"] for j in body(client.get("/v1/jobs"))["items"]] == [blocker["id"]]
        # four runs fit
        sweep = submit_sweep(client, "tensors", hp=TINY, grid={"seed": [1, 2, 3, 4]})
        assert sweep["counts"]["queued"] == 4
        client.post(f"/v1/sweeps/{sweep['id']}/cancel")
        client.post(f"/v1/jobs/{blocker['id']}/cancel")


def test_the_run_limit_comes_from_the_settings(make_server: Callable[..., Server]) -> None:
    server = make_server(TRAINWIRE_CPU_WORKERS="1", TRAINWIRE_MAX_SWEEP_RUNS="3")
    with server.client() as client:
        response = client.post(
            "/v1/sweeps", json={"variant": "numpy", "grid": {"seed": [1, 2], "hidden": [1, 2]}}
        )
        assert response.status_code == 422
        assert "limit of 3 runs" in body(response)["detail"][0]["msg"]


def test_sweeps_are_listed_newest_first_by_status_and_variant(
    make_server: Callable[..., Server], tmp_path: Path
) -> None:
    server = make_server(TRAINWIRE_CPU_WORKERS="2")
    with server.client() as client:
        made = [
            submit_sweep(client, variant, hp={**TINY, "steps": 3}, grid={"seed": [1, 2]})
            for variant in ("numpy", "tensors", "numpy")
        ]
        for sweep in made:
            wait_sweep_final(client, sweep["id"])
        page = body(client.get("/v1/sweeps", params={"limit": 2}))
        assert [s["id"] for s in page["items"]] == [made[2]["id"], made[1]["id"]]
        rest = body(client.get("/v1/sweeps", params={"limit": 2, "cursor": page["next_cursor"]}))
        assert [s["id"] for s in rest["items"]] == [made[0]["id"]] and rest["next_cursor"] is None
        numpy = body(client.get("/v1/sweeps", params={"variant": "numpy"}))["items"]
        assert [s["id"] for s in numpy] == [made[2]["id"], made[0]["id"]]
        assert body(client.get("/v1/sweeps", params={"status": "running"}))["items"] == []
        done = body(client.get("/v1/sweeps", params={"status": "succeeded", "limit": 1}))
        assert [s["id"] for s in done["items"]] == [made[2]["id"]] and done["next_cursor"]
        assert client.get("/v1/sweeps", params={"status": "sideways"}).status_code == 422


def test_a_fused_sweep_cut_by_a_restart_goes_on_fused_with_the_same_curves(
    make_server: Callable[..., Server],
) -> None:
    # two threads for a plain job here, one for a fused group: the runs of a fused sweep must
    # go on fused after the restart, or their recomputed steps would round otherwise
    env = {"TRAINWIRE_CPU_WORKERS": "1", "TRAINWIRE_THREADS_PER_CPU_JOB": "2"}
    hp = {"batch_size": 32, "d_in": 200, "hidden": 50, "d_out": 5, "steps": 3000}
    grid = {"learning_rate": [1e-6, 2e-6], "seed": [1, 2]}
    server = make_server(**env)
    with server.client() as client:
        sweep = submit_sweep(client, "tensors", hp=hp, grid=grid, fuse=True)
        wait_for(
            lambda: any(
                r["step"] > 300 for r in body(client.get(f"/v1/sweeps/{sweep['id']}"))["jobs"]
            ),
            timeout=60,
        )
    assert server.stop() == 0
    server = make_server(data_dir=server.data_dir, **env)
    with server.client() as client:
        cut = wait_sweep_final(client, sweep["id"])
        whole = wait_sweep_final(
            client, submit_sweep(client, "tensors", hp=hp, grid=grid, fuse=True)["id"]
        )
        assert cut["status"] == whole["status"] == "succeeded"
        for run, same in zip(cut["jobs"], whole["jobs"], strict=True):
            job = body(client.get(f"/v1/jobs/{run['id']}"))
            assert job["attempts"] == 2 and job["environment"]["fused_runs"] == 4
            assert all_losses(client, run["id"]) == all_losses(client, same["id"])
