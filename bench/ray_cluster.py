"""ray_cluster: the Ray backend against the local one, on a two-node Ray cluster on this host.

The cluster: `ray.cluster_utils.Cluster`, a head node and one worker node on 127.0.0.1 with one
CPU each, so two slots of one torch thread each, started by this process with its files, auth
token and (disabled) usage stats in a temporary folder, and removed at the end. Its workers run
at nice 0 (`RAY_worker_niceness=0`; Ray's default is 15), as the local backend's processes do.
The Ray server is `trainwire serve` with TRAINWIRE_BACKEND=ray as the cluster's driver; the
baseline is a server with the local backend and the same split (2 CPU workers, 1 thread each).
Both servers stay up for the whole benchmark (the one not measured idles), and the runs alternate
between them.

Measured on both:
  1. POST → first loss event on an idle server (first_loss's sample: a 5-step `numpy` job);
  2. one 3000-step `tensors` job, POST → its final status event (overhead's run through the API),
     and the CPU time the service's own process spent meanwhile (the Ray driver receives the
     streamed batches; the local server reads them from its workers' pipes);
  3. 500 default jobs, the eight variants in turn (small_jobs' run): jobs/s;
  4. memory: the service's RSS, and the RSS of the Ray processes by kind (GCS, raylets, the slot
     actors, the rest), from /proc.
Reproduce: `.venv/bin/python -m bench ray_cluster` (`--quick`: fewer and smaller runs).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from bench import first_loss, overhead, small_jobs
from bench.common import (
    BenchServer,
    Figure,
    median,
    ms,
    percentile,
    print_table,
    proc_rss_kib,
    reproduce,
    standalone,
    use_uvloop,
)

NAME = "ray_cluster"
MARK = "TRAINWIRE_BENCH_RAY"  # in the environment of every Ray process this benchmark starts
NODE = {"node_ip_address": "127.0.0.1", "num_cpus": 1}


@contextmanager
def ray_cluster() -> Iterator[Any]:
    """A head and a worker node on 127.0.0.1; every process of it gone at the end."""
    base = tempfile.mkdtemp(prefix="tw-bench-ray-", dir="/tmp")  # short: Ray's socket paths
    token = Path(base, "auth_token")
    token.write_text(secrets.token_hex(32))
    settings = {
        "RAY_TMPDIR": base,
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_USAGE_STATS_ENABLED": "0",
        # Ray starts its workers at nice 15; the local backend's processes run at 0: on a busy
        # host the comparison would be of priorities, not of the backends
        "RAY_worker_niceness": "0",
        MARK: f"{os.getpid()}-{time.monotonic_ns()}",
    }
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    try:
        cluster.add_node(**NODE)
        yield cluster
    finally:
        cluster.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(base, ignore_errors=True)


def ray_processes(mark: str) -> dict[str, list[int]]:
    """The live processes of this benchmark's cluster, by kind: PIDs."""
    kinds: dict[str, list[int]] = defaultdict(list)
    needle = f"{MARK}={mark}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        title = argv[0].decode(errors="replace")
        if title.startswith("ray::"):
            kind = title.split()[0]  # the actor's class, ray::IDLE, the agents
        elif "gcs_server" in title or "raylet" in title:
            kind = Path(title).name
        elif any(s in b" ".join(argv) for s in (b"app.cli", b"multiprocessing")):
            continue  # the services and the local backend's workers, measured apart
        elif Path(title).name.startswith("python"):  # log_monitor.py, monitor.py, ...
            scripts = [a.decode(errors="replace") for a in argv[1:] if a.endswith(b".py")]
            kind = Path(scripts[0]).name if scripts else "python"
        else:
            kind = Path(title).name
        kinds[kind].append(int(entry.name))
    return kinds


def rss_by_kind(mark: str) -> list[tuple[str, int, int]]:
    """(kind, processes, KiB) of the cluster's processes."""
    rows = []
    for kind, pids in sorted(ray_processes(mark).items()):
        total = 0
        for pid in pids:
            with suppress(OSError):  # gone meanwhile
                total += proc_rss_kib(pid)
        rows.append((kind, len(pids), total))
    return rows


def run(quick: bool) -> list[Figure]:
    import httpx

    samples = 20 if quick else 100
    steps, reps = (300, 2) if quick else (3000, 5)
    jobs = 24 if quick else 500
    print(
        f"## ray_cluster: the Ray backend (2-node cluster on 127.0.0.1, 2 slots) against the "
        f"local one (2 workers): first loss ({samples} jobs), a {steps}-step job ({reps} runs "
        f"each), {jobs} default jobs, memory\n"
    )
    use_uvloop()
    with ray_cluster() as cluster:
        ray_env = {
            "TRAINWIRE_BACKEND": "ray",
            "RAY_ADDRESS": cluster.address,
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # the driver stays on 127.0.0.1
            "TRAINWIRE_THREADS_PER_CPU_JOB": "1",
        }
        local_env = {"TRAINWIRE_CPU_WORKERS": "2", "TRAINWIRE_THREADS_PER_CPU_JOB": "1"}
        began = time.perf_counter()
        with BenchServer(ray_env) as ray_srv:
            ray_start = time.perf_counter() - began
            with BenchServer(local_env) as local_srv:
                servers = {"ray": ray_srv, "local": local_srv}
                result = measure(servers, samples, steps, reps, jobs, httpx)
                result["memory"] = rss_by_kind(os.environ[MARK])
                result["service_rss"] = {k: s.rss_kib() for k, s in servers.items()}
    return report(result, ray_start, samples, steps, jobs, quick)


