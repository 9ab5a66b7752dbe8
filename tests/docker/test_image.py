"""The image, built and run under a real Docker engine, as a user runs it.

The CPU build of the product's Dockerfile (`REQUIRE_CUDA=0`) on a stand-in base made here
(dockerkit.py): the build from a fresh copy of the folder, the container's user and health, a job's
curve against the same job outside the container, `docker stop` and `docker start` on the same
volume, a second container on that volume, the API token, and both compose files.
"""

from __future__ import annotations

import json
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from dockerkit import PLANTED, ROOT, Engine
from servers import Server, free_port, stored_losses, wait_final, wait_for

# the build and a cold stand-in base take minutes: one limit for the module's first test
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

TOKEN_ENV = "TRAINWIRE_API_TOKEN"
# checks every 2 s instead of the image's 15 s, so that the tests wait less: the command is the
# image's own
FAST_HEALTH = ["--health-interval", "2s"]
# long enough to be running when the container stops on any CPU; one thread, as outside
INTERRUPTED_JOB = {"variant": "optim", "hyperparameters": {"steps": 6000}, "seed": 11, "threads": 1}
SHORT_JOB = {"variant": "numpy", "hyperparameters": {"steps": 40}, "seed": 3}


def health(docker: Engine, container: str) -> str:
    state = docker.inspect(container)["State"]
    if not state["Running"]:
        raise AssertionError(f"{container} exited {state['ExitCode']}:\n{logs(docker, container)}")
    return str(state["Health"]["Status"])


def logs(docker: Engine, container: str) -> str:
    result = docker.docker("logs", container, check=False)
    return result.stdout + result.stderr


def wait_healthy(docker: Engine, container: str, timeout: float = 180) -> None:
    try:
        wait_for(lambda: health(docker, container) == "healthy", timeout=timeout, interval=0.5)
    except AssertionError as exc:
        checks = docker.inspect(container)["State"].get("Health")
        health_log = json.dumps(checks)[-2000:]
        raise AssertionError(f"{exc}: {health_log}\n{logs(docker, container)}") from None


def ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def post_job(client: httpx.Client, job: dict[str, Any]) -> str:
    response = client.post("/v1/jobs", json=job)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def store_rows(docker: Engine, image: str, volume: str) -> dict[str, tuple[str, int]]:
    """(status, step) of every job in the volume's store, read by the image's own Python."""
    script = (
        "import json, sqlite3; c = sqlite3.connect('file:/data/trainwire.db?mode=ro', uri=True); "
        "rows = c.execute('SELECT id, status, step FROM jobs'); "
        "print(json.dumps({i: [s, n] for i, s, n in rows}))"
    )
    out = docker.docker(
        "run", "--rm", "--network", "none", "-v", f"{volume}:/data", image, "python", "-c", script
    ).stdout
    return {k: (v[0], v[1]) for k, v in json.loads(out).items()}


# --- the build ---------------------------------------------------------------------------------


def test_the_build_context_leaves_local_state_out(
    docker: Engine, image: str, base: str, context: Path, tmp_path: Path
) -> None:
    # what the context carries, seen by a build that copies all of it (with the product's
    # .dockerignore, which sits at the context's root)
    probe = tmp_path / "probe.Dockerfile"
    probe.write_text(f"FROM {base}\nCOPY . /context\n")
    docker.docker("build", "--network", "host", "-f", str(probe), "-t", "tw-probe", str(context))
    listed = docker.docker("run", "--rm", "--network", "none", "tw-probe", "find", "/context")
    sent = {p.removeprefix("/context/") for p in listed.stdout.split() if p != "/context"}
    docker.docker("rmi", "tw-probe")
    for planted in PLANTED:
        assert planted not in sent, f"{planted} went into the build context"
    assert not [p for p in sent if p.split("/")[0] in {"tests", "bench", "docs", ".git"}]
    assert {"pyproject.toml", "README.md", "app/main.py", "workers", "trainwire"} <= sent
    # and the image's copy of the code holds none of it either
    src = docker.docker("run", "--rm", "--network", "none", image, "find", "/src").stdout.split()
    assert "/src/app/main.py" in src
    assert not [p for p in src if p.endswith((".db", ".pyc", ".swp"))], src


