"""submit_rate: sustained POST /v1/jobs while the workers are busy.

The server runs one CPU worker with one torch thread (TRAINWIRE_CPU_WORKERS=1,
TRAINWIRE_THREADS_PER_CPU_JOB=1) and room for every job in its queue (TRAINWIRE_MAX_QUEUED=10^6);
a blocker job keeps the worker busy throughout, so every submitted job stays queued. Then N
keep-alive connections (asyncio, one request in flight each) post small jobs back to back for a
fixed time; the first half second is a warm-up and not counted. Baseline, same run, same client:
GET /healthz the same way (what the HTTP stack alone serves on this machine). Besides rates and
latencies: the CPU time per request of the server's event-loop thread (/proc/PID/task/PID/stat)
and of the whole server process (which includes the blocker job's).
The server is then stopped (by its PID) with its queue, and its data folder removed.
Reproduce: `.venv/bin/python -m bench submit_rate` (`--quick`: shorter).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from typing import Any

from bench.common import (
    Conn,
    Figure,
    met_text,
    ms,
    percentile,
    print_table,
    proc_cpu_seconds,
    reproduce,
    server,
    standalone,
    start_blockers,
    use_uvloop,
)

NAME = "submit_rate"
TARGET = 500.0
CONNECTIONS = 16
WARMUP = 0.5
JOB = {"variant": "numpy", "hyperparameters": {"steps": 5}, "seed": 0}


async def load(
    port: int, pid: int, method: str, path: str, body: Any, seconds: float
) -> dict[str, Any]:
    """CONNECTIONS clients sending back to back for `seconds`; rate and latency after WARMUP."""
    conns = [await Conn.open(port) for _ in range(CONNECTIONS)]
    began = time.perf_counter()
    count_from, stop_at = began + WARMUP, began + seconds
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    cpu_from: list[float] = []  # the server's CPU seconds (process, event-loop thread)

    async def client(conn: Conn) -> None:
        while True:
            sent = time.perf_counter()
            if sent >= stop_at:
                return
            response = await conn.request(method, path, body)
            done = time.perf_counter()
            if sent >= count_from:
                if not latencies:
                    cpu_from.extend([proc_cpu_seconds(pid), proc_cpu_seconds(pid, pid)])
                latencies.append(done - sent)
                statuses[response.status] += 1

    try:
        await asyncio.wait_for(asyncio.gather(*(client(c) for c in conns)), seconds + 60)
        ended = time.perf_counter()
        process_cpu = proc_cpu_seconds(pid) - cpu_from[0]
        loop_cpu = proc_cpu_seconds(pid, pid) - cpu_from[1]
    finally:
        for conn in conns:
            await conn.close()
    return {
        "rate": len(latencies) / (ended - count_from),
        "n": len(latencies),
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "max": max(latencies),
        "statuses": dict(statuses),
        "loop_cpu": loop_cpu / len(latencies),
        "process_cpu": process_cpu / len(latencies),
    }


def run(quick: bool) -> list[Figure]:
    seconds = 2.0 if quick else 6.0
    print(
        f"## submit_rate: POST /v1/jobs from {CONNECTIONS} connections for {seconds:g} s "
        f"(first {WARMUP:g} s not counted), the worker busy\n"
    )
    use_uvloop()
    with server(cpu_workers=1, threads_per_cpu_job=1, max_queued=1_000_000) as srv:

        async def phases() -> tuple[dict[str, Any], dict[str, Any]]:
            conn = await Conn.open(srv.port)
            try:
                await start_blockers(conn, 1)
            finally:
                await conn.close()
            health = await load(srv.port, srv.pid, "GET", "/healthz", None, seconds)
            posts = await load(srv.port, srv.pid, "POST", "/v1/jobs", JOB, seconds)
            return health, posts

        health, posts = asyncio.run(phases())

    ok = posts["statuses"].get(201, 0) == posts["n"]
    met = ok and posts["rate"] >= TARGET

    def row(name: str, r: dict[str, Any], target: str, m: bool | None, expect: int) -> tuple:
        bad = r["n"] - r["statuses"].get(expect, 0)
        return (
            name,
            r["n"],
            f"{r['rate']:,.0f}/s",
            ms(r["p50"]),
            ms(r["p99"]),
            ms(r["max"]),
            f"{r['loop_cpu'] * 1e6:.0f} µs",
            f"{r['process_cpu'] * 1e6:.0f} µs",
            bad,
            target,
            met_text(m) if target else "",
        )

    print_table(
        [
            "requests",
            "n",
            "rate",
            "p50",
            "p99",
            "max",
            "event-loop CPU / request",
            "server CPU / request (with the blocker's)",
            "not 2xx",
            "target",
            "met",
        ],
        [
            row("POST /v1/jobs (201)", posts, f"≥ {TARGET:.0f}/s", met, 201),
            row("baseline: GET /healthz", health, "", None, 200),
            (
                "ratio POST / healthz",
                "",
                f"{posts['rate'] / health['rate']:.2f}",
                "",
                "",
                "",
                "",
                "",
                "",
                "",
                "",
            ),
        ],
    )
    reproduce(NAME, quick)
    return [
        Figure(
            NAME,
            f"POST /v1/jobs rate, {CONNECTIONS} connections, worker busy",
            f"{posts['rate']:,.0f}/s (p50 {ms(posts['p50'])}, p99 {ms(posts['p99'])})",
            f"healthz {health['rate']:,.0f}/s",
            f"≥ {TARGET:.0f}/s",
            met,
        )
    ]


if __name__ == "__main__":
    sys.exit(standalone(NAME, run))
