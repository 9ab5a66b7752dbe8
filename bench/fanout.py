"""fanout: 1,000 concurrent SSE subscribers on one 500-step job.

The server runs one CPU worker with one torch thread (TRAINWIRE_CPU_WORKERS=1,
TRAINWIRE_THREADS_PER_CPU_JOB=1). Each trial occupies the worker with a blocker job, submits the
target (`optim` at the tutorial's sizes, 500 steps), opens the subscribers on the queued target
and waits until every one has its first `status` event, then cancels the blocker so that the
target runs with all subscribers attached. The baseline trials do the same with no subscriber
(the client polls the job every 100 ms instead). Trials alternate between the two.

Per trial: the job's training time (its started_at → finished_at), whether every subscriber got
every step exactly once and in order and the final status, and the delay from the job's finish
(finished_at) to the first and to the last subscriber's end of stream. The subscribers are
asyncio streams in this process (the client), the server is its own process; the CPU seconds each
process used during the trial show whether the client kept up.
Reproduce: `.venv/bin/python -m bench fanout` (`--quick`: 200 subscribers). Needs an open-file
limit above the subscriber count (the benchmark raises its soft limit; the server inherits it);
where the hard limit is lower, run `ulimit -n 4096` first.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from typing import Any

from bench.common import (
    FINAL,
    Conn,
    Figure,
    Subscriber,
    cancel,
    iso_epoch,
    lower_priority,
    median,
    met_text,
    open_subscribers,
    print_table,
    proc_cpu_seconds,
    raise_open_file_limit,
    reproduce,
    server,
    standalone,
    start_blockers,
    submit,
    use_uvloop,
    wait_job,
)

NAME = "fanout"
STEPS = 500
TARGET_RATIO = 1.10
TARGET_DELAY = 2.0
CLIENT_NICE = 10  # the 1,000 subscribers stand in for browsers on other machines


async def trial(port: int, pid: int, subscribers: int, timeout: float) -> dict[str, Any]:
    conn = await Conn.open(port)
    tasks: list[asyncio.Task[None]] = []
    try:
        [blocker] = await start_blockers(conn, 1)
        target = await submit(
            conn, {"variant": "optim", "hyperparameters": {"steps": STEPS}, "seed": 7}
        )
        records: list[Subscriber] = []
        connect_s = 0.0
        if subscribers:
            records, tasks, connect_s = await open_subscribers(
                port, target["id"], subscribers, timeout
            )
        server_cpu, client_cpu = proc_cpu_seconds(pid), time.process_time()
        await cancel(conn, blocker)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending:
                raise TimeoutError(f"{len(pending)} streams still open after {timeout} s")
        job = await wait_job(conn, target["id"], lambda j: j["status"] in FINAL, timeout, 0.1)
        server_cpu = proc_cpu_seconds(pid) - server_cpu
        client_cpu = time.process_time() - client_cpu
        await wait_job(conn, blocker, lambda j: j["status"] in FINAL, timeout)
    finally:
        for task in tasks:
            task.cancel()
        await conn.close()
    if job["status"] != "succeeded":
        raise RuntimeError(f"target job ended {job['status']}: {job['error']}")
    finished = iso_epoch(job["finished_at"])
    ends = [r.ended_at for r in records]
    return {
        "subscribers": subscribers,
        "train": finished - iso_epoch(job["started_at"]),
        "complete": sum(r.complete(STEPS) for r in records),
        "errors": [r.error for r in records if r.error][:3],
        "first_end": min(ends) - finished if ends else math.nan,
        "last_end": max(ends) - finished if ends else math.nan,
        "connect": connect_s,
        "chunks": median([r.chunks for r in records]) if records else math.nan,
        "server_cpu": server_cpu,
        "client_cpu": client_cpu,
    }


def run(quick: bool) -> list[Figure]:
    subscribers = 200 if quick else 1000
    pairs = 1 if quick else 5
    limit = raise_open_file_limit(max(4096, 2 * subscribers + 256))
    if limit < subscribers + 64:
        raise RuntimeError(f"open-file limit {limit} is too low: run `ulimit -n 4096` first")
    print(
        f"## fanout: {subscribers} SSE subscribers on one {STEPS}-step `optim` job, "
        f"{pairs} trial(s) each with and without\n"
    )
    use_uvloop()
    results: list[dict[str, Any]] = []
    with server(cpu_workers=1, threads_per_cpu_job=1) as srv:

        async def all_trials() -> None:
            await trial(srv.port, srv.pid, 0, 120)  # warm-up, not reported
            for i in range(pairs):
                order = (0, subscribers) if i % 2 == 0 else (subscribers, 0)
                for n in order:
                    results.append(await trial(srv.port, srv.pid, n, 120))

        with lower_priority(CLIENT_NICE):
            asyncio.run(all_trials())

    none = [r for r in results if r["subscribers"] == 0]
    some = [r for r in results if r["subscribers"] > 0]
    base = median([r["train"] for r in none])
    train = median([r["train"] for r in some])
    # trials alternate, so trial i with subscribers has a neighbour without: the median of these
    # paired ratios follows the machine's drift less than a ratio of two medians would
    ratios = [s["train"] / n["train"] for n, s in zip(none, some, strict=True)]
    ratio = median(ratios)
    last_end = max(r["last_end"] for r in some)
    complete = min(r["complete"] for r in some)
    errors = [e for r in some for e in r["errors"]]

    def row(kind: list[dict[str, Any]], n: int) -> tuple:
        def med(key: str, fmt: str = "{:.3f} s") -> str:
            values = [r[key] for r in kind]
            return "-" if not n else fmt.format(median(values))

        return (
            n,
            len(kind),
            f"{median([r['train'] for r in kind]):.3f} s",
            f"{ratio:.3f} ({min(ratios):.2f}-{max(ratios):.2f})" if n else "1.000",
            med("first_end"),
            "-" if not n else f"{max(r['last_end'] for r in kind):.3f} s",
            "-" if not n else f"{min(r['complete'] for r in kind)} / {n}",
            med("connect"),
            med("chunks", "{:.0f}"),
            f"{median([r['server_cpu'] for r in kind]):.2f} s",
            f"{median([r['client_cpu'] for r in kind]):.2f} s",
        )

    print_table(
        [
            "subscribers",
            "trials",
            "training time (median)",
            "ratio vs none (median of pairs, range)",
            "finish → first stream end (median)",
            "finish → last stream end (worst)",
            "subscribers with every step once",
            "time to connect all",
            "chunks per stream (median)",
            "server CPU",
            "client CPU",
        ],
        [row(none, 0), row(some, subscribers)],
    )
    print(
        f"targets: training time ratio ≤ {TARGET_RATIO} "
        f"({met_text(ratio <= TARGET_RATIO)}), finish → last stream end ≤ {TARGET_DELAY:g} s "
        f"({met_text(last_end <= TARGET_DELAY)}), every subscriber gets every step once "
        f"({met_text(complete == subscribers)})"
    )
    if errors:
        print(f"subscriber errors (first ones): {errors}")
    print()
    reproduce(NAME, quick)
    base_text = f"no subscribers: {base:.3f} s"
    return [
        Figure(
            NAME,
            f"training time with {subscribers} subscribers / without",
            f"{ratio:.3f} ({train:.3f} s)",
            base_text,
            f"≤ {TARGET_RATIO}",
            ratio <= TARGET_RATIO,
        ),
        Figure(
            NAME,
            "job finish → last subscriber's stream end",
            f"{last_end:.3f} s",
            "-",
            f"≤ {TARGET_DELAY:g} s",
            last_end <= TARGET_DELAY,
        ),
        Figure(
            NAME,
            "subscribers that got every step exactly once",
            f"{complete} / {subscribers}",
            "-",
            "all",
            complete == subscribers,
        ),
    ]


if __name__ == "__main__":
    sys.exit(standalone(NAME, run))
