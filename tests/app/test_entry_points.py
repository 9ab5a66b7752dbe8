"""The two ways API.md says the service starts: `trainwire serve` and `uvicorn app.main:app`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from servers import Server, submit, wait_final


def test_uvicorn_app_main_app_serves_jobs(make_server: Callable[..., Server]) -> None:
    server = make_server(command=("-m", "uvicorn", "app.main:app", "--host", "127.0.0.1"))
    with server.client() as client:
        assert client.get("/readyz").status_code == 200
        assert len(client.get("/v1/variants").json()) == 8
        job = submit(client, "tensors", hp={"steps": 7}, seed=3)
        done = wait_final(client, job["id"])
        assert (done["status"], done["step"]) == ("succeeded", 7)
        body = client.get(f"/v1/jobs/{job['id']}/losses").json()
        assert body["steps"] == list(range(7))
    assert "Uvicorn running on" in server.log()


def test_the_console_script_is_installed() -> None:
    trainwire = Path(sys.executable).with_name("trainwire")  # beside the environment's python
    assert trainwire.is_file(), "the install did not make the `trainwire` console script"
    done = subprocess.run([trainwire, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "serve" in done.stdout and "run" in done.stdout
