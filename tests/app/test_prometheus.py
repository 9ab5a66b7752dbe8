"""A real Prometheus (Debian's `prometheus`) scrapes a real server with its token, and its query
API gives back what the jobs did; the documented alert rules load in it."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import ROOT, Server, free_port, submit, wait_final, wait_for

PROMETHEUS = Path("/usr/bin/prometheus")
ALERTS = ROOT / "docs" / "prometheus" / "alerts.yml"
TOKEN = "scrape-token"

CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - {alerts}
scrape_configs:
  - job_name: trainwire
    metrics_path: /metrics
    authorization:
      credentials: {token}
    static_configs:
      - targets: ["{target}"]
  - job_name: without-token
    metrics_path: /metrics
    static_configs:
      - targets: ["{target}"]
"""


class Prometheus:
    """A Prometheus process on 127.0.0.1, its data in a temporary folder; stopped by its PID."""

    def __init__(self, folder: Path, target: str):
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "prometheus.yml"
        config.write_text(CONFIG.format(alerts=json.dumps(str(ALERTS)), token=TOKEN, target=target))
        self.port = free_port()
        self.log_path = folder / "prometheus.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    str(PROMETHEUS),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={folder / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"prometheus exited:\n{self.log_path.read_text()[-3000:]}")
        try:
            return self.client.get("/-/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector of a PromQL query."""
        answer = self.client.get("/api/v1/query", params={"query": promql}).json()
        assert answer["status"] == "success", answer
        return list(answer["data"]["result"])

    def value(self, promql: str) -> float | None:
        """The single value of a query, or None while it has no result."""
        result = self.query(promql)
        return float(result[0]["value"][1]) if len(result) == 1 else None

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[Server], Prometheus]]:
    """Factory: prometheus(server) starts a Prometheus that scrapes the server every second."""
    if not PROMETHEUS.exists():
        pytest.skip(f"{PROMETHEUS} is missing: `make prometheus-deps` installs Debian's prometheus")
    started: list[Prometheus] = []

    def start(server: Server) -> Prometheus:
        instance = Prometheus(tmp_path / f"prometheus{len(started)}", f"127.0.0.1:{server.port}")
        started.append(instance)
        wait_for(instance.ready, timeout=60, interval=0.1)
        return instance

    yield start
    for instance in started:
        instance.stop()


def test_prometheus_scrapes_what_the_jobs_did(
    make_server: Callable[..., Server], prometheus: Callable[[Server], Prometheus]
) -> None:
    server = make_server(TRAINWIRE_API_TOKEN=TOKEN, TRAINWIRE_CPU_WORKERS="2")
    scraper = prometheus(server)
    with server.client(headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        jobs = [submit(client, "numpy", hp={"steps": 20}, seed=i) for i in range(3)]
        jobs.append(submit(client, "nn", hp={"steps": 30}, seed=9))
        jobs.append(submit(client, "numpy", hp={"steps": 50, "learning_rate": 1.0}, seed=1))
        finished = [wait_final(client, job["id"]) for job in jobs]
    assert [job["status"] for job in finished] == ["succeeded"] * 4 + ["failed"]
    diverged_steps = finished[-1]["step"]

    expectations = {
        'up{job="trainwire"}': 1,
        'up{job="without-token"}': 0,  # 401: the token guards /metrics too
        'sum(trainwire_jobs_submitted_total{job="trainwire"})': 5,
        'trainwire_jobs_finished_total{variant="numpy", status="succeeded", error=""}': 3,
        'trainwire_jobs_finished_total{variant="numpy", status="failed", error="diverged"}': 1,
        'trainwire_steps_total{variant="numpy", device="cpu"}': 60 + diverged_steps,
        'trainwire_steps_total{variant="nn", device="cpu"}': 30,
        "sum(trainwire_queue_wait_seconds_count)": 5,
        'trainwire_job_duration_seconds_count{variant="nn", status="succeeded"}': 1,
        'sum(trainwire_jobs{status=~"queued|running"})': 0,
        'sum(trainwire_workers{device="cpu", state="idle"})': 2,
        'trainwire_worker_restarts_total{device="cpu"}': 0,
        "trainwire_event_streams": 0,
        'trainwire_http_requests_total{method="POST", route="/v1/jobs", status="201"}': 5,
    }
    for promql, expected in expectations.items():
        try:
            wait_for(lambda q=promql, e=expected: scraper.value(q) == e, timeout=30, interval=0.2)
        except AssertionError:
            seen = scraper.query(promql)
            raise AssertionError(f"{promql}: {seen}, expected {expected}") from None

    # the requests by route template, never one series per job id
    routes = {r["metric"]["route"] for r in scraper.query("trainwire_http_requests_total")}
    assert "/v1/jobs/{job_id}" in routes, routes
    assert not any(job["id"] in route for route in routes for job in jobs), routes
    assert (scraper.value("sum(trainwire_store_commit_seconds_count)") or 0) > 0

    # the documented alert rules load and evaluate; none fires on this healthy server
    rules = wait_for(lambda: _rules(scraper), timeout=30, interval=0.2)
    assert {rule["name"] for rule in rules} >= {
        "TrainwireDown",
        "TrainwireQueueGrowing",
        "TrainwireWorkerRestarts",
        "TrainwireJobsFailing",
    }
    assert all(rule["health"] == "ok" for rule in rules), [r for r in rules if r["health"] != "ok"]
    assert not scraper.query('ALERTS{alertname=~"Trainwire.*", alertstate="firing"}')


def _rules(scraper: Prometheus) -> list[dict[str, Any]] | None:
    """The alerting rules once each has been evaluated at least once."""
    groups = scraper.client.get("/api/v1/rules").json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    if not rules or any(not rule.get("lastEvaluation", "").startswith("2") for rule in rules):
        return None
    return rules
