"""The service on a Ray cluster: a real cluster of three nodes on 127.0.0.1 (a head that runs no
jobs, as a service's host would, and two worker nodes of one CPU each), and a real
`trainwire serve` as its driver.

One cluster and one service serve the module's tests (starting them takes most of its time).
Every Ray process the tests start carries a marker in its environment, so that the end of the
module can check, by process, that none of them is left.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from httpx_sse import connect_sse
from servers import ROOT, Server, free_port, submit, wait_final, wait_for
from threadpoolctl import threadpool_limits

from trainwire.jobs import JobSpec
from workers.hyperparameters import Limits, parse_hyperparameters
from workers.runner import run_job
from workers.variants import VARIANTS

# starting the cluster and the service's actors takes 20-60 s on 2 cores, in the first test's time
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(240)]

MARK = "TRAINWIRE_TEST_RAY_PROCESS"
NODE = {"node_ip_address": "127.0.0.1", "num_cpus": 1}
# a job of a few seconds: nn in float32, whose curve depends on the torch thread count
LONG = {"steps": 4000}


def marked_processes(mark: str) -> list[tuple[int, str]]:
    """(pid, command) of the live processes whose environment carries `mark`."""
    found = []
    needle = f"{MARK}={mark}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
        except (OSError, IndexError):
            continue  # gone meanwhile
        if state != "Z":
            found.append((int(entry.name), command))
    return found


@pytest.fixture(scope="module")
def ray_env() -> Iterator[dict[str, str]]:
    """Ray's files, its auth token and its usage stats kept to a temporary folder; the marker."""
    # a short path: Ray's Unix sockets live under it, and their paths are limited to 107 bytes
    base = tempfile.mkdtemp(prefix="tw-ray-", dir="/tmp")
    env = {
        "RAY_TMPDIR": base,
        "RAY_AUTH_TOKEN_PATH": os.path.join(base, "auth_token"),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_worker_niceness": "0",  # Ray's default, 15, slows the jobs on a busy machine
        MARK: f"{os.getpid()}-{time.monotonic_ns()}",
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        yield env
    subprocess.run(["rm", "-rf", base], check=False)


@pytest.fixture(scope="module")
def cluster(ray_env: dict[str, str]) -> Iterator[Any]:
    """A head node with no CPUs for jobs and two worker nodes of one CPU each, on 127.0.0.1."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={**NODE, "num_cpus": 0, "include_dashboard": False},
    )
    try:
        for _ in range(2):
            cluster.add_node(**NODE)
        yield cluster
    finally:
        cluster.shutdown()
        # nothing the module started may outlive it: raylets, workers, actors, GCS
        try:
            wait_for(lambda: not marked_processes(ray_env[MARK]), timeout=30, interval=0.2)
        except AssertionError:
            left = marked_processes(ray_env[MARK])
            for pid, _ in left:
                os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"Ray processes left behind: {left}") from None


def ray_server_env(address: str) -> dict[str, str]:
    return {
        "TRAINWIRE_BACKEND": "ray",
        "RAY_ADDRESS": address,
        # the driver stays on 127.0.0.1 instead of dialling the host's routable address
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "TRAINWIRE_THREADS_PER_CPU_JOB": "1",
        "TRAINWIRE_RAY_WATCHDOG_S": "5",
    }


def wait_nodes_ready(client: httpx.Client, count: int, timeout: float = 90) -> list[dict[str, Any]]:
    """The cluster's nodes from /readyz once `count` of them have every slot up."""

    def ready() -> list[dict[str, Any]] | None:
        response = client.get("/readyz")
        if response.status_code != 200:
            return None
        nodes = [n for n in response.json()["nodes"] if n["slots"]]
        up = [n for n in nodes if n["ready"] == n["slots"]]
        return nodes if len(nodes) == count and len(up) == count else None

    return list(wait_for(ready, timeout, interval=0.2))


@pytest.fixture(scope="module")
def ray_server(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The service as the cluster's driver, every worker up."""
    server = Server(tmp_path_factory.mktemp("ray-service"), ray_server_env(cluster.address))
    server.start(timeout=120)
    try:
        with server.client() as client:
            wait_nodes_ready(client, 2)
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.stop()


@pytest.fixture
def client(ray_server: Server) -> Iterator[httpx.Client]:
    with ray_server.client() as c:
        yield c


def local_curve(variant: str, seed: int, threads: int = 1, **hp: Any) -> list[float]:
    """The job's losses as the local backend computes them: run_job on `threads` torch and BLAS
    threads."""
    model = VARIANTS[variant].hyperparameters
    spec = JobSpec(variant, parse_hyperparameters(model, hp, variant, Limits()), seed)
    losses: list[float] = []

    def work() -> None:
        torch.set_num_threads(threads)  # per thread on this build
        run_job(spec, lambda first, values: losses.extend(values))

    with threadpool_limits(limits=threads, user_api="blas"):
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
    return losses


def stored_losses(client: httpx.Client, job_id: str) -> tuple[list[int], list[float | None]]:
    steps: list[int] = []
    losses: list[float | None] = []
    after = -1
    while after is not None:
        page = client.get(f"/v1/jobs/{job_id}/losses", params={"after": after}).json()
        steps += page["steps"]
        losses += page["losses"]
        after = page["next_after"]
    return steps, losses


class StreamReader:
    """Every loss event of a job's stream, read in a thread from its start to the job's end."""

    def __init__(self, client: httpx.Client, job_id: str):
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.statuses: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(client, job_id), daemon=True)
        self._thread.start()

    def _read(self, client: httpx.Client, job_id: str) -> None:
        import json

        timeout = httpx.Timeout(30.0, read=60.0)
        with connect_sse(client, "GET", f"/v1/jobs/{job_id}/events", timeout=timeout) as source:
            for event in source.iter_sse():
                data = json.loads(event.data) if event.data else None
                if event.event == "loss":
                    self.steps.append(data["step"])
                    self.losses.append(data["loss"])
                elif event.event == "status":
                    self.statuses.append(data["status"])

    def wait(self, timeout: float = 90) -> StreamReader:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream did not end"
        return self


def test_jobs_land_on_both_nodes_with_the_local_backends_curves(
    client: httpx.Client, cluster: Any
) -> None:
    ready = client.get("/readyz").json()
    assert ready["devices"] == ["cpu"]
    workers = {node.node_id for node in cluster.worker_nodes}
    assert {n["node"] for n in ready["nodes"] if n["slots"]} == workers
    variants = {v["name"]: v for v in client.get("/v1/variants").json()}
    assert variants["nn"]["devices"] == ["cpu", "cuda"]
    assert variants["nn"]["available_devices"] == ["cpu"]  # no GPU in this cluster

    jobs = [submit(client, "nn", hp={"steps": 400}, seed=seed) for seed in range(4)]
    done = [wait_final(client, job["id"]) for job in jobs]
    assert [job["status"] for job in done] == ["succeeded"] * 4, done
    assert {job["environment"]["node"] for job in done} == workers
    for seed, job in enumerate(done):
        assert job["assigned_device"] == "cpu"
        assert job["environment"]["threads"] == 1
        steps, losses = stored_losses(client, job["id"])
        assert steps == list(range(400))
        assert losses == local_curve("nn", seed, steps=400), f"seed {seed}: another curve"


def test_a_job_s_pinned_threads_hold_on_a_slot_of_one_thread(client: httpx.Client) -> None:
    # the slots train on one thread (TRAINWIRE_THREADS_PER_CPU_JOB=1); a job that names its
    # count (to reproduce a curve from another host) runs with it, and says so
    pinned = submit(client, "nn", hp={"steps": 300}, seed=11, threads=2)
    assert pinned["environment"] == {"threads": 2}
    done = wait_final(client, pinned["id"])
    assert done["status"] == "succeeded", done
    assert done["environment"]["threads"] == 2  # what torch said in the training thread
    assert stored_losses(client, pinned["id"])[1] == local_curve("nn", 11, threads=2, steps=300)
    # the next job without a count is back on the slot's one thread
    plain = wait_final(client, submit(client, "nn", hp={"steps": 20}, seed=11)["id"])
    assert plain["environment"]["threads"] == 1


def test_a_cuda_job_is_refused_where_the_cluster_has_no_gpu(client: httpx.Client) -> None:
    for device, says in (("cuda", "no node with a GPU"), ("cuda:0", "names a device of one host")):
        response = client.post("/v1/jobs", json={"variant": "nn", "device": device})
        assert response.status_code == 422, response.text
        assert says in response.text and "Ray" in response.text


def test_cancel_stops_a_running_job_and_drops_a_queued_one(client: httpx.Client) -> None:
    running = [submit(client, "nn", hp={"steps": 200_000}, seed=s) for s in (1, 2)]
    queued = submit(client, "nn", hp={"steps": 50}, seed=3)
    wait_for(lambda: all(client.get(f"/v1/jobs/{j['id']}").json()["step"] > 0 for j in running))

    response = client.post(f"/v1/jobs/{queued['id']}/cancel")
    assert response.status_code == 202 and response.json()["status"] == "cancelled"
    began = time.monotonic()
    for job in running:
        assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    ended = [wait_final(client, job["id"], timeout=30) for job in running]
    assert time.monotonic() - began < 10
    assert [job["status"] for job in ended] == ["cancelled", "cancelled"]
    for job in ended:
        steps, _ = stored_losses(client, job["id"])
        assert steps == list(range(job["step"])) and 0 < job["step"] < 200_000
    assert client.get(f"/v1/jobs/{queued['id']}").json()["step"] == 0


def wait_step(client: httpx.Client, job_id: str, step: int) -> dict[str, Any]:
    """The job once it has stored more than `step` steps (it must not end before)."""

    def far_enough() -> dict[str, Any] | None:
        now = client.get(f"/v1/jobs/{job_id}").json()
        assert now["status"] in ("queued", "running"), now
        return now if now["step"] > step else None

    return dict(wait_for(far_enough))


def test_a_node_lost_mid_run_costs_nothing(
    client: httpx.Client, cluster: Any, ray_server: Server
) -> None:
    job = submit(client, "nn", hp=LONG, seed=11)
    stream = StreamReader(client, job["id"])
    before = wait_step(client, job["id"], 500)
    lost = next(n for n in cluster.worker_nodes if n.node_id == before["environment"]["node"])
    cluster.remove_node(lost, allow_graceful=False)  # the host dies with its processes

    done = wait_final(client, job["id"], timeout=90)
    assert done["status"] == "succeeded", done
    assert done["environment"]["node"] != lost.node_id  # rerun on the other node
    assert done["attempts"] == 2
    steps, losses = stored_losses(client, job["id"])
    assert steps == list(range(LONG["steps"]))  # each step stored once
    assert losses == local_curve("nn", 11, **LONG)
    stream.wait()
    assert stream.steps == list(range(LONG["steps"]))  # and streamed once, in order
    assert stream.losses == losses
    assert stream.statuses[-1] == "succeeded"

    # a node that joins gets a slot of its own
    cluster.add_node(**NODE)
    nodes = wait_nodes_ready(client, 2)
    assert lost.node_id not in {n["node"] for n in nodes}


def test_a_worker_that_hangs_is_given_up_by_the_watchdog(client: httpx.Client) -> None:
    job = submit(client, "nn", hp=LONG, seed=12)
    stream = StreamReader(client, job["id"])
    hung = wait_step(client, job["id"], 500)["environment"]["pid"]
    os.kill(hung, signal.SIGSTOP)  # its stream goes silent, and it answers no ping
    try:
        done = wait_final(client, job["id"], timeout=90)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(hung, signal.SIGCONT)
    assert done["status"] == "succeeded", done
    assert done["environment"]["pid"] != hung and done["attempts"] == 2
    steps, losses = stored_losses(client, job["id"])
    assert steps == list(range(LONG["steps"]))
    assert losses == local_curve("nn", 12, **LONG)
    assert stream.wait().steps == steps
    wait_nodes_ready(client, 2)  # the hung worker's slot has a new actor


def test_jobs_running_on_ray_survive_a_restart_of_the_service(
    client: httpx.Client, ray_server: Server
) -> None:
    jobs = [submit(client, "nn", hp=LONG, seed=seed) for seed in (21, 22)]
    wait_for(lambda: all(client.get(f"/v1/jobs/{j['id']}").json()["step"] > 300 for j in jobs))
    assert ray_server.stop(signal.SIGTERM) == 0
    rows = ray_server.query(
        "SELECT status, step FROM jobs WHERE id IN (:a, :b)",
        **{
            "a": jobs[0]["id"],
            "b": jobs[1]["id"],
        },
    )
    assert [status for status, _ in rows] == ["queued", "queued"]
    assert all(step > 300 for _, step in rows)

    ray_server.start(timeout=120)
    with ray_server.client() as again:
        done = [wait_final(again, job["id"], timeout=90) for job in jobs]
        assert [job["status"] for job in done] == ["succeeded"] * 2, done
        for seed, job in zip((21, 22), done, strict=True):
            steps, losses = stored_losses(again, job["id"])
            assert steps == list(range(LONG["steps"]))
            assert losses == local_curve("nn", seed, **LONG)
        wait_nodes_ready(again, 2)  # the module's other tests find it as they left it


def test_a_service_whose_cluster_does_not_answer_refuses_to_start(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        **ray_server_env(address),
        "TRAINWIRE_DATABASE_URL": f"sqlite:///{tmp_path}/t.db",
    }
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.monotonic() - began < 20
    assert done.returncode == 4, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, done.stderr
    assert "Ray" in errors[0] and address in errors[0], errors


def test_a_ray_instance_of_its_own_goes_with_the_service(
    make_server: Any, ray_env: dict[str, str]
) -> None:
    own = tempfile.mkdtemp(prefix="tw-ray-own-", dir="/tmp")
    mark = f"{ray_env[MARK]}-own"
    token = Path(own, "auth_token")  # a new local instance wants one (token auth is on)
    token.write_text(secrets.token_hex(32))
    try:
        server = make_server(
            start=False,
            TRAINWIRE_BACKEND="ray",
            TRAINWIRE_THREADS_PER_CPU_JOB="1",
            RAY_TMPDIR=own,
            RAY_AUTH_TOKEN_PATH=str(token),
            **{MARK: mark},
        ).start(timeout=120)
        with server.client() as client:
            job = wait_final(client, submit(client, "numpy", hp={"steps": 20})["id"])
            assert job["status"] == "succeeded" and job["environment"]["node"]
        assert marked_processes(mark)  # Ray's head and the actors, started by the service
        assert server.stop(signal.SIGTERM) == 0
        wait_for(lambda: not marked_processes(mark), timeout=30, interval=0.2)
    finally:
        for pid, _ in marked_processes(mark):
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["rm", "-rf", own], check=False)
