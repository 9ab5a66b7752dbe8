"""The API as a generated client sees it: openapi-python-client (from PyPI, in a venv of its
own) writes a client from a real server's /openapi.json, and that client drives the server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
from servers import Server

GENERATOR = "openapi-python-client==0.29.1"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trainwire-tests"
DRIVER = Path(__file__).with_name("generated_client_driver.py")


def generator_venv() -> Path:
    """A venv with the generator (and so httpx and attrs, which the generated code needs)."""
    venv = CACHE / "openapi-client"
    ready = venv / f".{GENERATOR}"
    if not ready.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--quiet", GENERATOR], check=True, timeout=600
        )
        ready.touch()
    return venv


def test_a_generated_client_drives_the_server(shared_server: Server, tmp_path: Path) -> None:
    venv = generator_venv()
    document = tmp_path / "openapi.json"
    document.write_bytes(httpx.get(shared_server.url + "/openapi.json").content)
    generated = subprocess.run(
        [
            str(venv / "bin" / "openapi-python-client"),
            "generate",
            "--path", str(document),
            "--output-path", str(tmp_path / "tw_generated"),
            "--meta", "none",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        # its formatter, ruff, is the project's own
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )  # fmt: skip
    assert generated.returncode == 0, generated.stdout + generated.stderr
    assert "Warning" not in generated.stdout, generated.stdout

    ran = subprocess.run(
        [str(venv / "bin" / "python"), str(DRIVER), shared_server.url],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert ran.returncode == 0, ran.stderr
    seen = json.loads(ran.stdout)
    job_id = seen["submitted"]["id"]
    assert seen["submitted"]["variant"] == "numpy" and seen["submitted"]["seed"] == 5
    assert seen["got"] == {"id": job_id, "label": "generated", "variant_is_enum": True}
    assert seen["final"] == "succeeded"
    assert job_id in seen["listed"]
    assert seen["losses"] == {"steps": [0, 1, 2], "count": 3}
    assert seen["cancel"] == {"status_code": 202, "is_job": True}
    assert seen["404"] == {"status_code": 404, "detail": "no job with id '0123456789abcdef'"}
    assert seen["409"]["status_code"] == 409 and "already succeeded" in seen["409"]["detail"]
    assert seen["422"]["status_code"] == 422
    assert ["body", "hyperparameters", "steps"] in [e["loc"] for e in seen["422"]["detail"]]
    assert seen["events"]["status_code"] == 200
    events = seen["events"]["text"]
    assert events.startswith("event: status") and events.count("event: loss") == 3
    assert sorted(seen["variants"]) == sorted(
        ["numpy", "tensors", "autograd", "custom_function", "nn", "optim", "custom_module",
         "dynamic"]
    )  # fmt: skip
