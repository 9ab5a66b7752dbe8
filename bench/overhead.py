"""overhead: one long job through the API against the same loop run as a plain script.

Through the API: POST /v1/jobs, then one SSE subscriber (httpx + httpx-sse) reading the stream to
its end; the wall time runs from sending the POST to receiving the final `status` event. The
server runs with its defaults (2 CPU workers, 1 torch thread each), so the job has one thread.

Plain: a long-lived subprocess (`python -m bench.overhead --plain-worker`) that runs the variant's
own `train` in a thread with `torch.set_num_threads(1)` and numpy's BLAS capped to 1 thread, as a
worker does, with a recorder that calls `.item()` on every step's loss as the tutorial does. Its
wall time covers building the problem and the loop. Both use the same seed, so the two runs must
end on the same loss, bit for bit.

Each pair runs on a fresh server and a fresh plain process, in alternating order (plain first,
then API first, ...), and the ratio is the median of the paired ratios API / plain: the same
loop runs a few percent faster or slower from one process to the next, a draw that a single
process per side would hand to the ratio. Also shown: the ratio of the best runs (the fastest
API run over the fastest plain one: noise only ever adds time) and the CPU time the hypervisor
stole from this machine during each kind of run, the noise that moves the medians on a shared
host.
Reproduce: `.venv/bin/python -m bench overhead` (`--quick`: fewer steps).
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import threading
import time
from typing import Any

from bench.common import (
    FINAL,
    ROOT,
    Figure,
    iso_epoch,
    median,
    met_text,
    ms,
    print_table,
    reproduce,
    server,
    standalone,
    steal_seconds,
)

NAME = "overhead"
VARIANTS = ("tensors", "optim")
TARGET = 1.05
SEED = 1234


# -- the plain loop (runs in the subprocess) ------------------------------------------------------
class ItemRecorder:
    """The tutorial's `loss.item()` on every step."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def record(self, t: int, loss: Any) -> None:
        self.losses.append(loss.item() if hasattr(loss, "item") else float(loss))

    def flush(self) -> None:
        pass


def plain_worker() -> None:
    """Read `variant steps seed` lines on stdin; run each loop; answer one JSON line each."""
    import torch
    from threadpoolctl import threadpool_limits

    from trainwire.jobs import JobSpec
    from workers.hyperparameters import Limits, parse_hyperparameters
    from workers.runner import Run
    from workers.variants import VARIANTS as ALL

    threadpool_limits(limits=1, user_api="blas")

    def one(variant: str, steps: int, seed: int, out: dict[str, Any]) -> None:
        torch.set_num_threads(1)  # per thread on this build, as the worker pool does
        model = ALL[variant].hyperparameters
        hp = parse_hyperparameters(model, {"steps": steps}, variant, Limits())
        recorder = ItemRecorder()
        began = time.perf_counter()
        run = Run(JobSpec(variant, hp, seed), recorder, threading.Event(), None)  # type: ignore[arg-type]
        ALL[variant].train(run)
        out["wall"] = time.perf_counter() - began
        out["steps"] = len(recorder.losses)
        out["last_loss"] = recorder.losses[-1]

    for line in sys.stdin:
        variant, steps, seed = line.split()
        out: dict[str, Any] = {}
        thread = threading.Thread(target=one, args=(variant, int(steps), int(seed), out))
        thread.start()
        thread.join()
        print(json.dumps(out), flush=True)


