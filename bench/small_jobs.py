"""small_jobs: 500 default jobs end to end through the API against the same runs in a plain loop.

The jobs: the eight variants in turn (job i runs variant i mod 8 with seed i), every
hyperparameter at its default (the tutorial's sizes, 50 steps).

API: a server with its defaults (2 CPU workers, elastic threads: a job gets the cores free when it
starts, so a burst runs one thread per job); the client posts every job on one keep-alive
connection, then polls the list for queued or running jobs every 50 ms. The wall
time runs from the first POST to the last job's finished_at (the same clock); every job must have
succeeded.

Plain: a fresh subprocess (`python -m bench.small_jobs --plain N WORKERS`) runs the same jobs with
`run_job` and a sink that drops the losses, on a ThreadPoolExecutor of as many threads as the
server has CPU workers, each with `torch.set_num_threads(1)`, numpy's BLAS capped to 1 thread.
Both sides first run one job of each variant as a warm-up. Runs alternate between the two; the
ratio is plain wall / API wall (1.0: the service costs nothing).
Reproduce: `.venv/bin/python -m bench small_jobs` (`--quick`: 24 jobs).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

from bench.common import (
    ROOT,
    Conn,
    Figure,
    iso_epoch,
    list_all,
    median,
    met_text,
    print_table,
    reproduce,
    server,
    standalone,
    submit,
    use_uvloop,
    wait_idle,
)
from workers.variants import VARIANTS as VARIANT_CATALOGUE

NAME = "small_jobs"
ORDER = tuple(VARIANT_CATALOGUE)
WORKERS = 2  # CPU workers of the server (its default on 2 cores); the plain loop's threads
TARGET = 0.9


def plain(count: int, workers: int) -> None:
    """Run the jobs with run_job on a thread pool; print {"wall": s, "failed": n} as JSON."""
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from threadpoolctl import threadpool_limits

    from trainwire.jobs import JobSpec
    from workers.hyperparameters import Limits, parse_hyperparameters
    from workers.runner import run_job
    from workers.variants import VARIANTS

    threadpool_limits(limits=1, user_api="blas")

    def spec(i: int) -> JobSpec:
        variant = ORDER[i % len(ORDER)]
        hp = parse_hyperparameters(VARIANTS[variant].hyperparameters, {}, variant, Limits())
        return JobSpec(variant, hp, i)

    def drop(first_step: int, losses: list[float]) -> None:
        pass

    with ThreadPoolExecutor(workers, initializer=lambda: torch.set_num_threads(1)) as pool:
        for outcome in pool.map(lambda s: run_job(s, drop), [spec(i) for i in range(8)]):
            assert outcome.status == "succeeded", outcome
        specs = [spec(i) for i in range(count)]
        began = time.perf_counter()
        outcomes = list(pool.map(lambda s: run_job(s, drop), specs))
        wall = time.perf_counter() - began
    failed = sum(o.status != "succeeded" for o in outcomes)
    print(json.dumps({"wall": wall, "failed": failed}), flush=True)


def plain_run(count: int) -> float:
    done = subprocess.run(
        [sys.executable, "-m", "bench.small_jobs", "--plain", str(count), str(WORKERS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"plain run failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["failed"]:
        raise RuntimeError(f"plain run: {result['failed']} jobs failed")
    return float(result["wall"])


async def api_run(port: int, count: int) -> dict[str, float]:
    conn = await Conn.open(port)
    try:
        ids = []
        began_epoch, began = time.time(), time.perf_counter()
        for i in range(count):
            job = await submit(conn, {"variant": ORDER[i % len(ORDER)], "seed": i})
            ids.append(job["id"])
        submitted = time.perf_counter() - began
        await wait_idle(conn, timeout=600, interval=0.05)
        seen = time.perf_counter() - began
        wanted = set(ids)
        jobs = [j for j in await list_all(conn) if j["id"] in wanted]
    finally:
        await conn.close()
    bad = [j for j in jobs if j["status"] != "succeeded"]
    if len(jobs) != count or bad:
        raise RuntimeError(f"{len(jobs)} of {count} jobs listed, {len(bad)} not succeeded")
    last = max(iso_epoch(j["finished_at"]) for j in jobs)
    return {"wall": last - began_epoch, "seen": seen, "submitted": submitted}


async def warm_up(port: int) -> None:
    conn = await Conn.open(port)
    try:
        for i in range(len(ORDER)):
            await submit(conn, {"variant": ORDER[i], "seed": i})
        await wait_idle(conn, timeout=120)
    finally:
        await conn.close()


def run(quick: bool) -> list[Figure]:
    count = 24 if quick else 500
    reps = 1 if quick else 2
    print(f"## small_jobs: {count} default jobs (8 variants in turn), API vs plain loop\n")
    use_uvloop()
    plain_walls: list[float] = []
    api_results: list[dict[str, float]] = []
    with server(cpu_workers=WORKERS) as srv:  # elastic threads, the default
        asyncio.run(warm_up(srv.port))
        for rep in range(reps):
            order = ("plain", "api") if rep % 2 == 0 else ("api", "plain")
            for mode in order:
                if mode == "plain":
                    plain_walls.append(plain_run(count))
                else:
                    api_results.append(asyncio.run(api_run(srv.port, count)))

    plain_wall = median(plain_walls)
    api_wall = median([r["wall"] for r in api_results])
    ratio = plain_wall / api_wall
    met = ratio >= TARGET
    print_table(
        ["", "jobs", "runs", "wall (median)", "jobs/s", "ratio plain/API", "target", "met"],
        [
            (
                "API: first POST → last finished_at",
                count,
                reps,
                f"{api_wall:.2f} s",
                f"{count / api_wall:.1f}",
                f"{ratio:.3f}",
                f"≥ {TARGET}",
                met_text(met),
            ),
            (
                "· all submitted after",
                "",
                "",
                f"{median([r['submitted'] for r in api_results]):.2f} s",
                "",
                "",
                "",
                "",
            ),
            (
                "· client saw none left after",
                "",
                "",
                f"{median([r['seen'] for r in api_results]):.2f} s",
                "",
                "",
                "",
                "",
            ),
            (
                f"baseline: plain run_job, {WORKERS} threads",
                count,
                reps,
                f"{plain_wall:.2f} s",
                f"{count / plain_wall:.1f}",
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
            f"{count} default jobs: plain wall / API wall",
            f"{ratio:.3f} ({count / api_wall:.1f} jobs/s)",
            f"plain {count / plain_wall:.1f} jobs/s",
            f"≥ {TARGET}",
            met,
        )
    ]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--plain"]:
        plain(int(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit(standalone(NAME, run))
