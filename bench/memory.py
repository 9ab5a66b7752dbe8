"""memory: the server's resident memory as streams and jobs come and go, and the store's size.

One server with its defaults (2 CPU workers). Its VmRSS (/proc/PID/status) is read:
  1. idle, just started;
  2. idle after one job of each variant (torch and numpy warmed up): the baseline;
  3. with blocker jobs on both workers and a job queued behind them, no stream (the baseline for
     the next row);
  4. with 1,000 SSE streams open on that queued job (so they stay idle);
  5. after those streams ended (the job cancelled) and the blockers were cancelled;
  6. after 10,000 tiny jobs finished (`numpy`, 1-5 steps, d_in 10, hidden 10), submitted from 4
     connections in bursts of 500 that respect the queue limit;
  7. after 10 jobs of 100,000 steps each (`numpy`, batch 10, d_in 10, hidden 10, d_out 1).
The store: the SQLite file plus its WAL, after a checkpoint (`PRAGMA wal_checkpoint(TRUNCATE)`),
before and after step 7; the growth divided by the steps stored gives bytes per step.
Reproduce: `.venv/bin/python -m bench memory` (`--quick`: 200 streams, 300 jobs,
2 × 10,000 steps).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from bench.common import (
    FINAL,
    BenchServer,
    Conn,
    Figure,
    cancel,
    list_all,
    open_subscribers,
    print_table,
    raise_open_file_limit,
    reproduce,
    server,
    standalone,
    start_blockers,
    submit,
    use_uvloop,
    wait_idle,
    wait_job,
)
from workers.variants import VARIANTS as VARIANT_CATALOGUE

NAME = "memory"
ORDER = tuple(VARIANT_CATALOGUE)
WORKERS = 2
BURST = 500  # well under the default TRAINWIRE_MAX_QUEUED (1000)


def tiny_job(i: int) -> dict[str, Any]:
    return {
        "variant": "numpy",
        "hyperparameters": {"steps": 1 + i % 5, "d_in": 10, "hidden": 10},
        "seed": i,
    }


def long_job(i: int, steps: int) -> dict[str, Any]:
    return {
        "variant": "numpy",
        "hyperparameters": {
            "steps": steps,
            "batch_size": 10,
            "d_in": 10,
            "hidden": 10,
            "d_out": 1,
        },
        "seed": i,
    }


async def settle(srv: BenchServer, seconds: float = 1.0) -> int:
    """RSS in KiB after a short pause (finished requests' memory returned)."""
    await asyncio.sleep(seconds)
    return srv.rss_kib()


async def submit_burst(port: int, first: int, count: int, connections: int = 4) -> int:
    """Submit jobs first..first+count from several connections; returns how many got a 429."""
    refused = 0

    async def client(k: int) -> None:
        nonlocal refused
        conn = await Conn.open(port)
        try:
            for i in range(first + k, first + count, connections):
                while True:
                    response = await conn.request("POST", "/v1/jobs", tiny_job(i))
                    if response.status == 201:
                        break
                    if response.status != 429:
                        raise RuntimeError(f"POST /v1/jobs: {response.status}")
                    refused += 1
                    await asyncio.sleep(0.05)
        finally:
            await conn.close()

    await asyncio.gather(*(client(k) for k in range(connections)))
    return refused


async def measure(
    srv: BenchServer, streams: int, jobs: int, long_jobs: int, long_steps: int
) -> dict[str, Any]:
    r: dict[str, Any] = {"fresh": await settle(srv)}
    conn = await Conn.open(srv.port)
    try:
        for i, variant in enumerate(ORDER):
            await submit(conn, {"variant": variant, "hyperparameters": {"steps": 5}, "seed": i})
        await wait_idle(conn, 120)
        r["warm"] = await settle(srv)

        # streams held open on a queued job
        blockers = await start_blockers(conn, WORKERS)
        target = await submit(conn, tiny_job(0))
        r["blockers"] = await settle(srv)
        records, tasks, r["connect"] = await open_subscribers(srv.port, target["id"], streams, 120)
        r["streams"] = await settle(srv)
        await cancel(conn, target["id"])
        _, pending = await asyncio.wait(tasks, timeout=60)
        if pending:
            raise TimeoutError(f"{len(pending)} streams still open 60 s after the cancel")
        r["streams_ok"] = sum(rec.statuses[-1:] == ["cancelled"] for rec in records)
        for job_id in blockers:
            await cancel(conn, job_id)
            await wait_job(conn, job_id, lambda j: j["status"] in FINAL, 60)
        r["after_streams"] = await settle(srv)

        # many tiny jobs
        began = time.perf_counter()
        r["refused"] = 0
        for first in range(0, jobs, BURST):
            r["refused"] += await submit_burst(srv.port, first, min(BURST, jobs - first))
            await wait_idle(conn, 300)
        r["jobs_s"] = time.perf_counter() - began
        done = await list_all(conn, "&status=succeeded&variant=numpy")
        r["jobs_ok"] = sum(j["hyperparameters"]["d_in"] == 10 for j in done)
        r["after_jobs"] = await settle(srv)

        # the store's growth for long runs
        r["size_before"] = srv.checkpoint_size()
        began = time.perf_counter()
        ids = [(await submit(conn, long_job(i, long_steps)))["id"] for i in range(long_jobs)]
        await wait_idle(conn, 600, 0.2)
        r["long_s"] = time.perf_counter() - began
        for job_id in ids:
            job = await wait_job(conn, job_id, lambda j: j["status"] in FINAL, 10)
            if job["status"] != "succeeded" or job["step"] != long_steps:
                raise RuntimeError(f"long job {job_id}: {job['status']} at step {job['step']}")
        r["size_after"] = srv.checkpoint_size()
        r["after_long"] = await settle(srv)
    finally:
        await conn.close()
    return r


def run(quick: bool) -> list[Figure]:
    streams = 200 if quick else 1000
    jobs = 300 if quick else 10_000
    long_jobs, long_steps = (2, 10_000) if quick else (10, 100_000)
    raise_open_file_limit(max(4096, 2 * streams + 256))
    print(
        f"## memory: server RSS with {streams} streams and after {jobs:,} jobs; store size "
        f"for {long_jobs} × {long_steps:,} steps\n"
    )
    use_uvloop()
    with server(cpu_workers=WORKERS) as srv:
        r = asyncio.run(measure(srv, streams, jobs, long_jobs, long_steps))

    def mib(kib: int) -> str:
        return f"{kib / 1024:.1f} MiB"

    def delta(kib: int) -> str:
        return f"{(kib - r['warm']) / 1024:+.1f} MiB"

    steps = long_jobs * long_steps
    per_stream = (r["streams"] - r["blockers"]) / streams
    per_step = (r["size_after"] - r["size_before"]) / steps
    print_table(
        ["state", "RSS", "vs baseline", "per item"],
        [
            ("idle, just started", mib(r["fresh"]), delta(r["fresh"]), ""),
            ("baseline: idle after one job per variant", mib(r["warm"]), "", ""),
            (
                f"{WORKERS} blocker jobs running, a job queued, no stream",
                mib(r["blockers"]),
                delta(r["blockers"]),
                "",
            ),
            (
                f"{streams} streams open on the queued job ({r['streams_ok']} ended cleanly)",
                mib(r["streams"]),
                delta(r["streams"]),
                f"{per_stream:.1f} KiB/stream (vs the row above)",
            ),
            ("streams closed", mib(r["after_streams"]), delta(r["after_streams"]), ""),
            (
                f"after {jobs:,} more jobs ({r['jobs_ok']:,} succeeded, {r['jobs_s']:.1f} s, "
                f"{r['refused']} × 429)",
                mib(r["after_jobs"]),
                delta(r["after_jobs"]),
                f"{(r['after_jobs'] - r['after_streams']) * 1024 / jobs:.0f} B/job",
            ),
            (
                f"after {long_jobs} × {long_steps:,} steps ({r['long_s']:.1f} s)",
                mib(r["after_long"]),
                delta(r["after_long"]),
                "",
            ),
        ],
    )
    print_table(
        ["store (SQLite file + WAL, checkpointed)", "size", "per step", "per million steps"],
        [
            (
                f"before the long jobs ({jobs:,} small jobs stored)",
                f"{r['size_before'] / 2**20:.1f} MiB",
                "",
                "",
            ),
            (
                f"after {steps:,} more steps",
                f"{r['size_after'] / 2**20:.1f} MiB",
                f"{per_step:.1f} B",
                f"{per_step:.1f} MB",
            ),
        ],
    )
    reproduce(NAME, quick)
    return [
        Figure(
            NAME,
            f"RSS with {streams} streams open",
            f"{r['streams'] / 1024:.0f} MiB ({per_stream:.1f} KiB/stream)",
            f"without streams {r['blockers'] / 1024:.0f} MiB",
            "-",
            None,
        ),
        Figure(
            NAME,
            f"RSS after {jobs:,} finished jobs",
            f"{r['after_jobs'] / 1024:.0f} MiB",
            f"idle {r['warm'] / 1024:.0f} MiB",
            "-",
            None,
        ),
        Figure(NAME, "store size per million steps", f"{per_step:.1f} MB", "-", "-", None),
    ]


if __name__ == "__main__":
    sys.exit(standalone(NAME, run))
