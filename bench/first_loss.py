"""first_loss: on an idle server, from sending POST /v1/jobs to the first `loss` event received.

Each sample submits a small job (`numpy`, the tutorial's sizes, 5 steps), subscribes to its event
stream as soon as the 201 has arrived (on the same keep-alive connection), notes when the first
`loss` event arrives, and reads the stream to its end, so that the server is idle again before the
next sample. The client is the lean asyncio client of bench/common.py.

Baselines, measured in the same run: an HTTP round trip (GET /healthz on the same kind of
connection), and the compute of the job itself up to its first loss (`run_job` in this process,
one torch/BLAS thread, a sink that notes when it first gets called).
Reproduce: `.venv/bin/python -m bench first_loss` (`--quick`: fewer samples).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time

from bench.common import (
    Conn,
    Figure,
    met_text,
    ms,
    percentile,
    print_table,
    reproduce,
    server,
    standalone,
    use_uvloop,
)

NAME = "first_loss"
JOB_HP = {"steps": 5}
JOB = {"variant": "numpy", "hyperparameters": JOB_HP}
TARGET_P50 = 0.020
TARGET_P99 = 0.100


async def one_sample(conn: Conn, seed: int) -> tuple[float, float, float]:
    """(POST→201, POST→first loss event, POST→end of stream) in seconds."""
    began = time.perf_counter()
    response = await conn.request("POST", "/v1/jobs", {**JOB, "seed": seed})
    created = time.perf_counter()
    if response.status != 201:
        raise RuntimeError(f"POST /v1/jobs: {response.status} {response.body[:200]!r}")
    job_id = response.json()["id"]
    first = None
    statuses = []
    async for events in conn.events(f"/v1/jobs/{job_id}/events"):
        for kind, _id, data in events:
            if kind == "loss" and first is None:
                first = time.perf_counter()
            elif kind == "status":
                statuses.append(data)
    ended = time.perf_counter()
    if first is None or '"succeeded"' not in statuses[-1]:
        raise RuntimeError(f"job {job_id}: no loss event or not succeeded")
    return created - began, first - began, ended - began


async def measure(
    port: int, samples: int, warmup: int
) -> tuple[list[tuple[float, float, float]], list[float]]:
    conn = await Conn.open(port)
    try:
        rtts = []
        for _ in range(samples):
            began = time.perf_counter()
            response = await conn.request("GET", "/healthz")
            rtts.append(time.perf_counter() - began)
            assert response.status == 200
        results = []
        for i in range(warmup + samples):
            sample = await one_sample(conn, seed=i)
            if i >= warmup:
                results.append(sample)
            await asyncio.sleep(0.01)  # let the store's writer finish: an idle server each time
        return results, rtts
    finally:
        await conn.close()


def compute_to_first_loss(samples: int) -> list[float]:
    """Seconds from run_job's call to its sink's first call, in this process (1 thread)."""
    import torch
    from threadpoolctl import threadpool_limits

    from trainwire.jobs import JobSpec
    from workers.hyperparameters import Limits, parse_hyperparameters
    from workers.runner import run_job
    from workers.variants import VARIANTS

    hp = parse_hyperparameters(VARIANTS["numpy"].hyperparameters, dict(JOB_HP), "numpy", Limits())
    times: list[float] = []

    def work() -> None:
        torch.set_num_threads(1)
        for i in range(samples + 3):
            began = time.perf_counter()
            first: list[float] = []

            def sink(_step: int, _losses: list[float], first: list[float] = first) -> None:
                if not first:
                    first.append(time.perf_counter())

            run_job(JobSpec("numpy", hp, i), sink)
            if i >= 3:
                times.append(first[0] - began)

    with threadpool_limits(limits=1, user_api="blas"):
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
    return times


def run(quick: bool) -> list[Figure]:
    samples = 40 if quick else 200
    print(f"## first_loss: POST → first loss event on an idle server, {samples} jobs\n")
    use_uvloop()
    with server() as srv:
        results, rtts = asyncio.run(measure(srv.port, samples, warmup=5))
    compute = compute_to_first_loss(min(samples, 50))

    post = [r[0] for r in results]
    first = [r[1] for r in results]
    after_201 = [r[1] - r[0] for r in results]
    end = [r[2] for r in results]
    p50, p99 = percentile(first, 50), percentile(first, 99)

    def row(name: str, values: list[float], target: str = "", met: bool | None = None) -> tuple:
        return (
            name,
            len(values),
            ms(percentile(values, 50)),
            ms(percentile(values, 90)),
            ms(percentile(values, 99)),
            ms(max(values)),
            target,
            met_text(met) if target else "",
        )

    print_table(
        ["interval", "n", "p50", "p90", "p99", "max", "target", "met"],
        [
            row(
                "POST → first loss event",
                first,
                f"p50 ≤ {TARGET_P50 * 1000:.0f} ms, p99 ≤ {TARGET_P99 * 1000:.0f} ms",
                p50 <= TARGET_P50 and p99 <= TARGET_P99,
            ),
            row("· POST → 201", post),
            row("· 201 → first loss event", after_201),
            row("POST → end of stream (job done)", end),
            row("baseline: GET /healthz round trip", rtts),
            row("baseline: run_job → first loss, in process", compute),
        ],
    )
    reproduce(NAME, quick)
    base = f"healthz {ms(percentile(rtts, 50))}, compute {ms(percentile(compute, 50))} (p50)"
    return [
        Figure(NAME, "POST → first loss p50", ms(p50), base, "≤ 20 ms", p50 <= TARGET_P50),
        Figure(NAME, "POST → first loss p99", ms(p99), base, "≤ 100 ms", p99 <= TARGET_P99),
    ]


if __name__ == "__main__":
    sys.exit(standalone(NAME, run))
