"""overhead: one long job through the API against the same loop run as a plain script.

Through the API: POST /v1/jobs, then one subscriber reading the job's event stream to its end;
the wall time runs from sending the POST to receiving the final `status` event. The subscriber
runs at nice 10: it stands in for a user on another machine and should take the CPU that the
server and the training leave (the plain script has no reader at all); with every core training,
a reader at the same priority would take its share from the job. Two readers:
- `lean`: a bare socket (the request written by hand, the chunked body decoded as it comes),
  checked with regular expressions (each step's `id:` in order, no loss after the final status):
  a stand-in that costs this machine little CPU (the POST and the final GET go through httpx);
- `httpx-sse`: an event object per event, as a user's script gets from httpx-sse (about twice
  the reader CPU): what watching from a script on the same 2-core host costs.

Plain: a long-lived subprocess (`python -m bench.overhead --plain-worker [THREADS]`) that runs the
variant's own `train` in a thread, with a recorder that calls `.item()` on every step's loss as the
tutorial does. Its wall time covers building the problem and the loop.

Also shown: the CPU time of the server's own process (the HTTP, the store, the stream; the worker's
child process apart) during each API run: with every core training, that time is taken from the
job.

Three pairs, each with the same seed and thread count on both sides (so the two runs must end on
the same loss, bit for bit):
- `default threads`: the server with its defaults (2 CPU workers, elastic threads: the lone job
  gets every core) against the script as a user runs it (torch's default thread count, numpy's
  BLAS untouched), lean reader: what one job alone costs through trainwire;
- `default threads, httpx-sse reader`: the same, read by httpx-sse;
- `1 thread`: a server with TRAINWIRE_THREADS_PER_CPU_JOB=1 against the script with
  `torch.set_num_threads(1)` and numpy's BLAS capped to 1 thread: the service's own overhead, with
  no thread scheduling in the way.

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
import math
import re
import select
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from bench.common import (
    FINAL,
    ROOT,
    ChunkedDecoder,
    EventBlocks,
    Figure,
    Subscriber,
    iso_epoch,
    lower_priority,
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
CLIENT_NICE = 10  # the subscriber stands in for a user on another machine


# -- the plain loop (runs in the subprocess) ------------------------------------------------------
class ItemRecorder:
    """The tutorial's `loss.item()` on every step."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def record(self, t: int, loss: Any) -> None:
        self.losses.append(loss.item() if hasattr(loss, "item") else float(loss))

    def flush(self) -> None:
        pass