# --- one container, as `docker run IMAGE` starts it ------------------------------------------


@pytest.fixture(scope="module")
def default_container(docker: Engine, image: str) -> Iterator[str]:
    """The image with nothing set: the server on its default port 8000, in a network namespace of
    its own (only the engine's health check, run inside it, reaches it)."""
    name = "tw-default"
    docker.docker("run", "-d", "--name", name, "--network", "none", *FAST_HEALTH, image)
    try:
        wait_healthy(docker, name)
        yield name
    finally:
        docker.docker("rm", "-f", name, check=False)


def test_healthy_on_the_default_port(docker: Engine, default_container: str) -> None:
    config = docker.inspect(default_container)["Config"]
    assert "TRAINWIRE_PORT=8000" in config["Env"]
    assert health(docker, default_container) == "healthy"


def test_the_server_runs_as_the_unprivileged_user_as_pid_1(
    docker: Engine, default_container: str
) -> None:
    status = docker.docker("exec", default_container, "cat", "/proc/1/status").stdout
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert set(uids) == {"10001"}, status
    argv = docker.docker("exec", default_container, "cat", "/proc/1/cmdline").stdout.split("\0")
    # the shell of CMD exec'd the server: PID 1 is the server itself, and gets the stop signal
    assert "serve" in argv and "8000" in argv and not argv[0].endswith("sh"), argv
    owner = docker.docker("exec", default_container, "stat", "-c", "%u:%g", "/data/trainwire.db")
    assert owner.stdout.strip() == "10001:10001"


# --- a deployment's life: serve, stop, start, a second container, the token ------------------


