"""A worker process that dies (killed, crashed) fails its job only; a fresh one takes the next."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from servers import Server, submit, wait_final, wait_for


def spawned_children(pid: int) -> list[int]:
    """The server's worker processes (not multiprocessing's resource tracker)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        children += [int(c) for c in text]
    return [
        c
        for c in children
        if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes().replace(b"\0", b" ")
    ]


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
        assert "worker process died" in failed["error"]["message"]
        stored = client.get(f"/v1/jobs/{long['id']}/losses").json()["steps"]
        assert stored == list(range(len(stored)))  # what reached the store stays, contiguous

        after = submit(client, "numpy", seed=2)
        assert wait_final(client, after["id"])["status"] == "succeeded"
        assert client.get("/readyz").status_code == 200
    assert "Traceback" not in server.log()
