"""GET /metrics: Prometheus's text format, behind the token, with what the jobs, workers, streams
and requests of this process did."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from servers import Server, submit, wait_final, wait_for

TOKEN = "metrics-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def scrape(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_metrics_need_the_token_when_the_server_has_one(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(TRAINWIRE_API_TOKEN=TOKEN, TRAINWIRE_CPU_WORKERS="1")
    with server.client() as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = client.get("/metrics", headers=headers)
            assert response.status_code == 401, response.text
            assert response.headers["www-authenticate"] == "Bearer"
    with server.client(headers=AUTH) as client:
        samples = scrape(client)
    assert value(samples, "trainwire_workers", device="cpu", state="idle") == 1
    assert value(samples, "trainwire_jobs", status="queued") == 0


def test_metrics_count_jobs_steps_streams_and_requests(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(TRAINWIRE_CPU_WORKERS="1", TRAINWIRE_API_TOKEN=TOKEN)
    with server.client(headers=AUTH) as client:
        ok = submit(client, "numpy", hp={"steps": 40}, seed=1)
        diverged = submit(client, "numpy", hp={"steps": 50, "learning_rate": 1.0}, seed=2)
        assert wait_final(client, ok["id"])["status"] == "succeeded"
        failed = wait_final(client, diverged["id"])
        assert failed["error"]["code"] == "diverged"

        # a long job holds the worker; one queued behind it has a stream open on it
        long = submit(client, "tensors", hp={"steps": 1_000_000, "learning_rate": 1e-9}, seed=3)
        queued = submit(client, "nn", hp={"steps": 5}, seed=4)
        wait_for(lambda: client.get(f"/v1/jobs/{long['id']}").json()["status"] == "running")
        with client.stream("GET", f"/v1/jobs/{queued['id']}/events") as stream:
            lines = stream.iter_lines()
            assert next(lines) == "event: status"  # subscribed

            live = scrape(client)
            assert value(live, "trainwire_jobs", status="running") == 1
            assert value(live, "trainwire_jobs", status="queued") == 1
            assert value(live, "trainwire_workers", device="cpu", state="busy") == 1
            assert value(live, "trainwire_workers", device="cpu", state="idle") == 0
            assert value(live, "trainwire_event_streams") == 1

            assert client.post(f"/v1/jobs/{long['id']}/cancel").status_code == 202
            for _ in lines:  # the queued job runs, and its stream ends with it
                pass
        for job in (long, queued):
            assert wait_final(client, job["id"])["status"] in ("cancelled", "succeeded")
        stored = client.get(f"/v1/jobs/{long['id']}").json()["step"]
        wait_for(lambda: value(scrape(client), "trainwire_event_streams") == 0)

        samples = scrape(client)
    assert value(samples, "trainwire_jobs_submitted_total", variant="numpy") == 2
    assert value(samples, "trainwire_jobs_submitted_total", variant="tensors") == 1
    assert value(samples, "trainwire_jobs_finished_total", **_fin("numpy", "succeeded", "")) == 1
    assert value(samples, "trainwire_jobs_finished_total", **_fin("numpy", "failed", "diverged"))
    assert value(samples, "trainwire_jobs_finished_total", **_fin("tensors", "cancelled", "")) == 1
    assert value(samples, "trainwire_jobs_finished_total", **_fin("nn", "succeeded", "")) == 1
    # every step that ran: 40, the diverged job's up to its NaN, what the long one stored, 5
    numpy_steps = value(samples, "trainwire_steps_total", variant="numpy", device="cpu")
    assert numpy_steps == 40 + failed["step"]
    assert value(samples, "trainwire_steps_total", variant="tensors", device="cpu") == stored
    assert value(samples, "trainwire_queue_wait_seconds_count", variant="numpy") == 2
    assert value(samples, "trainwire_job_duration_seconds_count", variant="nn", status="succeeded")
    assert value(samples, "trainwire_event_streams") == 0
    assert value(samples, "trainwire_jobs", status="queued") == 0
    assert value(samples, "trainwire_jobs", status="running") == 0
    assert (value(samples, "trainwire_store_commit_seconds_count") or 0) > 0
    assert value(samples, "trainwire_worker_restarts_total", device="cpu") == 0
    # requests by their route's template, not their path
    by_route = _http(samples, "GET", "/v1/jobs/{job_id}", "200")
    assert by_route is not None and by_route > 0
    assert _http(samples, "POST", "/v1/jobs", "201") == 4
    assert _http(samples, "GET", "/v1/jobs/{job_id}/events", "200") == 1
    assert not [k for k in samples if ("route", f"/v1/jobs/{ok['id']}") in k[1]]


def _fin(variant: str, status: str, error: str) -> dict[str, str]:
    return {"variant": variant, "status": status, "error": error}


def _http(samples: dict[Any, float], method: str, route: str, status: str) -> float | None:
    labels = {"method": method, "route": route, "status": status}
    return value(samples, "trainwire_http_requests_total", **labels)


def test_unknown_paths_share_one_series(make_server: Callable[..., Server]) -> None:
    server = make_server(TRAINWIRE_CPU_WORKERS="1")
    with server.client() as client:
        for i in range(5):
            assert client.get(f"/no/such/path/{i}").status_code == 404
        assert client.request("FROB", "/healthz").status_code in (400, 405)
        samples = scrape(client)
    assert _http(samples, "GET", "unmatched", "404") == 5
    routes = {dict(k[1]).get("route") for k in samples if k[0] == "trainwire_http_requests_total"}
    assert not any(r and r.startswith("/no/") for r in routes), routes


def _worker_processes(pid: int) -> list[int]:
    """The server's worker processes (its `spawn`ed children)."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    cmdlines = {c: Path(f"/proc/{c}/cmdline").read_bytes() for c in children}
    return [c for c, line in cmdlines.items() if b"spawn_main" in line]


