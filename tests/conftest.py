"""Fixtures: real uvicorn servers on 127.0.0.1 with real SQLite files, and clients for them."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from servers import Server, drop_created_databases


@pytest.fixture(scope="session", autouse=True)
def _drop_test_databases() -> Iterator[None]:
    """With TRAINWIRE_TEST_POSTGRES_URL: leave no test database behind on that server."""
    yield
    drop_created_databases()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Factory: make_server(TRAINWIRE_CPU_WORKERS="2", ...) starts a fresh server;
    `address_space=` caps the bytes it and its workers may map (RLIMIT_AS)."""
    servers: list[Server] = []

    def make(
        data_dir: Path | None = None,
        start: bool = True,
        command: tuple[str, ...] | None = None,
        address_space: int | None = None,
        **env: str,
    ) -> Server:
        directory = data_dir or tmp_path / f"server{len(servers)}"
        directory.mkdir(parents=True, exist_ok=True)
        server = Server(directory, {k: str(v) for k, v in env.items()})
        if command is not None:
            server.command = command
        server.address_space = address_space
        servers.append(server)
        return server.start() if start else server

    yield make
    for server in servers:
        if server.process is not None and server.process.poll() is None:
            server.stop(signal.SIGKILL)


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the tests that don't restart or break it."""
    server = Server(tmp_path_factory.mktemp("shared"), {"TRAINWIRE_CPU_WORKERS": "2"}).start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.stop(signal.SIGKILL)


@pytest.fixture
def client(shared_server: Server) -> Iterator[httpx.Client]:
    with shared_server.client() as c:
        yield c
