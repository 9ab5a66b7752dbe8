"""A worker process that dies (killed, crashed) fails its job only; a fresh one takes the next."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from servers import Server, submit, wait_final, wait_for


def spawned_children(pid: int) -> list[int]:
    """The server's worker processes (not multiprocessing's resource tracker)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            children += [int(c) for c in (task / "children").read_text().split()]
    return [c for c in children if b"spawn_main" in _cmdline(c)]


def _cmdline(pid: int) -> bytes:
    """A process's command line; empty for one that is gone (a killed child, reaped meanwhile)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except FileNotFoundError:
        return b""


def test_a_killed_worker_process_fails_its_job_and_is_replaced(make_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_server(TRAINWIRE_CPU_WORKERS="1")
    assert server.process is not None
    with server.client() as client:
        # the server's most steps: it is still running when its process is killed
        long = submit(client, "tensors", hp={"steps": 1_000_000}, seed=1, device="cpu")
        wait_for(lambda: client.get(f"/v1/jobs/{long['id']}").json()["step"] > 0, timeout=60)
        workers = wait_for(lambda: spawned_children(server.process.pid), timeout=30)
        assert len(workers) == 1
        os.kill(workers[0], signal.SIGKILL)

        failed = wait_final(client, long["id"])
        assert failed["status"] == "failed"
        assert failed["error"]["code"] == "internal"
        assert failed["error"]["message"] == "the worker process died (killed by SIGKILL)"
        stored = client.get(f"/v1/jobs/{long['id']}/losses").json()["steps"]
        assert stored == list(range(len(stored)))  # what reached the store stays, contiguous

        # a fresh process comes up by itself, before any job asks for it
        wait_for(lambda: client.get("/readyz").status_code == 200, timeout=60)
        after = submit(client, "numpy", seed=2)
        assert wait_final(client, after["id"])["status"] == "succeeded"
    assert "Traceback" not in server.log()


def test_a_stopped_worker_process_makes_the_server_not_ready(make_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_server(TRAINWIRE_CPU_WORKERS="1")
    assert server.process is not None
    with server.client() as client:
        (worker,) = wait_for(lambda: spawned_children(server.process.pid), timeout=30)
        os.kill(worker, signal.SIGSTOP)  # it would hold the next job forever
        try:
            wait_for(lambda: client.get("/readyz").status_code == 503)
            assert "worker" in client.get("/readyz").json()["reason"]
        finally:
            os.kill(worker, signal.SIGCONT)
        wait_for(lambda: client.get("/readyz").status_code == 200)


def test_an_idle_worker_process_that_dies_is_replaced(make_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_server(TRAINWIRE_CPU_WORKERS="1")
    assert server.process is not None
    with server.client() as client:
        (worker,) = wait_for(lambda: spawned_children(server.process.pid), timeout=30)
        os.kill(worker, signal.SIGKILL)
        replaced = wait_for(
            lambda: [c for c in spawned_children(server.process.pid) if c != worker], timeout=60
        )
        assert len(replaced) == 1
        wait_for(lambda: client.get("/readyz").status_code == 200, timeout=60)
        job = submit(client, "numpy", seed=2)
        assert wait_final(client, job["id"])["status"] == "succeeded"
