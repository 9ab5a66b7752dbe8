"""Test helpers: real uvicorn servers on 127.0.0.1 with real SQLite files, and client calls.

Imported by tests as `from servers import ...` (tests/ is on pytest's pythonpath).

With `TRAINWIRE_TEST_POSTGRES_URL` set (a PostgreSQL server's URL, e.g.
`postgresql+psycopg://postgres@127.0.0.1:5432/postgres`), each server gets a database of its own
on that PostgreSQL server instead of a SQLite file (`make test-postgres`).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

POSTGRES = os.environ.get("TRAINWIRE_TEST_POSTGRES_URL") or None
_CREATED: list[str] = []  # PostgreSQL databases made for this session's servers


def drop_created_databases() -> None:
    """Drop the PostgreSQL databases this session made (their servers are gone by now)."""
    if POSTGRES is None or not _CREATED:
        return
    admin = create_engine(POSTGRES, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        while _CREATED:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{_CREATED.pop()}" WITH (FORCE)'))
    admin.dispose()


ROOT = Path(__file__).resolve().parent.parent


def _die_with_parent() -> None:
    """In the child: SIGKILL it if the test process dies, so no server outlives a killed run."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _preexec(address_space: int | None) -> Callable[[], None]:
    """What the server's process runs before it starts: die with the test process, and cap its
    address space (RLIMIT_AS, inherited by its worker processes) when asked."""

    def preexec() -> None:
        _die_with_parent()
        if address_space is not None:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    return preexec


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
    # bytes of address space the server and its worker processes may map (None: no cap)
    address_space: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "trainwire.db"

    @property
    def database_url(self) -> str:
        """The store: as the server was told, else the SQLite file in data_dir, or a PostgreSQL
        database named after it."""
        if "TRAINWIRE_DATABASE_URL" in self.env:
            return self.env["TRAINWIRE_DATABASE_URL"]
        if POSTGRES is None:
            return f"sqlite:///{self.db_path}"
        name = "tw_" + hashlib.sha1(str(self.data_dir).encode()).hexdigest()[:16]
        return make_url(POSTGRES).set(database=name).render_as_string(hide_password=False)

    @property
    def store_name(self) -> str:
        """How the server names its store in messages (a file's path, a URL without password)."""
        if POSTGRES is None:
            return str(self.db_path)
        return make_url(self.database_url).render_as_string(hide_password=True)

    def store_exists(self) -> bool:
        """Whether anything was ever stored (a file, or a migrated database)."""
        if POSTGRES is None:
            return self.db_path.exists()
        name = make_url(self.database_url).database
        admin = create_engine(POSTGRES, poolclass=NullPool)
        with admin.connect() as conn:
            found = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).first()
        admin.dispose()
        return found is not None and self.query("SELECT to_regclass('jobs') IS NOT NULL")[0][0]

    def query(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        """Rows of a query on the server's store, read directly (not through the API)."""
        engine = create_engine(self.database_url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                return [tuple(row) for row in conn.execute(text(sql), params)]
        finally:
            engine.dispose()

    def stored_steps(self, job_id: str) -> tuple[int, int, int | None, int | None]:
        """(steps stored, distinct steps, first step, last step) of a job's losses, read from
        the store's chunks directly (a chunk holds steps [first_step, end_step))."""
        spans = self.query(
            "SELECT first_step, end_step FROM loss_chunks "
            "WHERE job_pk = (SELECT pk FROM jobs WHERE id = :id) ORDER BY first_step",
            id=job_id,
        )
        steps = [step for first, end in spans for step in range(first, end)]
        return len(steps), len(set(steps)), min(steps, default=None), max(steps, default=None)

    def execute(self, sql: str, **params: Any) -> None:
        """Change the server's store directly (as a fault would), and commit."""
        engine = create_engine(self.database_url, poolclass=NullPool)
        try:
            with engine.begin() as conn:
                conn.execute(text(sql), params)
        finally:
            engine.dispose()

    def _create_database(self) -> None:
        name = make_url(self.database_url).database
        admin = create_engine(POSTGRES or "", poolclass=NullPool, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).first()
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
                _CREATED.append(str(name))
        admin.dispose()

    def start(self, timeout: float = 60.0) -> Server:
        env = {**os.environ, **self.env}
        if POSTGRES is not None and "TRAINWIRE_DATABASE_URL" not in env:
            self._create_database()
        env.setdefault("TRAINWIRE_DATABASE_URL", self.database_url)
        # beside the store, also when the store is a PostgreSQL database
        env.setdefault("TRAINWIRE_CHECKPOINT_DIR", str(self.data_dir / "checkpoints"))
        self.log_path = self.data_dir / f"server-{time.monotonic_ns()}.log"
        # the child writes to its own copy of the descriptor; ours is closed at once
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, *self.command, "--port", str(self.port)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_preexec(self.address_space),
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


class ByteCuttingProxy:
    """Relays bytes between a client and the server on `upstream_port`, one upstream connection
    per client connection, and closes a connection once `after` bytes of its answer have gone
    through: the first `cuts` connections (every one when `cuts` is None). Keeps each
    connection's request head."""

    def __init__(self, upstream_port: int, after: int, cuts: int | None = None):
        self.upstream_port, self.after, self.cuts = upstream_port, after, cuts
        self.requests: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed
                return
            with self._lock:
                index = len(self.requests)
                self.requests.append(b"")
            cut = self.cuts is None or index < self.cuts
            threading.Thread(target=self._serve, args=(conn, index, cut), daemon=True).start()

    def _serve(self, conn: socket.socket, index: int, cut: bool) -> None:
        with conn, socket.create_connection(("127.0.0.1", self.upstream_port)) as upstream:
            head = conn.recv(65536)
            self.requests[index] = head
            upstream.sendall(head)
            sent = 0
            while chunk := upstream.recv(4096):
                if cut and sent + len(chunk) > self.after:
                    conn.sendall(chunk[: self.after - sent])
                    return  # cut mid-answer
                conn.sendall(chunk)
                sent += len(chunk)

    def close(self) -> None:
        self.listener.close()


def stored_losses(client: httpx.Client, job_id: str) -> tuple[list[int], list[float | None]]:
    """(steps, losses) of every stored loss of a job, page by page."""
    steps: list[int] = []
    losses: list[float | None] = []
    after: int | None = -1
    while after is not None:
        page = client.get(f"/v1/jobs/{job_id}/losses", params={"after": after}).json()
        steps += page["steps"]
        losses += page["losses"]
        after = page["next_after"]
    return steps, losses