@pytest.fixture(scope="module")
def deployment(
    docker: Engine, image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A container on a volume and a non-default port with an API token, a short job and a long
    one; `docker stop` while the long one runs; `docker start`; a second container on the same
    volume. Beside it, the long job run by the service outside any container."""
    token = "tw-" + secrets.token_hex(16)
    volume = "tw-data-" + secrets.token_hex(4)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    name = "tw-main"
    outside = Server(tmp_path_factory.mktemp("outside"), {"TRAINWIRE_CPU_WORKERS": "1"})
    found: dict[str, Any] = {"port": port, "token": token}
    try:
        outside.start(timeout=120)
        with outside.client() as client:
            reference = post_job(client, INTERRUPTED_JOB)
        docker.docker(
            "run", "-d", "--name", name, "--network", "host", *FAST_HEALTH,
            "-v", f"{volume}:/data", "-e", f"TRAINWIRE_PORT={port}",
            "-e", "TRAINWIRE_CPU_WORKERS=1", "-e", f"{TOKEN_ENV}={token}", image,
        )  # fmt: skip
        wait_for(lambda: ready(url) or health(docker, name) == "unhealthy", timeout=180)
        found["readyz"] = httpx.get(url + "/readyz", timeout=5).status_code
        wait_healthy(docker, name)
        found["health"] = health(docker, name)
        auth = {"Authorization": f"Bearer {token}"}
        found["without_token"] = httpx.get(url + "/v1/jobs", timeout=10).status_code
        found["wrong_token"] = httpx.get(
            url + "/v1/jobs", headers={"Authorization": "Bearer nope"}, timeout=10
        ).status_code
        with httpx.Client(base_url=url, headers=auth, timeout=30) as client:
            found["with_token"] = client.get("/v1/jobs").status_code
            short = post_job(client, SHORT_JOB)
            found["short_before"] = wait_final(client, short, timeout=300)
            found["short_losses_before"] = stored_losses(client, short)
            long = post_job(client, INTERRUPTED_JOB)
            wait_for(lambda: client.get(f"/v1/jobs/{long}").json()["step"] > 0, timeout=120)
        began = time.monotonic()
        docker.docker("stop", "-t", "10", name, timeout=60)
        found["stop_seconds"] = time.monotonic() - began
        found["stopped"] = docker.inspect(name)["State"]
        found["stored"] = store_rows(docker, image, volume)
        docker.docker("start", name)
        wait_for(lambda: ready(url), timeout=180)
        # a second container on the same volume, while the first one holds the store
        second = docker.docker(
            "run", "--name", "tw-second", "--network", "host",
            "-v", f"{volume}:/data", "-e", f"TRAINWIRE_PORT={free_port()}", image,
            check=False, timeout=180,
        )  # fmt: skip
        found["second"] = (second.returncode, second.stdout + second.stderr)
        with httpx.Client(base_url=url, headers=auth, timeout=30) as client:
            found["long_after"] = wait_final(client, long, timeout=300)
            found["long_losses"] = stored_losses(client, long)
            found["short_after"] = client.get(f"/v1/jobs/{short}").json()
            found["short_losses_after"] = stored_losses(client, short)
            found["listed"] = {j["id"] for j in client.get("/v1/jobs").json()["items"]}
        with outside.client() as client:
            found["reference"] = wait_final(client, reference, timeout=300)
            found["reference_losses"] = stored_losses(client, reference)
        found["ids"] = {"short": short, "long": long}
        found["logs"] = logs(docker, name)
        yield found
    finally:
        docker.docker("rm", "-f", name, "tw-second", check=False)
        docker.docker("volume", "rm", volume, check=False)
        if outside.process is not None and outside.process.poll() is None:
            outside.stop(signal.SIGKILL)


def test_ready_and_healthy_on_the_port_it_is_given(deployment: dict[str, Any]) -> None:
    assert deployment["readyz"] == 200
    assert deployment["health"] == "healthy"


def test_the_api_token_is_enforced_and_never_logged(deployment: dict[str, Any]) -> None:
    assert deployment["without_token"] == 401
    assert deployment["wrong_token"] == 401
    assert deployment["with_token"] == 200
    assert deployment["token"] not in deployment["logs"]


def test_a_job_in_the_container_gives_the_curve_of_the_same_job_outside(
    deployment: dict[str, Any],
) -> None:
    inside, outside = deployment["long_after"], deployment["reference"]
    assert inside["status"] == outside["status"] == "succeeded"
    assert inside["environment"]["threads"] == outside["environment"]["threads"] == 1
    steps, losses = deployment["long_losses"]
    assert steps == list(range(INTERRUPTED_JOB["hyperparameters"]["steps"]))
    assert (steps, losses) == deployment["reference_losses"]  # bit for bit, as JSON floats


def test_docker_stop_ends_it_cleanly_within_the_grace_period(deployment: dict[str, Any]) -> None:
    stopped = deployment["stopped"]
    # a SIGKILL at the end of the grace period would read 137
    assert not stopped["Running"] and stopped["ExitCode"] == 0 and not stopped["OOMKilled"]
    status, step = deployment["stored"][deployment["ids"]["long"]]
    # what `pytest -rP` shows: the measurement, not a condition of the test
    print(f"docker stop took {deployment['stop_seconds']:.2f} s; the job stopped at step {step}")
    # the running job went back to the queue for the next start (docs/design.md, Shutdown)
    assert status == "queued", deployment["stored"]
    assert deployment["stored"][deployment["ids"]["short"]] == ("succeeded", 40)


def test_docker_start_finds_every_job_and_finishes_the_interrupted_one(
    deployment: dict[str, Any],
) -> None:
    assert set(deployment["ids"].values()) <= deployment["listed"]
    assert deployment["short_after"] == deployment["short_before"]
    assert deployment["short_losses_after"] == deployment["short_losses_before"]
    assert deployment["long_after"]["status"] == "succeeded"


def test_a_second_container_on_the_same_volume_refuses_to_start(
    deployment: dict[str, Any],
) -> None:
    code, output = deployment["second"]
    assert code == 3, output
    assert "another trainwire server" in output and "/data/trainwire.db" in output


# --- compose -----------------------------------------------------------------------------------


def compose_config(docker: Engine, *args: str) -> dict[str, Any]:
    out = docker.run(["docker-compose", *args, "config"], cwd=ROOT).stdout
    return dict(yaml.safe_load(out))


def test_the_compose_files_are_valid(docker: Engine) -> None:
    # as docker-compose reads them (defaults filled in, short forms expanded)
    plain = compose_config(docker, "-f", "compose.yaml")
    service = plain["services"]["trainwire"]
    assert service["image"] == "trainwire:latest" and service["build"]["context"] == str(ROOT)
    assert {"published": 8000, "target": 8000} in service["ports"]
    assert "trainwire-data:/data:rw" in service["volumes"] and "trainwire-data" in plain["volumes"]
    assert service["environment"]["TRAINWIRE_DATABASE_URL"] == "sqlite:////data/trainwire.db"
    assert service["restart"] == "unless-stopped" and service["stop_grace_period"] == "15s"
    assert "healthcheck" not in service, "the image's HEALTHCHECK should apply as it is"
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]} in devices
    ray = compose_config(
        docker, "-f", "compose.ray.yaml", "--profile", "head", "--profile", "worker"
    )
    assert set(ray["services"]) == {"head", "worker"}
    for name, node in ray["services"].items():
        assert node["image"] == service["image"] and node["network_mode"] == "host", name


def without_gpus(compose: Path, image: str, environment: dict[str, str], where: Path) -> Path:
    """A copy of a compose file for this host: the test's CPU image, no GPU reservation, the
    host's network (this engine has no bridge) with `environment` added, health asked every 2 s."""
    config = yaml.safe_load(compose.read_text())
    config.pop("x-ray-node", None)  # an extension field, already merged where it is used
    for service in config["services"].values():
        service.pop("build", None)
        service.pop("deploy", None)
        service.pop("ports", None)
        service["image"] = image
        service["network_mode"] = "host"
        service["environment"] = [
            *service.get("environment", []),
            *(f"{k}={v}" for k, v in environment.items()),
        ]
        if "healthcheck" not in service:  # the image's check, asked every 2 s
            service["healthcheck"] = {"interval": "2s"}
    derived = where / compose.name
    derived.write_text(yaml.safe_dump(config))
    return derived


def compose_up_healthy(
    docker: Engine, derived: Path, project: str, port: int, served_by: str, *profiles: str
) -> None:
    """`docker-compose up -d`, the service `served_by` healthy and ready on `port`, then
    `down -v`: nothing left."""
    compose = ["docker-compose", "-p", project, "-f", str(derived)]
    for profile in profiles:
        compose += ["--profile", profile]
    try:
        docker.run([*compose, "up", "-d"], timeout=300)
        (container,) = docker.run([*compose, "ps", "-q", served_by]).stdout.split()
        wait_healthy(docker, container)
        assert ready(f"http://127.0.0.1:{port}")
    finally:
        docker.run([*compose, "down", "-v"], timeout=120, check=False)
    assert docker.run([*compose, "ps", "-q"]).stdout.split() == []


def test_compose_up_serves_and_down_stops(docker: Engine, image: str, tmp_path: Path) -> None:
    port = free_port()
    settings = {"TRAINWIRE_PORT": str(port), "TRAINWIRE_CPU_WORKERS": "1"}
    derived = without_gpus(ROOT / "compose.yaml", image, settings, tmp_path)
    compose_up_healthy(docker, derived, "twcompose", port, "trainwire")


def test_compose_ray_head_and_worker_serve(docker: Engine, image: str, tmp_path: Path) -> None:
    # both roles on this host; the head is ready once the worker's slots are up
    port, gcs = free_port(), free_port()
    settings = {
        "TRAINWIRE_PORT": str(port),
        "TRAINWIRE_CPU_WORKERS": "1",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_HEAD_ADDRESS": f"127.0.0.1:{gcs}",
    }
    derived = without_gpus(ROOT / "compose.ray.yaml", image, settings, tmp_path)
    # Ray's fixed ports, moved to free ones: this host's network is shared with other clusters
    config = yaml.safe_load(derived.read_text())
    head, worker = config["services"]["head"]["command"], config["services"]["worker"]["command"]
    assert "--port=6379" in head[2] and "ray start --address=" in worker[2], (head, worker)
    head[2] = head[2].replace(
        "--port=6379", f"--port={gcs} --dashboard-agent-listen-port={free_port()}"
    )
    worker[2] = worker[2].replace(
        "ray start", f"ray start --dashboard-agent-listen-port={free_port()}"
    )
    derived.write_text(yaml.safe_dump(config))
    compose_up_healthy(docker, derived, "twray", port, "head", "head", "worker")