def plain_worker(threads: int | None) -> None:
    """Read `variant steps seed` lines on stdin; run each loop; answer one JSON line each.
    `threads`: torch's and BLAS's thread count; None: their defaults, as a user's script has."""
    import torch
    from threadpoolctl import threadpool_limits

    from trainwire.jobs import JobSpec
    from workers.hyperparameters import Limits, parse_hyperparameters
    from workers.runner import Run
    from workers.variants import VARIANTS as ALL

    if threads is not None:
        threadpool_limits(limits=threads, user_api="blas")

    def one(variant: str, steps: int, seed: int, out: dict[str, Any]) -> None:
        if threads is not None:
            torch.set_num_threads(threads)  # per thread on this build, as the worker pool does
        out["threads"] = torch.get_num_threads()
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

    def __init__(self, threads: int | None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.overhead", "--plain-worker"]
            + ([] if threads is None else [str(threads)]),
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
_LOSS_VALUE = re.compile(rb'"loss": ([^}]*)}')


def api_run(client: Any, variant: str, steps: int, reader: str = "lean") -> dict[str, Any]:
    """POST the job and read its event stream to the final status; `reader`: "lean" (a bare
    socket, checked by regular expressions: each step's id in order, no loss after the end) or
    "httpx-sse" (an event object per event, as a user's script gets from httpx-sse)."""
    body = {"variant": variant, "hyperparameters": {"steps": steps}, "seed": SEED}
    cpu = time.process_time()
    began = time.perf_counter()
    response = client.post("/v1/jobs", json=body)
    if response.status_code != 201:
        raise RuntimeError(f"POST /v1/jobs: {response.status_code} {response.text[:300]}")
    job_id = response.json()["id"]
    read = _read_lean if reader == "lean" else _read_httpx_sse
    seen, out_of_order, last_loss, ended = read(client, job_id)
    wall = ended - began
    reader_cpu = time.process_time() - cpu
    final = client.get(f"/v1/jobs/{job_id}").json()
    if final["status"] != "succeeded":
        raise RuntimeError(f"job {job_id} did not succeed: {final}")
    if seen != steps or out_of_order:
        raise RuntimeError(f"job {job_id}: {seen} loss events, {out_of_order} out of order")
    return {
        "wall": wall,
        "train": iso_epoch(final["finished_at"]) - iso_epoch(final["started_at"]),
        "last_loss": last_loss,
        "threads": final["environment"]["threads"],
        "reader_cpu": reader_cpu,
    }


def _read_lean(client: Any, job_id: str) -> tuple[int, int, float | None, float]:
    """(loss events, out of order, the last loss, when the last final status came), read from a
    bare socket: the request written by hand, the chunked body decoded and checked as it comes
    (each step's id in order, no loss after the end), no HTTP library in between. The stream is
    read to its end: a job that ended before it was opened starts it with its final status."""
    url = client.base_url
    record, blocks, decoder = Subscriber(), EventBlocks(), ChunkedDecoder()
    last, ended, head, opening = b"", math.nan, b"", True
    request = f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n\r\n"
    with socket.create_connection((url.host, url.port), timeout=600) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(request.encode())
        while not decoder.done:
            data = sock.recv(1 << 20)
            if not data:
                raise RuntimeError(f"job {job_id}: the stream closed before its end")
            if head is not None:  # the response's head first
                head += data
                end = head.find(b"\r\n\r\n")
                if end < 0:
                    continue
                if not head.startswith(b"HTTP/1.1 200") or b"chunked" not in head[:end].lower():
                    raise RuntimeError(f"job {job_id}: unexpected answer {head[:200]!r}")
                data, head = head[end + 4 :], None
            block = blocks.feed(decoder.feed(data))
            if opening and block:  # the job as it stood at connect time: not its end
                block, opening = block[block.index(b"\n\n") + 2 :], False
            if not block:
                continue
            if b"event: loss" in block:
                last = block
            if record.check(block) and record.statuses[-1] in FINAL:
                ended = time.perf_counter()
    values = _LOSS_VALUE.findall(last)
    last_loss = json.loads(values[-1]) if values else None
    return record.steps_seen, record.out_of_order, last_loss, ended


def _read_httpx_sse(client: Any, job_id: str) -> tuple[int, int, float | None, float]:
    from httpx_sse import connect_sse

    seen, out_of_order, last_loss, ended = 0, 0, None, math.nan
    with connect_sse(client, "GET", f"/v1/jobs/{job_id}/events") as source:
        for event in source.iter_sse():
            if event.event == "loss":
                if event.id != str(seen):
                    out_of_order += 1
                seen += 1
                last_loss = json.loads(event.data)["loss"]
            elif event.event == "status" and json.loads(event.data)["status"] in FINAL:
                ended = time.perf_counter()
    return seen, out_of_order, last_loss, ended


# pair name: (the server's settings, the plain script's thread count (None: torch's default), the
# API side's reader)
MODES: dict[str, tuple[dict[str, Any], int | None, str]] = {
    "default threads": ({}, None, "lean"),
    "default threads, httpx-sse reader": ({}, None, "httpx-sse"),
    "1 thread": ({"threads_per_cpu_job": 1}, 1, "lean"),
}


def run(quick: bool) -> list[Figure]:
    import httpx

    steps = 200 if quick else 3000
    reps = 2 if quick else 11
    print(
        f"## overhead: one {steps}-step job, API vs plain loop, {reps} interleaved runs, "
        "each pair on a fresh server and a fresh plain process\n"
    )
    plain: dict[tuple[str, str], list[dict[str, Any]]] = {}
    api: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rep in range(reps):
        for mode, (settings, threads, reader) in MODES.items():
            # a fresh server (so fresh worker processes) and a fresh plain process for every
            # pair: the same loop runs a few percent faster or slower from one process to the
            # next (where its memory happens to lie), and one process per side would give that
            # draw to the ratio as if it were trainwire's
            worker = PlainWorker(threads)
            try:
                with (
                    server(**settings) as srv,
                    httpx.Client(base_url=srv.url, timeout=600) as client,
                ):
                    for variant in VARIANTS:  # warm both up (lazy imports, allocator, connection)
                        worker.run(variant, 20)
                        api_run(client, variant, 20, reader)
                    for variant in VARIANTS:
                        order = ("plain", "api") if rep % 2 == 0 else ("api", "plain")
                        for side in order:
                            stolen = steal_seconds()
                            if side == "plain":
                                result = worker.run(variant, steps, timeout=600)
                                plain.setdefault((mode, variant), []).append(result)
                            else:
                                service_cpu = srv.cpu_seconds()  # the worker's child apart
                                with lower_priority(CLIENT_NICE):
                                    result = api_run(client, variant, steps, reader)
                                result["service_cpu"] = srv.cpu_seconds() - service_cpu
                                api.setdefault((mode, variant), []).append(result)
                            result["steal"] = steal_seconds() - stolen
            finally:
                worker.stop()

    figures = []
    rows = []
    for mode in MODES:
        for variant in VARIANTS:
            a_runs, p_runs = api[(mode, variant)], plain[(mode, variant)]
            ratios = [a["wall"] / p["wall"] for a, p in zip(a_runs, p_runs, strict=True)]
            ratio = median(ratios)
            same = all(
                a["last_loss"] == p["last_loss"] for a, p in zip(a_runs, p_runs, strict=True)
            )
            met = ratio <= TARGET
            plain_wall = median([p["wall"] for p in p_runs])
            api_wall = median([a["wall"] for a in a_runs])
            best = min(a["wall"] for a in a_runs) / min(p["wall"] for p in p_runs)
            steal = (
                f"{ms(median([p['steal'] for p in p_runs]))} / "
                f"{ms(median([a['steal'] for a in a_runs]))}"
            )
            thread_counts = (
                f"{'/'.join(sorted({str(p['threads']) for p in p_runs}))} / "
                f"{'/'.join(sorted({str(a['threads']) for a in a_runs}))}"
            )
            rows.append(
                (
                    variant,
                    mode,
                    thread_counts,
                    steps,
                    reps,
                    ms(plain_wall),
                    ms(api_wall),
                    ms(median([a["train"] for a in a_runs])),
                    ms(median([a["service_cpu"] for a in a_runs])),
                    ms(median([a["reader_cpu"] for a in a_runs])),
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
                    f"{variant} {steps} steps, {mode}: API wall / plain wall",
                    f"{ratio:.3f} ({ms(api_wall)}; best runs {best:.3f})",
                    f"plain {ms(plain_wall)}",
                    f"≤ {TARGET}",
                    met,
                )
            )
    print_table(
        [
            "variant",
            "pair",
            "threads (plain / API)",
            "steps",
            "runs",
            "plain wall (median)",
            "API wall (median)",
            "API started→finished",
            "service CPU per API run (median)",
            "reader CPU per API run (median)",
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
    if sys.argv[1:2] == ["--plain-worker"]:
        plain_worker(int(sys.argv[2]) if len(sys.argv) > 2 else None)
    else:
        sys.exit(standalone(NAME, run))
