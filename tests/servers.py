"""Test helpers: real uvicorn servers on 127.0.0.1 with real SQLite files, and client calls.

Imported by tests as `from servers import ...` (tests/ is on pytest's pythonpath).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


def _die_with_parent() -> None:
    """In the child: SIGKILL it if the test process dies, so no server outlives a killed run."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02) -> Any:
    """Poll until condition() is truthy; return its value, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


@dataclass
class Server:
    """A `trainwire serve` process on 127.0.0.1 with its own SQLite file."""

    data_dir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    # what runs after `python`, before `--port N`: `trainwire serve` unless told otherwise
    command: tuple[str, ...] = ("-m", "app.cli", "serve")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "trainwire.db"

    def start(self, timeout: float = 60.0) -> Server:
        env = {**os.environ, **self.env}
        env.setdefault("TRAINWIRE_DATABASE_URL", f"sqlite:///{self.db_path}")
        self.log_path = self.data_dir / f"server-{time.monotonic_ns()}.log"
        # the child writes to its own copy of the descriptor; ours is closed at once
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, *self.command, "--port", str(self.port)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited at start:\n{self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready within {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send `sig` and wait for the process to exit; returns its exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def kill(self) -> None:
        """kill -9: no cleanup of any kind."""
        self.stop(signal.SIGKILL)

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 30.0), **kw)


def submit(client: httpx.Client, variant: str, expect: int = 201, **body: Any) -> dict[str, Any]:
    """POST a job; hyperparameters go in `hp=...`."""
    payload: dict[str, Any] = {"variant": variant, **body}
    if "hp" in payload:
        payload["hyperparameters"] = payload.pop("hp")
    response = client.post("/v1/jobs", json=payload)
    assert response.status_code == expect, response.text
    return dict(response.json())


FINAL = {"succeeded", "failed", "cancelled"}


def wait_final(client: httpx.Client, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        job = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in FINAL else None

    return dict(wait_for(final, timeout))
