"""One server per store (SQLite file or PostgreSQL database), and nothing touched by a server that
cannot listen.

A second server on the same store would requeue the first one's running jobs as if they had
crashed and run them again beside it; a server started on a busy port would do the same to its
own file before failing to listen.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

from servers import ROOT, Server, free_port, submit, wait_final, wait_for

# the server's most steps on a mid-size problem: it runs until it is cancelled
ENDLESS = {
    "batch_size": 64,
    "d_in": 1000,
    "hidden": 1000,
    "steps": 1_000_000,
    "learning_rate": 1e-9,
}


def test_a_second_server_on_the_same_file_refuses_to_start(
    make_server: Callable[..., Server],
) -> None:
    first = make_server(TRAINWIRE_CPU_WORKERS="1")
    with first.client() as client:
        running = submit(client, "tensors", hp=ENDLESS, seed=1, device="cpu")
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
        assert first.store_name in message, message

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


def serve(env: dict[str, str], port: int) -> subprocess.CompletedProcess[str]:
    """`trainwire serve` run to its end."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serve_on_a_file_in_use_says_so_in_one_line(make_server: Callable[..., Server]) -> None:
    first = make_server()
    done = serve({**first.env, "TRAINWIRE_DATABASE_URL": first.database_url}, free_port())
    output = done.stdout + done.stderr
    assert done.returncode == 3, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output  # no traceback, no "running on" for a server that never ran
    assert "cannot start: another trainwire server" in lines[0], output
    assert (
        first.process is not None
        and f"pid {first.process.pid}" in lines[0]
        and first.store_name in lines[0]
    ), output
    with first.client() as client:
        assert client.get("/readyz").status_code == 200


def test_a_bad_setting_names_the_variable_and_starts_nothing(
    make_server: Callable[..., Server],
) -> None:
    blocked = make_server(start=False)
    env = {
        **blocked.env,
        "TRAINWIRE_DATABASE_URL": blocked.database_url,
        "TRAINWIRE_CPU_WORKERS": "two",
        "TRAINWIRE_API_TOKEN": "s3cret",
    }
    done = serve(env, free_port())
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "TRAINWIRE_CPU_WORKERS='two'" in output and "valid integer" in output, output
    assert "Traceback" not in output and "s3cret" not in output, output
    assert not blocked.store_exists()


def test_a_server_that_cannot_listen_exits_before_opening_its_store(
    make_server: Callable[..., Server],
) -> None:
    first = make_server()
    blocked = make_server(start=False)
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(first.port)],
        cwd=ROOT,
        env={**os.environ, **blocked.env, "TRAINWIRE_DATABASE_URL": blocked.database_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "address already in use" in (done.stdout + done.stderr).lower()
    assert not blocked.store_exists(), "the store was opened by a server that never listened"
    with first.client() as client:
        assert client.get("/readyz").status_code == 200