class PlainWorker:
    """The plain-loop subprocess; stopped by its PID."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.overhead", "--plain-worker"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, variant: str, steps: int, timeout: float = 300.0) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{variant} {steps} {SEED}\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"plain worker gave no answer for {variant} within {timeout} s")
        return dict(json.loads(line))

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


# -- through the API -----------------------------------------------------------------------------
def api_run(client: Any, variant: str, steps: int) -> dict[str, Any]:
    from httpx_sse import connect_sse

    body = {"variant": variant, "hyperparameters": {"steps": steps}, "seed": SEED}
    began = time.perf_counter()
    response = client.post("/v1/jobs", json=body)
    if response.status_code != 201:
        raise RuntimeError(f"POST /v1/jobs: {response.status_code} {response.text[:300]}")
    job_id = response.json()["id"]
    seen, out_of_order, last_loss, wall, final = 0, 0, None, None, None
    with connect_sse(client, "GET", f"/v1/jobs/{job_id}/events") as source:
        for event in source.iter_sse():
            if event.event == "loss":
                if event.id != str(seen):
                    out_of_order += 1
                seen += 1
                last_loss = json.loads(event.data)["loss"]
            elif event.event == "status":
                job = json.loads(event.data)
                if job["status"] in FINAL:
                    wall = time.perf_counter() - began
                    final = job
    if final is None or wall is None or final["status"] != "succeeded":
        raise RuntimeError(f"job {job_id} did not succeed: {final}")
    if seen != steps or out_of_order:
        raise RuntimeError(f"job {job_id}: {seen} loss events, {out_of_order} out of order")
    return {
        "wall": wall,
        "train": iso_epoch(final["finished_at"]) - iso_epoch(final["started_at"]),
        "last_loss": last_loss,
    }


def run(quick: bool) -> list[Figure]:
    import httpx

    steps = 200 if quick else 3000
    reps = 2 if quick else 7
    print(
        f"## overhead: one {steps}-step job, API vs plain loop, {reps} interleaved runs, "
        "each pair on a fresh server and a fresh plain process\n"
    )
    plain: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    api: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for rep in range(reps):
        # a fresh server (so fresh worker processes) and a fresh plain process for every pair:
        # the same loop runs a few percent faster or slower from one process to the next (where
        # its memory happens to lie), and one process per side would give that draw to the
        # ratio as if it were trainwire's
        worker = PlainWorker()
        try:
            with (
                server(threads_per_cpu_job=1) as srv,
                httpx.Client(base_url=srv.url, timeout=120) as client,
            ):
                for variant in VARIANTS:  # warm both up (lazy imports, allocator, connection)
                    worker.run(variant, 20)
                    api_run(client, variant, 20)
                for variant in VARIANTS:
                    order = ("plain", "api") if rep % 2 == 0 else ("api", "plain")
                    for mode in order:
                        stolen = steal_seconds()
                        if mode == "plain":
                            result = worker.run(variant, steps)
                            plain[variant].append(result)
                        else:
                            result = api_run(client, variant, steps)
                            api[variant].append(result)
                        result["steal"] = steal_seconds() - stolen
        finally:
            worker.stop()

    figures = []
    rows = []
    for variant in VARIANTS:
        ratios = [a["wall"] / p["wall"] for a, p in zip(api[variant], plain[variant], strict=True)]
        ratio = median(ratios)
        same = all(
            a["last_loss"] == p["last_loss"]
            for a, p in zip(api[variant], plain[variant], strict=True)
        )
        met = ratio <= TARGET
        plain_wall = median([p["wall"] for p in plain[variant]])
        api_wall = median([a["wall"] for a in api[variant]])
        best = min(a["wall"] for a in api[variant]) / min(p["wall"] for p in plain[variant])
        steal = (
            f"{ms(median([p['steal'] for p in plain[variant]]))} / "
            f"{ms(median([a['steal'] for a in api[variant]]))}"
        )
        rows.append(
            (
                variant,
                steps,
                reps,
                ms(plain_wall),
                ms(api_wall),
                ms(median([a["train"] for a in api[variant]])),
                f"{ratio:.3f}",
                f"{min(ratios):.3f}-{max(ratios):.3f}",
                f"{best:.3f}",
                steal,
                "yes" if same else "**no**",
                f"≤ {TARGET}",
                met_text(met),
            )
        )
        figures.append(
            Figure(
                NAME,
                f"{variant} {steps} steps: API wall / plain wall",
                f"{ratio:.3f} ({ms(api_wall)}; best runs {best:.3f})",
                f"plain {ms(plain_wall)}",
                f"≤ {TARGET}",
                met,
            )
        )
    print_table(
        [
            "variant",
            "steps",
            "runs",
            "plain wall (median)",
            "API wall (median)",
            "API started→finished",
            "ratio API/plain (median)",
            "ratio range",
            "ratio of best runs",
            "CPU stolen per run (median, plain / API)",
            "same last loss",
            "target",
            "met",
        ],
        rows,
    )
    reproduce(NAME, quick)
    return figures


if __name__ == "__main__":
    if sys.argv[1:] == ["--plain-worker"]:
        plain_worker()
    else:
        sys.exit(standalone(NAME, run))
