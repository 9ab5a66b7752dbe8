"""Hundreds of event-stream readers that read a little and then stop reading.

Each one's catch-up history is read and encoded off the event loop, a page at a time, and what
waits for it is bounded by one page and its socket: the server keeps answering everyone else,
its memory stays put, and a reader that takes nothing for TRAINWIRE_STREAM_STALL_SECONDS is
dropped (it would come back with Last-Event-ID).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from servers import Server, submit, wait_for

READERS = 300
FAST = {"batch_size": 4, "d_in": 8, "hidden": 4, "d_out": 2, "steps": 1_000_000}
# steps stored before the readers come: a catch-up longer than the kernel buffers a socket
HISTORY = 100_000
STALL_SECONDS = 5


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@contextmanager
def stalled_readers(server: Server, path: str, count: int) -> Iterator[list[socket.socket]]:
    """`count` connections to `path` that read a few KB each and then nothing."""
    readers = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window
            sock.settimeout(30)
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
            readers.append(sock)
        for sock in readers:
            got = b""
            while len(got) < 4096:
                chunk = sock.recv(4096)
                assert chunk, "the stream ended at once"
                got += chunk
            assert got.startswith(b"HTTP/1.1 200")
        yield readers
    finally:
        for sock in readers:
            sock.close()


def read_to_end(sock: socket.socket) -> bytes:
    """Everything the server still sends, until it closes the connection."""
    data = b""
    while chunk := sock.recv(1 << 16):
        data += chunk
    return data


@pytest.mark.slow
def test_stalled_readers_neither_starve_the_server_nor_grow_it(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(
        TRAINWIRE_CPU_WORKERS="1", TRAINWIRE_STREAM_STALL_SECONDS=str(STALL_SECONDS)
    )
    assert server.process is not None
    with server.client(timeout=10) as client:
        job = submit(client, "tensors", hp=FAST, seed=3)
        wait_for(lambda: client.get(f"/v1/jobs/{job['id']}").json()["step"] >= HISTORY, timeout=120)
        before = rss_bytes(server.process.pid)
        events = f"/v1/jobs/{job['id']}/events"
        with stalled_readers(server, events, READERS):
            # everyone else is still answered (a 10 s client timeout: the event loop is free)
            for _ in range(20):
                assert client.get("/healthz").status_code == 200
                assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "running"
            grown = rss_bytes(server.process.pid) - before
            assert grown < 150 << 20, f"the server grew by {grown / 2**20:.0f} MiB"

        # a reader that takes nothing is dropped: the server says so, and the reader finds its
        # connection closed, the stream cut short (it would resume from its last id)
        dropped = server.log().count("took nothing for")
        with stalled_readers(server, events, 1) as (reader,):
            wait_for(lambda: server.log().count("took nothing for") > dropped, timeout=120)
            rest = read_to_end(reader)
            # the losses it had not taken, then no end of the chunked body: cut, not finished
            assert b"event: loss" in rest and not rest.endswith(b"0\r\n\r\n")
        assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
