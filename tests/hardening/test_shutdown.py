"""SIGTERM with a job running and three browsers watching it.

The server must end every event stream cleanly (each client sees its stream close, with no
broken read and no hang), exit 0 within 10 s, and leave the interrupted job queued, so that the
next start runs it again, past where it was stopped, with every step stored once.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable

import httpx
from httpx_sse import connect_sse
from servers import Server, stored_losses, submit, wait_final, wait_for

# the tensors program on a small problem with the server's most steps: it runs until it is
# stopped or cancelled, however fast the CPU
ENDLESS = {"batch_size": 16, "d_in": 64, "hidden": 16, "d_out": 4, "steps": 1_000_000}
SUBSCRIBERS = 3


class Subscriber(threading.Thread):
    """Reads one job's event stream until the server ends it; notes how it ended."""

    def __init__(self, url: str, job_id: str):
        super().__init__(daemon=True)
        self.url, self.job_id = url, job_id
        self.losses = 0
        self.error: BaseException | None = None
        self.ended_at: float | None = None

    def run(self) -> None:
        try:
            with (
                httpx.Client(base_url=self.url, timeout=30) as client,
                connect_sse(client, "GET", f"/v1/jobs/{self.job_id}/events") as source,
            ):
                for sse in source.iter_sse():
                    self.losses += sse.event == "loss"
        except BaseException as exc:  # a broken read is a failure of the test
            self.error = exc
        self.ended_at = time.monotonic()


def _sigterm_with_streams_open(server: Server) -> tuple[str, int, float]:
    """Start a long job, watch it from SUBSCRIBERS streams, SIGTERM the server while it runs;
    check that every stream ended cleanly. Returns (job id, exit status, seconds to exit)."""
    with server.client() as client:
        job_id = submit(client, "tensors", hp=ENDLESS, seed=5, device="cpu")["id"]
        wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] == "running")
        subscribers = [Subscriber(server.url, job_id) for _ in range(SUBSCRIBERS)]
        for s in subscribers:
            s.start()
        wait_for(lambda: all(s.losses > 0 for s in subscribers))  # all three are live
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "running"

    assert server.process is not None
    sent = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    code = server.process.wait(timeout=10)
    took = time.monotonic() - sent

    for s in subscribers:
        s.join(5)
        assert not s.is_alive(), "a stream was still open after the server exited"
        assert s.error is None, repr(s.error)
        assert s.ended_at is not None and s.ended_at - sent < 10
    log = server.log()
    assert "Traceback" not in log, log
    assert "Application shutdown complete" in log
    return job_id, code, took


def test_sigterm_ends_streams_exits_0_and_the_job_runs_again(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(TRAINWIRE_CPU_WORKERS="1")
    job_id, code, took = _sigterm_with_streams_open(server)
    assert code == 0, server.log()
    assert took < 10

    ((status, step),) = server.query("SELECT status, step FROM jobs WHERE id = :id", id=job_id)
    assert status == "queued", "the interrupted job is back in the queue"
    assert 0 < step < ENDLESS["steps"]

    restarted = make_server(data_dir=server.data_dir, TRAINWIRE_CPU_WORKERS="1")
    with restarted.client() as client:
        # it runs again, past the step where it was stopped; then it is cancelled
        wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json()["step"] > step + 100, 90)
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
        job = wait_final(client, job_id)
        assert job["status"] == "cancelled", job
        assert job["attempts"] == 2
        steps, losses = stored_losses(client, job_id)
        assert steps == list(range(job["step"]))
        assert all(isinstance(v, float) for v in losses)
        assert json.loads(client.get(f"/v1/jobs/{job_id}").text)["step"] == job["step"]


def test_under_plain_uvicorn_sigterm_ends_the_streams_too(
    make_server: Callable[..., Server],
) -> None:
    # uvicorn alone waits for open connections before the lifespan's shutdown: the app's own
    # signal hook must end the streams, or the process never exits
    server = make_server(
        command=("-m", "uvicorn", "app.main:app", "--host", "127.0.0.1"),
        TRAINWIRE_CPU_WORKERS="1",
    )
    job_id, code, took = _sigterm_with_streams_open(server)
    assert code == -signal.SIGTERM, server.log()  # uvicorn re-raises the signal once it is done
    assert took < 10
    ((status,),) = server.query("SELECT status FROM jobs WHERE id = :id", id=job_id)
    assert status == "queued", "the interrupted job is back in the queue"