def measure(
    servers: dict[str, BenchServer], samples: int, steps: int, reps: int, jobs: int, httpx: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {"first": {}, "wall": defaultdict(list), "jobs": {}}
    for srv in servers.values():  # warm both up: every variant once on each slot
        asyncio.run(small_jobs.warm_up(srv.port))
        asyncio.run(small_jobs.warm_up(srv.port))
    for name, srv in servers.items():
        results, _rtts = asyncio.run(first_loss.measure(srv.port, samples, warmup=5))
        out["first"][name] = [r[1] for r in results]
    clients = {n: httpx.Client(base_url=s.url, timeout=120) for n, s in servers.items()}
    try:
        for rep in range(reps):
            for name in ("ray", "local") if rep % 2 == 0 else ("local", "ray"):
                cpu = servers[name].cpu_seconds()
                run = overhead.api_run(clients[name], "tensors", steps)
                run["cpu"] = servers[name].cpu_seconds() - cpu  # the service's own process
                out["wall"][name].append(run)
    finally:
        for client in clients.values():
            client.close()
    for name in ("local", "ray"):
        out["jobs"][name] = asyncio.run(small_jobs.api_run(servers[name].port, jobs))
    return out


def report(
    r: dict[str, Any], ray_start: float, samples: int, steps: int, jobs: int, quick: bool
) -> list[Figure]:
    first = r["first"]
    walls = {n: [w["wall"] for w in r["wall"][n]] for n in ("local", "ray")}
    pairs = zip(r["wall"]["ray"], r["wall"]["local"], strict=True)
    same = all(a["last_loss"] == b["last_loss"] for a, b in pairs)
    ratio = median(walls["ray"]) / median(walls["local"])
    rate = {n: jobs / r["jobs"][n]["wall"] for n in ("local", "ray")}
    print_table(
        ["", "local backend", "Ray backend", "Ray / local"],
        [
            (
                f"POST → first loss event, p50 ({samples} jobs)",
                ms(percentile(first["local"], 50)),
                ms(percentile(first["ray"], 50)),
                f"{percentile(first['ray'], 50) / percentile(first['local'], 50):.2f}",
            ),
            (
                "POST → first loss event, p99",
                ms(percentile(first["local"], 99)),
                ms(percentile(first["ray"], 99)),
                "",
            ),
            (
                f"`tensors` {steps} steps, POST → final status (median of {len(walls['ray'])})",
                ms(median(walls["local"])),
                ms(median(walls["ray"])),
                f"{ratio:.3f}" + ("" if same else " (**last losses differ**)"),
            ),
            (
                "· the service's CPU time during that job (median)",
                ms(median([w["cpu"] for w in r["wall"]["local"]])),
                ms(median([w["cpu"] for w in r["wall"]["ray"]])),
                "",
            ),
            (
                f"{jobs} default jobs: first POST → last finished_at",
                f"{r['jobs']['local']['wall']:.2f} s ({rate['local']:.1f} jobs/s)",
                f"{r['jobs']['ray']['wall']:.2f} s ({rate['ray']:.1f} jobs/s)",
                f"{rate['ray'] / rate['local']:.2f} (jobs/s)",
            ),
            (
                "service RSS at the end",
                f"{r['service_rss']['local'] / 1024:.0f} MiB",
                f"{r['service_rss']['ray'] / 1024:.0f} MiB",
                "",
            ),
        ],
    )
    memory = r["memory"]
    total = sum(kib for _, _, kib in memory)
    print_table(
        ["Ray process (2 nodes on this host)", "processes", "RSS"],
        [(kind, count, f"{kib / 1024:.0f} MiB") for kind, count, kib in memory]
        + [("all of the cluster", sum(c for _, c, _ in memory), f"{total / 1024:.0f} MiB")],
    )
    print(f"The Ray server took {ray_start:.1f} s from its start to /readyz (actors warmed up).\n")
    reproduce(NAME, quick)
    return [
        Figure(
            NAME,
            "Ray: POST → first loss p50",
            ms(percentile(first["ray"], 50)),
            f"local {ms(percentile(first['local'], 50))}",
            "-",
            None,
        ),
        Figure(
            NAME,
            f"Ray: {steps}-step job, wall / local wall",
            f"{ratio:.3f}",
            f"local {ms(median(walls['local']))}",
            "-",
            None,
        ),
        Figure(
            NAME,
            f"Ray: {jobs} default jobs",
            f"{rate['ray']:.1f} jobs/s",
            f"local {rate['local']:.1f} jobs/s",
            "-",
            None,
        ),
        Figure(NAME, "Ray's own processes, RSS", f"{total / 1024:.0f} MiB", "-", "-", None),
    ]


if __name__ == "__main__":
    sys.exit(standalone(NAME, run))
