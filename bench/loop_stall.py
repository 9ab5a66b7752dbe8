"""loop_stall: the slowest GET /healthz while the worst requests a body may hold are answered.

A thread polls /healthz back to back while other threads send, one after another, the largest
POST /v1/sweeps a 1 MiB body allows (~150,000 seeds in one grid field; and the same with one
value repeated at its end) and a 1 MiB POST /v1/jobs label-and-hyperparameters body. Each
request must be refused (422); the figure is the slowest /healthz answer meanwhile, against the
slowest on an idle server (the baseline, measured first in the same run).
Reproduce: `.venv/bin/python -m bench loop_stall` (`--quick`: fewer rounds).
"""

from __future__ import annotations

import json
import sys
import threading
import time

import httpx

from bench.common import (
    Figure,
    met_text,
    ms,
    percentile,
    print_table,
    reproduce,
    server,
    standalone,
)

NAME = "loop_stall"
TARGET = 1.0  # seconds: the slowest /healthz while the worst request is answered
BODY_LIMIT = 1 << 20


def worst_bodies() -> list[tuple[str, bytes]]:
    seeds = list(range(160_000))
    while len(json.dumps({"variant": "nn", "grid": {"seed": seeds}})) > BODY_LIMIT:
        seeds = seeds[: len(seeds) - 500]
    repeated = [*seeds[:-1], 0]
    hp = {f"x{i}": i for i in range(60_000)}  # unknown fields: one error each
    while len(json.dumps({"variant": "nn", "hyperparameters": hp})) > BODY_LIMIT:
        hp.popitem()
    return [
        ("/v1/sweeps", json.dumps({"variant": "nn", "grid": {"seed": seeds}}).encode()),
        ("/v1/sweeps", json.dumps({"variant": "nn", "grid": {"seed": repeated}}).encode()),
        ("/v1/jobs", json.dumps({"variant": "nn", "hyperparameters": hp}).encode()),
    ]


def poll(url: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(base_url=url, timeout=120) as client:
        while not stop.is_set():
            began = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            out.append(time.perf_counter() - began)


def run(quick: bool) -> list[Figure]:
    rounds = 2 if quick else 10
    print(f"## loop_stall: /healthz while the worst 1 MiB requests are answered, {rounds} rounds\n")
    bodies = worst_bodies()
    with server() as srv:
        idle: list[float] = []
        stop = threading.Event()
        poller = threading.Thread(target=poll, args=(srv.url, stop, idle))
        poller.start()
        time.sleep(2.0)
        stop.set()
        poller.join()
        busy: list[float] = []
        answers: list[float] = []
        stop = threading.Event()
        poller = threading.Thread(target=poll, args=(srv.url, stop, busy))
        poller.start()
        with httpx.Client(base_url=srv.url, timeout=300) as client:
            for _ in range(rounds):
                for path, content in bodies:
                    began = time.perf_counter()
                    response = client.post(
                        path, content=content, headers={"content-type": "application/json"}
                    )
                    answers.append(time.perf_counter() - began)
                    assert response.status_code == 422, (path, response.status_code)
        stop.set()
        poller.join()
    worst = max(busy)
    met = worst <= TARGET
    print_table(
        ["what", "n", "p50", "p99", "max", "target", "met"],
        [
            ("GET /healthz, idle server (baseline)", len(idle), ms(percentile(idle, 50)),
             ms(percentile(idle, 99)), ms(max(idle)), "", ""),
            ("GET /healthz during the worst requests", len(busy), ms(percentile(busy, 50)),
             ms(percentile(busy, 99)), ms(worst), f"max ≤ {TARGET * 1000:.0f} ms", met_text(met)),
            ("the worst requests themselves (422)", len(answers), ms(percentile(answers, 50)),
             ms(percentile(answers, 99)), ms(max(answers)), "", ""),
        ],
    )  # fmt: skip
    reproduce(NAME, quick)
    return [Figure(NAME, "slowest /healthz", ms(worst), f"idle {ms(max(idle))}", "≤ 1 s", met)]


if __name__ == "__main__":
    sys.exit(standalone(NAME, run))
