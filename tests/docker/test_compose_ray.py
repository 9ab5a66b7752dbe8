"""compose.ray.yaml: one image as the service with Ray's head node, and as a Ray worker node.

The file is read and checked for what a two-host deployment relies on (docs/ray.md); the image
tests validate it with docker-compose (test_image.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def services() -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "compose.ray.yaml").read_text())
    return dict(compose["services"])


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    return {
        k: (v if sep else None) for k, sep, v in (e.partition("=") for e in service["environment"])
    }


def script(service: dict[str, Any]) -> str:
    command = service["command"]
    assert command[:2] == ["sh", "-c"], command
    return str(command[2])


def test_both_roles_run_the_services_image_on_their_hosts_network() -> None:
    image = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["trainwire"]["image"]
    for name, service in services().items():
        assert service["image"] == image and service["build"] == ".", name
        assert service["network_mode"] == "host", name  # Ray's nodes dial each other's hosts
        assert service["profiles"] == [name]
        env = environment(service)
        assert "RAY_AUTH_TOKEN" in env and env["RAY_AUTH_MODE"] == "token", name


def test_the_head_starts_ray_then_serves_as_its_driver() -> None:
    head = services()["head"]
    text = script(head)
    ray_start, serve = text.split("&&")
    assert ray_start.split()[:3] == ["ray", "start", "--head"]
    assert "--num-cpus=0" in ray_start  # the service's host runs no jobs
    assert serve.split()[:3] == ["exec", "trainwire", "serve"]
    # $$ is compose's escape: the shell in the container reads the port, as the health check
    assert '--host 0.0.0.0 --port "$${TRAINWIRE_PORT:-8000}"' in serve
    env = environment(head)
    assert env["TRAINWIRE_BACKEND"] == "ray" and env["RAY_ADDRESS"] == "auto"
    assert env["TRAINWIRE_DATABASE_URL"] == "sqlite:////data/trainwire.db"
    assert "trainwire-data:/data" in head["volumes"]


def test_a_worker_node_joins_the_head_given_its_address() -> None:
    worker = services()["worker"]
    text = script(worker)
    assert text.split()[:3] == ["exec", "ray", "start"] and "--block" in text
    # $$ is compose's escape: the shell in the container reads the variable, and stops with a
    # message where it is unset
    assert re.search(r'--address="\$\$\{RAY_HEAD_ADDRESS:\?[^}]+\}"', text), text
    assert "RAY_HEAD_ADDRESS" in environment(worker)


def test_the_image_installs_ray() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'o["ray"]' in dockerfile and "import" in dockerfile and "ray.__version__" in dockerfile
    assert "compose.ray.yaml" in (ROOT / ".dockerignore").read_text().split()
