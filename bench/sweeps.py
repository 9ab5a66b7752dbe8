"""sweeps: a sweep of 64 runs against the same 64 runs as separate jobs, through the API, on CPU.

The runs: `nn` with a grid of 16 learning rates x 4 seeds, at two sizes: the tutorial's (N=64,
D_in=1000, H=100, D_out=10; 300 steps) and a small one (N=8, D_in=20, H=10, D_out=2; 2,000 steps)
where a step costs less than the Python around it.

Three ways, each on a fresh server (2 CPU workers, 1 torch thread each):
  jobs:     64 POST /v1/jobs, one per run;
  sweep:    one POST /v1/sweeps, fuse false (64 plain jobs);
  fused:    one POST /v1/sweeps, fuse true (two batched groups of 32, one per worker, on one
            thread each; each run's curve is the same as the job alone with one thread).
The wall time runs from the first POST to the last run's finished_at (the same clock).
Reproduce: `.venv/bin/python -m bench sweeps` (`--quick`: 16 runs, fewer steps).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from bench.common import (
    Conn,
    Figure,
    iso_epoch,
    list_all,
    median,
    print_table,
    reproduce,
    server,
    standalone,
    submit,
    use_uvloop,
    wait_idle,
)

NAME = "sweeps"
WORKERS = 2
SIZES: dict[str, dict[str, Any]] = {
    "tutorial": {"steps": 300},
    "small": {"batch_size": 8, "d_in": 20, "hidden": 10, "d_out": 2, "steps": 2000},
}


def grid(runs: int) -> dict[str, list[Any]]:
    rates = [round(1e-5 * 1.25**i, 12) for i in range(runs // 4)]
    return {"learning_rate": rates, "seed": [0, 1, 2, 3]}


async def as_jobs(port: int, hp: dict[str, Any], runs: int) -> float:
    conn = await Conn.open(port)
    try:
        g = grid(runs)
        began = time.time()
        ids = []
        for rate in g["learning_rate"]:
            for seed in g["seed"]:
                job = {"variant": "nn", "hyperparameters": {**hp, "learning_rate": rate}}
                ids.append((await submit(conn, {**job, "seed": seed}))["id"])
        await wait_idle(conn, timeout=1800)
        wanted = set(ids)
        jobs = [j for j in await list_all(conn) if j["id"] in wanted]
    finally:
        await conn.close()
    return _wall(jobs, runs, began)


async def as_sweep(port: int, hp: dict[str, Any], runs: int, fuse: bool) -> float:
    conn = await Conn.open(port)
    try:
        body = {"variant": "nn", "hyperparameters": hp, "grid": grid(runs), "fuse": fuse}
        began = time.time()
        response = await conn.request("POST", "/v1/sweeps", body)
        if response.status != 201:
            raise RuntimeError(f"POST /v1/sweeps: {response.status} {response.body[:300]!r}")
        sweep_id = response.json()["id"]
        while True:
            sweep = (await conn.request("GET", f"/v1/sweeps/{sweep_id}")).json()
            if sweep["status"] in ("succeeded", "failed", "cancelled"):
                break
            await asyncio.sleep(0.05)
        jobs = await list_all(conn, f"&sweep={sweep_id}")
    finally:
        await conn.close()
    if fuse and not all((j["environment"] or {}).get("fused_runs") for j in jobs):
        raise RuntimeError("a run of the fused sweep did not run fused")
    return _wall(jobs, runs, began)


def _wall(jobs: list[dict[str, Any]], runs: int, began: float) -> float:
    bad = [j for j in jobs if j["status"] != "succeeded"]
    if len(jobs) != runs or bad:
        raise RuntimeError(f"{len(jobs)} of {runs} runs listed, {len(bad)} not succeeded")
    return max(iso_epoch(j["finished_at"]) for j in jobs) - began


def run(quick: bool) -> list[Figure]:
    runs = 16 if quick else 64
    reps = 1 if quick else 2
    print(f"## sweeps: {runs} nn runs as separate jobs, as a sweep, as a fused sweep (CPU)\n")
    use_uvloop()
    figures: list[Figure] = []
    rows = []
    for size, base in SIZES.items():
        hp = {**base, "steps": base["steps"] // (10 if quick else 1)}
        walls: dict[str, list[float]] = {"jobs": [], "sweep": [], "fused": []}
        for _ in range(reps):
            for mode in walls:
                # a fresh server each time: no mode finds the other's processes warm
                with server(cpu_workers=WORKERS, threads_per_cpu_job=1) as srv:
                    if mode == "jobs":
                        wall = asyncio.run(as_jobs(srv.port, hp, runs))
                    else:
                        wall = asyncio.run(as_sweep(srv.port, hp, runs, fuse=mode == "fused"))
                walls[mode].append(wall)
        jobs_wall = median(walls["jobs"])
        steps = runs * hp["steps"]
        for mode, label in (
            ("jobs", f"{runs} POST /v1/jobs"),
            ("sweep", "one sweep, fuse false"),
            ("fused", "one sweep, fuse true"),
        ):
            wall = median(walls[mode])
            rows.append(
                (
                    f"{size}: {label}",
                    f"{hp['steps']}",
                    f"{wall:.2f} s",
                    f"{runs / wall:.2f}",
                    f"{steps / wall:,.0f}",
                    f"{jobs_wall / wall:.2f}x",
                )
            )
        figures.append(
            Figure(
                NAME,
                f"{size} nn, {runs} runs: fused sweep vs separate jobs (CPU)",
                f"{jobs_wall / median(walls['fused']):.2f}x",
                f"jobs {runs / jobs_wall:.2f} runs/s",
                "-",
                None,
            )
        )
    print_table(["", "steps/run", "wall (median)", "runs/s", "steps/s", "vs jobs"], rows)
    reproduce(NAME, quick)
    return figures


if __name__ == "__main__":
    sys.exit(standalone(NAME, run))
