"""One server per SQLite file, and nothing touched by a server that cannot listen.

A second server on the same file would requeue the first one's running jobs as if they had
crashed and run them again beside it; a server started on a busy port would do the same to its
own file before failing to listen.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

from servers import ROOT, Server, submit, wait_final, wait_for

LONG = {"batch_size": 64, "d_in": 1000, "hidden": 1000, "steps": 100_000, "learning_rate": 1e-9}


def test_a_second_server_on_the_same_file_refuses_to_start(
    make_server: Callable[..., Server],
) -> None:
    first = make_server(TRAINWIRE_CPU_WORKERS="1")
    with first.client() as client:
        running = submit(client, "tensors", hp=LONG, seed=1)
        wait_for(lambda: client.get(f"/v1/jobs/{running['id']}").json()["status"] == "running")

        second = make_server(data_dir=first.data_dir, start=False)
        try:
            second.start(timeout=60)
        except RuntimeError as exc:
            message = str(exc)
        else:
            raise AssertionError("a second server started on a file in use")
        assert second.process is not None and second.process.returncode != 0
        assert "another trainwire server" in message, message
        assert str(first.db_path) in message, message

        # the first server never noticed: its job runs on, on its first attempt
        job = client.get(f"/v1/jobs/{running['id']}").json()
        assert (job["status"], job["attempts"]) == ("running", 1), job
        assert client.post(f"/v1/jobs/{running['id']}/cancel").status_code == 202
        assert wait_final(client, running["id"])["status"] == "cancelled"
    assert first.stop() == 0

    # once the first is gone the file is free again
    third = make_server(data_dir=first.data_dir)
    with third.client() as client:
        assert client.get(f"/v1/jobs/{running['id']}").json()["status"] == "cancelled"


def test_a_server_that_cannot_listen_exits_before_opening_its_store(
    make_server: Callable[..., Server],
) -> None:
    first = make_server()
    blocked = make_server(start=False)
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(first.port)],
        cwd=ROOT,
        env={**os.environ, **blocked.env, "TRAINWIRE_DATABASE_URL": f"sqlite:///{blocked.db_path}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "address already in use" in (done.stdout + done.stderr).lower()
    assert not blocked.db_path.exists(), "the store was opened by a server that never listened"
    with first.client() as client:
        assert client.get("/readyz").status_code == 200