def test_a_replaced_worker_process_is_counted(make_server: Callable[..., Server]) -> None:
    server = make_server(TRAINWIRE_CPU_WORKERS="1")
    assert server.process is not None
    with server.client() as client:
        long = submit(client, "tensors", hp={"steps": 1_000_000, "learning_rate": 1e-9}, seed=1)
        wait_for(lambda: client.get(f"/v1/jobs/{long['id']}").json()["step"] > 0, timeout=60)
        [child] = wait_for(lambda: _worker_processes(server.process.pid), timeout=30)
        assert value(scrape(client), "trainwire_worker_restarts_total", device="cpu") == 0
        os.kill(child, signal.SIGKILL)
        assert wait_final(client, long["id"])["error"]["code"] == "internal"
        job = submit(client, "numpy", hp={"steps": 5}, seed=1)  # taken by a fresh child
        assert wait_final(client, job["id"], timeout=120)["status"] == "succeeded"
        samples = scrape(client)
    assert value(samples, "trainwire_worker_restarts_total", device="cpu") == 1
    assert value(samples, "trainwire_jobs_finished_total", **_fin("tensors", "failed", "internal"))


def test_apps_in_one_process_keep_their_metrics_apart() -> None:
    from app.main import create_app
    from app.settings import Settings

    first = create_app(Settings(database_url="sqlite://"))
    second = create_app(Settings(database_url="sqlite://"))  # no "Duplicated timeseries"
    assert first.state.metrics.registry is not second.state.metrics.registry


def test_the_streams_gauge_counts_each_stream_once_with_a_token(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(TRAINWIRE_API_TOKEN=TOKEN, TRAINWIRE_CPU_WORKERS="1")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    tiny = {"batch_size": 8, "d_in": 20, "hidden": 10, "d_out": 2, "steps": 1_000_000}
    with server.client(headers=auth) as client:
        job = submit(client, "tensors", hp=tiny)
        made = client.post(
            "/v1/sweeps", json={"variant": "numpy", "grid": {"seed": [1, 2, 3]}}
        ).json()
        with (
            httpx.Client(base_url=server.url, timeout=30) as browser,  # EventSource: no headers
            client.stream("GET", f"/v1/jobs/{job['id']}/events") as job_stream,
            browser.stream(
                "GET", f"/v1/sweeps/{made['id']}/events", params={"access_token": TOKEN}
            ) as sweep_stream,
        ):
            assert job_stream.status_code == sweep_stream.status_code == 200
            # held: an iterator dropped would close its stream
            lines = job_stream.iter_lines(), sweep_stream.iter_lines()
            assert [next(each) for each in lines] == ["event: status", "event: sweep"]
            # one job stream and one sweep stream (of three runs): two streams
            assert value(scrape(client), "trainwire_event_streams") == 2
        client.post(f"/v1/jobs/{job['id']}/cancel")
        wait_for(lambda: value(scrape(client), "trainwire_event_streams") == 0)
