"""Stopping the server (SIGTERM) and starting a new one on the same data directory."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from jobclient import FINAL, Stream, all_losses, body, read_events
from servers import Server, submit, wait_final, wait_for

TINY = {"batch_size": 8, "d_in": 20, "hidden": 10, "d_out": 2}
# the server's most steps: still running at the stop however fast the CPU, and after the restart
# until the test cancels it
ENDLESS = {**TINY, "steps": 1_000_000}


def _snapshot(server: Server, job_ids: list[str]) -> dict[str, Any]:
    """Everything a user can read about these jobs."""
    with server.client() as client:
        return {
            "jobs": {i: body(client.get(f"/v1/jobs/{i}")) for i in job_ids},
            "losses": {i: all_losses(client, i) for i in job_ids},
            "csv": {
                i: client.get(f"/v1/jobs/{i}/losses", params={"format": "csv"}).text
                for i in job_ids
            },
            "listing": [
                job
                for job in body(client.get("/v1/jobs", params={"limit": 500}))["items"]
                if job["id"] in job_ids
            ],
        }


@pytest.fixture(scope="module")
def restart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Finished jobs of every ending, and one job mid-run with a subscriber, then SIGTERM and a
    new server on the same data directory."""
    data_dir = tmp_path_factory.mktemp("restart")
    servers: list[Server] = []
    try:
        first = Server(data_dir, {"TRAINWIRE_CPU_WORKERS": "2"})
        servers.append(first.start())
        with first.client() as client, ThreadPoolExecutor(max_workers=1) as pool:
            finished = [
                submit(client, "numpy", hp={"steps": 20}, seed=1)["id"],
                submit(client, "dynamic", hp={"steps": 30}, seed=2, label="dyn")["id"],
                submit(client, "numpy", hp={"steps": 50, "learning_rate": 1.0})["id"],
            ]
            cancelled = submit(client, "tensors", hp=ENDLESS)["id"]
            wait_for(lambda: body(client.get(f"/v1/jobs/{cancelled}"))["step"] > 0, timeout=60)
            assert client.post(f"/v1/jobs/{cancelled}/cancel").status_code == 202
            finished.append(cancelled)
            statuses = [wait_final(client, i)["status"] for i in finished]
            assert statuses == ["succeeded", "succeeded", "failed", "cancelled"]

            before = _snapshot(first, finished)

            interrupted = submit(client, "tensors", hp=ENDLESS, seed=3)["id"]

            subscribed = threading.Event()

            def watch() -> Stream | Exception:
                try:
                    with first.client() as watcher:
                        return read_events(
                            watcher, interrupted, on_event=lambda _: subscribed.set()
                        )
                except Exception as exc:  # a broken stream: reported by the test below
                    return exc

            watching = pool.submit(watch)
            wait_for(subscribed.is_set)
            wait_for(lambda: body(client.get(f"/v1/jobs/{interrupted}"))["step"] > 100)

            began = time.monotonic()
            exit_code = first.stop(signal.SIGTERM)
            stop_seconds = time.monotonic() - began
            stream = watching.result(timeout=30)
        ((step_at_stop,),) = first.query("SELECT step FROM jobs WHERE id = :id", id=interrupted)

        second = Server(data_dir, {"TRAINWIRE_CPU_WORKERS": "2"})
        servers.append(second.start())
        yield {
            "first": first,
            "second": second,
            "finished": finished,
            "before": before,
            "exit_code": exit_code,
            "stop_seconds": stop_seconds,
            "stream": stream,
            "interrupted": interrupted,
            "step_at_stop": step_at_stop,
        }
    finally:
        for server in servers:
            if server.process is not None and server.process.poll() is None:
                server.stop(signal.SIGKILL)


def test_sigterm_with_an_open_stream_exits_promptly_and_cleanly(restart: dict[str, Any]) -> None:
    assert restart["exit_code"] == 0, restart["first"].log()[-3000:]
    # well before uvicorn's own graceful-shutdown timeout (8 s) would cut the stream
    assert restart["stop_seconds"] < 6
    # the server ended the stream (no broken read) without pretending that the job had ended
    stream = restart["stream"]
    assert isinstance(stream, Stream), repr(stream)
    assert stream.events[0].event == "status"
    assert not any(s["status"] in FINAL for s in stream.statuses), "it ended before the stop"
    assert stream.steps == list(range(len(stream.steps))) and len(stream.steps) > 100


def test_finished_jobs_and_their_losses_are_unchanged(restart: dict[str, Any]) -> None:
    assert _snapshot(restart["second"], restart["finished"]) == restart["before"]
    for job_id in restart["finished"]:
        assert restart["before"]["losses"][job_id][0] == list(
            range(restart["before"]["jobs"][job_id]["step"])
        )


def test_finished_jobs_replay_their_streams_after_restart(restart: dict[str, Any]) -> None:
    with restart["second"].client() as client:
        for job_id in restart["finished"]:
            job = restart["before"]["jobs"][job_id]
            stream = read_events(client, job_id)
            stream.assert_complete(first_step=0, final_status=job["status"])
            assert (stream.steps, stream.losses) == restart["before"]["losses"][job_id]


def test_a_job_interrupted_by_the_shutdown_runs_again_to_the_same_losses(
    restart: dict[str, Any],
) -> None:
    job_id, step_at_stop = restart["interrupted"], restart["step_at_stop"]
    assert step_at_stop > 100
    with restart["second"].client() as client:

        def cancelled_past(job: str, step: int) -> dict[str, Any]:
            """Wait until `job` has run past `step`, then cancel it; its final object."""
            wait_for(lambda: body(client.get(f"/v1/jobs/{job}"))["step"] > step, timeout=90)
            assert client.post(f"/v1/jobs/{job}/cancel").status_code == 202
            return wait_final(client, job)

        # it runs again, past where the stop left it (what was stored is recomputed, not
        # stored twice)
        job = cancelled_past(job_id, step_at_stop + 100)
        assert job["status"] == "cancelled", job
        assert job["attempts"] == 2
        resumed = all_losses(client, job_id)
        assert resumed[0] == list(range(job["step"]))

        # the same spec and seed run from scratch: the resumed run is indistinguishable from it
        fresh = cancelled_past(submit(client, "tensors", hp=ENDLESS, seed=3)["id"], job["step"])
        fresh_losses = all_losses(client, fresh["id"])[1][: job["step"]]
        assert [x.hex() for x in fresh_losses] == [x.hex() for x in resumed[1]]
