"""GPU check: one script that answers what a GPU run must answer, within about 10 minutes.

Runs on a bare GPU host: the host's Python 3.12 and its own CUDA torch, no install step. The
few pure-Python and binary wheels the workers need besides torch (pydantic and its parts,
numpy, safetensors, threadpoolctl; pytest for the `tests` part) come from a folder named by
`GPU_WHEELS` (or `--wheels`): each wheel is unpacked once into a cache folder that goes on
sys.path (and on PYTHONPATH for the parts' processes). Nothing is pip-installed and the host's
torch is never replaced. See docs/gpu.md.

Each part runs in a process of its own under its own timeout (a hung part costs its timeout,
not the check), and the results go into one JSON file (`--out`) and a table. Exit status: 0 when
every part ran, 1 when one failed or timed out, 2 when there is no CUDA device (without
`--dry-run`). `--dry-run` rehearses every part's code path on the CPU, at small sizes.

Reproduce: `make gpu-check` (`make gpu-check GPU_CHECK_ARGS=--dry-run` to rehearse).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FLUSH_SECONDS = 0.25  # the service's TRAINWIRE_FLUSH_SECONDS default
NO_CUDA = 2

# part: (seconds it may take at most on the GPU, one-line description); 585 s in all
PARTS: dict[str, tuple[int, str]] = {
    "preflight": (20, "versions, GPU name, SM count, MIG, numerics settings"),
    "tests": (90, "tests/gpu under pytest (no pytest-timeout needed)"),
    "sync_debug": (40, "each variant's step loop under set_sync_debug_mode('error')"),
    "recorder": (35, "the recorder against .item(): bit for bit, cancel at k, divergence"),
    "determinism": (60, "a job twice alone, beside 3 streams, beside 3 processes, strict"),
    "gpu_vs_cpu": (25, "GPU vs CPU curves in float32 and float64"),
    "tf32": (20, "TF32 vs IEEE float32 products: error and speed"),
    "fused_exactness": (80, "fused vs alone for R = 2..256, the cause isolated"),
    "speed": (55, "steps/s: the service's path vs a no-sync loop vs .item()"),
    "concurrency": (60, "total steps/s of 1, 2, 4, 8 jobs: threads vs child processes"),
    "memory": (35, "device memory after 64 jobs in one child process"),
    "oom": (25, "a device out-of-memory in a child: job fails, child survives"),
    "fused_speed": (40, "runs/s of R runs: plain jobs vs one fused group"),
}


# -- the wheels folder -----------------------------------------------------------------------
def use_wheels(folder: str | None) -> list[str]:
    """Unpack each wheel of `folder` (once, into a cache folder by its content) and put the
    folders on sys.path; returns them."""
    if not folder:
        return []
    cache = Path(tempfile.gettempdir()) / "trainwire-gpu-wheels"
    paths = []
    for wheel in sorted(Path(folder).glob("*.whl")):
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()[:16]
        target = cache / f"{wheel.stem}-{digest}"
        if not (target / ".unpacked").exists():
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(target)
            (target / ".unpacked").touch()
        paths.append(str(target))
    sys.path[:0] = paths
    return paths


# -- helpers the parts share -----------------------------------------------------------------
class Context:
    """The device and sizes of this check (small ones in a dry run)."""

    def __init__(self, dry_run: bool):
        import torch

        self.dry_run = dry_run
        self.device = "cpu" if dry_run else "cuda:0"
        self.torch = torch

    def n(self, gpu: int, dry: int) -> int:
        return dry if self.dry_run else gpu

    def sync(self) -> None:
        if not self.dry_run:
            self.torch.cuda.synchronize()


NO_LIMITS: Any = None


def _limits() -> Any:
    global NO_LIMITS
    if NO_LIMITS is None:
        from workers.hyperparameters import Limits

        NO_LIMITS = Limits(max_steps=10**9, max_job_bytes=1 << 62)
    return NO_LIMITS


def torch_variants() -> list[str]:
    from workers.variants import VARIANTS

    return [name for name, v in VARIANTS.items() if "cuda" in v.devices]


def spec(variant: str, device: str, seed: int = 0, job_id: str = "job", **hp: Any) -> Any:
    from trainwire.jobs import JobSpec
    from workers.hyperparameters import parse_hyperparameters
    from workers.variants import VARIANTS

    model = VARIANTS[variant].hyperparameters
    parsed = parse_hyperparameters(model, hp, variant, _limits())
    return JobSpec(variant, parsed, seed, device, job_id=job_id)


def curve(job: Any, flush_seconds: float = 0.005) -> tuple[str, list[float], Any]:
    """(status, losses, Finished) of one run through the runner."""
    from workers.runner import run_job

    got: list[float] = []
    outcome = run_job(job, lambda first, values: got.extend(values), flush_seconds=flush_seconds)
    return str(outcome.status), got, outcome


def bits(values: list[float]) -> str:
    """A digest of a curve, bit for bit (every NaN alike)."""
    packed = b"".join(struct.pack("<d", v) if not math.isnan(v) else b"nan" for v in values)
    return hashlib.sha256(packed).hexdigest()[:16]


def first_difference(a: list[float], b: list[float]) -> dict[str, Any]:
    """Where two curves first differ, and by how much at most (relative)."""
    first = next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if bits([x]) != bits([y])),
        None if len(a) == len(b) else min(len(a), len(b)),
    )
    rel = [abs(x - y) / max(abs(x), abs(y), 1e-300) for x, y in zip(a, b, strict=False)]
    finite = [r for r in rel if math.isfinite(r)]
    return {"equal": first is None, "first_step": first, "max_rel": max(finite, default=0.0)}


class _Loop:
    """A variant's own loop without the runner: `.item()` each step, or no per-step sync."""

    def __init__(self, item: bool):
        self.item = item
        self.losses: list[float] = []

    def record(self, t: int, loss: Any) -> None:
        if self.item:
            self.losses.append(loss.item() if hasattr(loss, "item") else float(loss))

    def flush(self) -> None:
        pass


def own_loop(ctx: Context, job: Any, item: bool) -> list[float]:
    import threading as th

    from workers.numerics import pin_numerics
    from workers.runner import Run, job_stream
    from workers.variants import VARIANTS

    pin_numerics()
    recorder = _Loop(item)
    run = Run(job, recorder, th.Event(), None)  # type: ignore[arg-type]
    torch = ctx.torch
    stream = (
        torch.cuda.stream(job_stream(torch.device(job.device)))
        if not ctx.dry_run
        else contextlib.nullcontext()
    )
    with stream:
        VARIANTS[job.variant].train(run)
    ctx.sync()
    return recorder.losses


def timed(ctx: Context, fn: Callable[[], Any]) -> float:
    ctx.sync()
    began = time.perf_counter()
    fn()
    ctx.sync()
    return time.perf_counter() - began


def pool(ctx: Context, jobs: int, processes: bool) -> Any:
    from workers.pool import LocalBackend

    cpu = ctx.dry_run
    backend = LocalBackend(
        cpu_workers=jobs if cpu else 0,
        jobs_per_gpu=0 if cpu else jobs,
        cpu_threads=1,
        gpus=[] if cpu else [ctx.device],
        processes=processes,
        flush_seconds=FLUSH_SECONDS,
    )
    backend.start()
    backend.wait_ready(ctx.n(60, 240))  # child processes up and warm: not in what is timed
    return backend


# -- the parts -------------------------------------------------------------------------------
def part_preflight(ctx: Context) -> dict[str, Any]:
    import numpy as np

    from workers.numerics import numerics_facts, pin_numerics
    from workers.processes import device_facts

    torch = ctx.torch
    pin_numerics()
    out: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "numpy": np.__version__,
        "cuda_available": torch.cuda.is_available(),
        "device_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "facts": {**device_facts(ctx.device), **numerics_facts(ctx.device)},
    }
    if not ctx.dry_run:
        free, total = torch.cuda.mem_get_info()
        out["memory_free"], out["memory_total"] = int(free), int(total)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,mig.mode.current,clocks.max.sm",
             "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        out["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    out["summary"] = f"{out['facts']['device_name']}, torch {torch.__version__}"
    return out


def part_tests(ctx: Context) -> dict[str, Any]:
    import xml.etree.ElementTree as ET

    try:
        import pytest  # noqa: F401
    except ImportError:
        return {"summary": "skipped: no pytest (put its wheels in GPU_WHEELS)", "skipped": True}
    report = Path(tempfile.mkdtemp()) / "junit.xml"
    # -c /dev/null: not the project's settings (`timeout = 120` needs pytest-timeout)
    cmd = [sys.executable, "-m", "pytest", "-c", os.devnull, "--rootdir", str(ROOT),
           "--noconftest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "-W",
           "ignore::pytest.PytestUnknownMarkWarning", f"--junitxml={report}",
           str(ROOT / "tests" / "gpu")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    cases = ET.parse(report).getroot().iter("testcase") if report.exists() else iter(())
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failures = []
    for case in cases:
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            counts["failed"] += 1
            failures.append(case.get("name"))
        elif "skipped" in kinds:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return {
        **counts,
        "failures": failures,
        "returncode": done.returncode,
        "tail": done.stdout[-1500:],
        "ok": done.returncode in (0, 5) and not failures,
        "summary": ", ".join(f"{v} {k}" for k, v in counts.items()),
    }


def part_sync_debug(ctx: Context) -> dict[str, Any]:
    from workers.sync_debug import step_loop_sync_debug

    calls: list[str | int] = []
    seam = calls.append if ctx.dry_run else None  # the CPU has no sync debug mode
    out: dict[str, Any] = {}
    for variant in torch_variants():
        job = spec(variant, ctx.device, steps=ctx.n(300, 20))
        curve(job)  # first uses
        with step_loop_sync_debug("error", seam) as counted:
            status, got, outcome = curve(job)
        out[variant] = {
            "status": status,
            "steps_counted": counted,
            "error": outcome.error_message,  # the op that synchronised, under "error"
        }
    bad = [v for v, r in out.items() if r["status"] != "succeeded"]
    return {
        "variants": out,
        "ok": not bad,
        "summary": "no step syncs" if not bad else f"syncs in {', '.join(bad)}",
    }


def part_recorder(ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {}
    steps = ctx.n(2000, 100)
    for variant in ("tensors", "optim"):
        job = spec(variant, ctx.device, steps=steps)
        _, runner, _ = curve(job)
        item = own_loop(ctx, job, item=True)
        out[variant] = {"same_as_item": bits(runner) == bits(item), "steps": len(runner)}
    # cancelled before step k: exactly k steps delivered, the same as .item()'s first k
    k = steps // 3

    class CancelAt:
        calls = 0

        def is_set(self) -> bool:
            self.calls += 1
            return self.calls > k

    from workers.runner import run_job

    job = spec("tensors", ctx.device, steps=steps)
    got: list[float] = []
    cancelled = run_job(job, lambda first, values: got.extend(values), CancelAt())
    item = own_loop(ctx, job, item=True)
    out["cancel"] = {
        "status": str(cancelled.status),
        "steps": len(got),
        "k": k,
        "same_prefix": bits(got) == bits(item[:k]),
    }
    # divergence: the runner stops at the first non-finite step, as .item() sees it
    job = spec("tensors", ctx.device, steps=ctx.n(200, 200), learning_rate=1e-2, dtype="float32")
    status, got, outcome = curve(job)
    item = own_loop(ctx, job, item=True)
    first_bad = next((i for i, v in enumerate(item) if not math.isfinite(v)), None)
    out["divergence"] = {
        "status": status,
        "error_code": str(outcome.error_code),
        "runner_last_step": len(got) - 1,
        "item_first_non_finite": first_bad,
    }
    ok = (
        all(out[v]["same_as_item"] for v in ("tensors", "optim"))
        and out["cancel"]["steps"] == k
        and out["cancel"]["same_prefix"]
        and out["divergence"]["runner_last_step"] == first_bad
    )
    return {**out, "ok": ok, "summary": "bit for bit" if ok else "differs: see JSON"}


def _background_threads(ctx: Context, n: int, stop: threading.Event) -> list[threading.Thread]:
    def loop(seed: int) -> None:
        while not stop.is_set():
            curve(spec("nn", ctx.device, seed=seed, steps=ctx.n(200, 10), hidden=512))

    threads = [threading.Thread(target=loop, args=(i + 1,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    return threads


_STRICT = """
import sys
sys.path[:0] = {path!r}
import torch
torch.use_deterministic_algorithms(True)
from bench.gpu_check import bits, curve, spec
for variant in ("tensors", "optim"):
    _, got, _ = curve(spec(variant, {device!r}, steps={steps}, dtype="float32"))
    print(variant, bits(got))
"""


def part_determinism(ctx: Context) -> dict[str, Any]:
    steps = ctx.n(500, 30)
    out: dict[str, Any] = {}
    base = {}
    for variant in ("tensors", "optim"):
        job = spec(variant, ctx.device, steps=steps, dtype="float32")
        a = bits(curve(job)[1])
        b = bits(curve(job)[1])
        base[variant] = a
        stop = threading.Event()
        threads = _background_threads(ctx, 3, stop)
        beside_streams = bits(curve(job)[1])
        stop.set()
        for t in threads:
            t.join()
        backend = pool(ctx, 3, processes=True)
        for i in range(3):
            other = spec("nn", ctx.device, seed=i + 1, job_id=f"bg{i}", steps=ctx.n(3000, 300))
            backend.submit(other)
        beside_processes = bits(curve(job)[1])
        from workers.backend import wait_finished

        wait_finished(backend, 3, timeout=ctx.n(60, 120))
        backend.stop()
        out[variant] = {
            "twice_alone": a == b,
            "beside_3_streams": a == beside_streams,
            "beside_3_processes": a == beside_processes,
        }
    code = _STRICT.format(path=sys.path[:], device=ctx.device, steps=steps)
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT
    )
    strict = dict(line.split() for line in done.stdout.splitlines() if line.count(" ") == 1)
    for variant in base:
        out[variant]["strict_same_as_default"] = strict.get(variant) == base[variant]
    out["strict_error"] = done.stderr[-800:] if done.returncode else None
    ok = all(all(v.values()) for k, v in out.items() if isinstance(v, dict))
    return {**out, "ok": ok, "summary": "deterministic" if ok else "differs: see JSON"}


def part_gpu_vs_cpu(ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for variant in torch_variants():
        for dtype in ("float32", "float64"):
            steps = ctx.n(50, 10)  # the tutorial's count on the GPU
            gpu = curve(spec(variant, ctx.device, dtype=dtype, steps=steps))[1]
            cpu = curve(spec(variant, "cpu", dtype=dtype, steps=steps))[1]
            out[f"{variant}/{dtype}"] = first_difference(gpu, cpu)
    worst = max(v["max_rel"] for v in out.values() if v)
    return {"curves": out, "summary": f"max relative difference {worst:.2e}"}


def part_tf32(ctx: Context) -> dict[str, Any]:
    from workers.numerics import FP32_PRECISION

    torch = ctx.torch
    size = ctx.n(8192, 256)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a64 = torch.randn(size, size, dtype=torch.float64, generator=gen)
    b64 = torch.randn(size, size, dtype=torch.float64, generator=gen)
    reference = a64 @ b64
    a, b = a64.float().to(ctx.device), b64.float().to(ctx.device)
    out: dict[str, Any] = {}
    matmul = torch.backends.cuda.matmul
    for mode in ("ieee", "tf32"):
        matmul.fp32_precision = mode
        try:
            product = a @ b
            ctx.sync()
            times = sorted(timed(ctx, lambda: a @ b) for _ in range(5))
            error = (product.double().cpu() - reference).abs().max() / reference.abs().max()
            out[mode] = {
                "max_rel_error": float(error),
                "tflops": 2 * size**3 / times[2] / 1e12,
            }
        finally:
            matmul.fp32_precision = FP32_PRECISION
    return {
        "size": size,
        **out,
        "summary": ", ".join(
            f"{m} {out[m]['tflops']:.3g} TFLOP/s, error {out[m]['max_rel_error']:.1e}"
            for m in ("tf32", "ieee")
        ),
    }


def _sweep(ctx: Context, variant: str, runs: int, steps: int) -> list[Any]:
    from workers.variants import VARIANTS

    default = VARIANTS[variant].hyperparameters.model_fields["learning_rate"].default
    return [
        spec(variant, ctx.device, seed=r, job_id=f"run{r}", steps=steps,
             learning_rate=default * 10 ** (-r / max(1, runs - 1)))
        for r in range(runs)
    ]  # fmt: skip


def _fused_curves(specs: list[Any], exact: bool) -> list[list[float]]:
    from workers.fused import FUSED
    from workers.fused.batch import run_fused

    got: list[list[float]] = [[] for _ in specs]
    sinks = [lambda first, values, r=r: got[r].extend(values) for r in range(len(specs))]
    run_fused(specs, FUSED[specs[0].variant], sinks, lambda f: None, kernels="batched",
              exact=exact)  # fmt: skip
    return got


def _causes(ctx: Context, runs: int) -> dict[str, Any]:
    """The reductions and products alone, on random data of the tutorial's shapes."""
    torch = ctx.torch
    gen = torch.Generator(device="cpu").manual_seed(runs)
    sq = torch.rand(runs, 64, 10, generator=gen).to(ctx.device)
    alone = torch.stack([part.sum() for part in sq.unbind(0)])
    a = torch.randn(runs, 64, 1000, generator=gen).to(ctx.device)
    b = torch.randn(runs, 1000, 100, generator=gen).to(ctx.device)
    mm = torch.stack([x.mm(y) for x, y in zip(a.unbind(0), b.unbind(0), strict=True)])
    return {
        "sum_vs_sum_dim_runs_differing": int((alone != sq.sum(dim=(1, 2))).sum()),
        "mm_vs_bmm_max_abs": float((mm - torch.bmm(a, b)).abs().max()),
    }


def part_fused_exactness(ctx: Context) -> dict[str, Any]:
    from workers.fused.batch import one_thread

    steps = ctx.n(25, 10)
    counts = (2, 4, 8, 16, 32, 64, 128, 256) if not ctx.dry_run else (2, 4, 8)
    out: dict[str, Any] = {}
    for variant in ("tensors", "nn", "optim"):
        for runs in counts:
            specs = _sweep(ctx, variant, runs, steps)
            with one_thread(ctx.torch.device(ctx.device)):  # as the service's check runs them
                alone = [curve(s)[1] for s in specs]
            row: dict[str, Any] = {}
            for exact in (True, False):  # per-run sum() as alone, or one sum(dim=(1, 2))
                fused = _fused_curves(specs, exact)
                diffs = [first_difference(f, a) for f, a in zip(fused, alone, strict=True)]
                firsts = [d["first_step"] for d in diffs if d["first_step"] is not None]
                row["per_run_sum" if exact else "sum_dim"] = {
                    "equal": not firsts,
                    "first_step": min(firsts, default=None),
                    "max_rel": max(d["max_rel"] for d in diffs),
                }
            row["causes"] = _causes(ctx, runs)
            out[f"{variant}/R={runs}"] = row
    exact = [k for k, v in out.items() if v["per_run_sum"]["equal"]]
    return {
        "steps": steps,
        "groups": out,
        "summary": f"{len(exact)} of {len(out)} groups equal to the runs alone",
    }


def part_speed(ctx: Context) -> dict[str, Any]:
    steps = ctx.n(2000, 50)
    out: dict[str, Any] = {}
    for variant in ("tensors", "nn", "optim"):
        job = spec(variant, ctx.device, steps=steps)
        ways: dict[str, Callable[[], Any]] = {
            "service": lambda job=job: curve(job, FLUSH_SECONDS),
            "no_sync": lambda job=job: own_loop(ctx, job, item=False),
            "item": lambda job=job: own_loop(ctx, job, item=True),
        }
        for fn in ways.values():  # warm
            fn()
        times: dict[str, list[float]] = {k: [] for k in ways}
        for _ in range(3):  # interleaved
            for name, fn in ways.items():
                times[name].append(timed(ctx, fn))
        rates = {k: steps / statistics.median(v) for k, v in times.items()}
        out[variant] = {**rates, "service_over_no_sync": rates["service"] / rates["no_sync"]}
    worst = min(v["service_over_no_sync"] for v in out.values())
    return {"steps": steps, "steps_per_s": out, "summary": f"service/no-sync >= {worst:.2f}"}


def part_concurrency(ctx: Context) -> dict[str, Any]:
    from workers.backend import wait_finished

    steps = ctx.n(1000, 30)
    out: dict[str, Any] = {}
    for processes in (False, True):
        for jobs in (1, 2, 4, 8) if not ctx.dry_run else (1, 2):
            backend = pool(ctx, jobs, processes)
            curve(spec("nn", ctx.device, steps=3))  # this process's first uses
            began = time.perf_counter()
            for i in range(jobs):
                backend.submit(spec("nn", "cuda" if not ctx.dry_run else "cpu", seed=i,
                                    job_id=f"job{i}", steps=steps))  # fmt: skip
            finished, _ = wait_finished(backend, jobs, timeout=ctx.n(60, 120))
            elapsed = time.perf_counter() - began
            backend.stop()
            ok = all(str(f.status) == "succeeded" for f in finished)
            key = f"{'processes' if processes else 'threads'}/{jobs}"
            out[key] = jobs * steps / elapsed if ok else None
    best = max((k for k in out if out[k]), key=lambda k: out[k] or 0)
    return {"steps_per_job": steps, "steps_per_s": out, "summary": f"best {best}"}


def part_memory(ctx: Context) -> dict[str, Any]:
    from workers.backend import wait_finished

    backend = pool(ctx, 1, processes=True)
    child = backend._children[0] if backend._children else None
    device = "cuda" if not ctx.dry_run else "cpu"
    variants = torch_variants()
    total = ctx.n(64, 8)
    seen: list[Any] = []
    for i in range(total):
        backend.submit(spec(variants[i % len(variants)], device, seed=i, job_id=f"j{i}",
                            steps=ctx.n(50, 5)))  # fmt: skip
        wait_finished(backend, 1, timeout=ctx.n(30, 60))
        if i in (0, total - 1):
            seen.append(child.memory() if child is not None else None)
    after_release = child.memory(release=True) if child is not None else None
    backend.stop()
    free = [s[0] if s else None for s in seen]
    grew = None if None in free else free[0] - free[1]  # type: ignore[operator]
    return {
        "jobs": total,
        "free_after_first": free[0],
        "free_after_last": free[1],
        "free_after_empty_cache": after_release[0] if after_release else None,
        "grew_bytes": grew,
        "summary": f"{total} jobs: free memory fell by {grew:,} bytes"
        if grew is not None
        else f"{total} jobs ran (no device memory to read on the CPU)",
    }


def part_oom(ctx: Context) -> dict[str, Any]:
    from workers.backend import wait_finished

    backend = pool(ctx, 1, processes=True)
    device = "cuda" if not ctx.dry_run else "cpu"
    child = backend._children[0] if backend._children else None
    seen = child.memory() if child is not None else None
    total = seen[1] if seen else 1 << 46  # the CPU: far beyond the host (refused at once)
    side = int((2 * total / 8) ** 0.5) + 1
    # the host draws (N, 1) and (1, H) arrays; the device's (N, H) hidden layer needs twice
    # the card in float64
    huge = spec("tensors", device, job_id="huge", batch_size=side, d_in=1, hidden=side,
                d_out=1, dtype="float64")  # fmt: skip
    pid_before = child._process.pid if child is not None else None
    # the pool would refuse it before it starts (it needs more than the card): let it start
    backend.device_memory = lambda d: (1 << 62, 1 << 62)
    if child is not None:
        child.memory = lambda release=False: (1 << 62, 1 << 62)  # type: ignore[method-assign]
    backend.submit(huge)
    first, _ = wait_finished(backend, 1, timeout=ctx.n(30, 60))
    backend.submit(spec("tensors", device, job_id="after"))
    second, _ = wait_finished(backend, 1, timeout=ctx.n(30, 60))
    pid_after = child._process.pid if child is not None else None
    backend.stop()
    ok = (
        first[0].error_code == "out_of_memory"
        and str(second[0].status) == "succeeded"
        and pid_before == pid_after
    )
    return {
        "huge": {"status": str(first[0].status), "error_code": str(first[0].error_code),
                 "message": first[0].error_message},
        "next": str(second[0].status),
        "same_child": pid_before == pid_after,
        "ok": ok,
        "summary": "contained" if ok else "not contained: see JSON",
    }  # fmt: skip


def part_fused_speed(ctx: Context) -> dict[str, Any]:
    from workers.backend import wait_finished
    from workers.fused.check import record_verdict

    steps = ctx.n(500, 10)
    out: dict[str, Any] = {}
    for runs in (16, 64, 256) if not ctx.dry_run else (4,):
        specs = _sweep(ctx, "nn", runs, steps)
        device = "cuda" if not ctx.dry_run else "cpu"
        specs = [replace(s, device=device) for s in specs]
        record_verdict(specs, None)  # the fused computation, whatever the check says
        rates = {}
        for fused in (False, True):
            backend = pool(ctx, 1, processes=False)
            began = time.perf_counter()
            if fused:
                backend.submit_group(specs)
            else:
                for one in specs:
                    backend.submit(one)
            finished, started = wait_finished(backend, runs, timeout=ctx.n(40, 120))
            rates["fused" if fused else "plain"] = runs / (time.perf_counter() - began)
            backend.stop()
        out[f"R={runs}"] = {**rates, "fused_over_plain": rates["fused"] / rates["plain"]}
    summary = ", ".join(f"{k} {v['fused_over_plain']:.1f}x" for k, v in out.items())
    return {"steps": steps, "runs_per_s": out, "summary": f"fused/plain: {summary}"}


# -- driving the parts -----------------------------------------------------------------------
def run_part(name: str, dry_run: bool, out: Path) -> None:
    """In a part's own process: run it, write its result as JSON to `out`."""
    if dry_run:
        from workers.fused import check

        check.EXACT_KERNELS["cpu"] = "batched"  # the GPU's kernels, so the check path runs
    ctx = Context(dry_run)
    result = globals()[f"part_{name}"](ctx)
    out.write_text(json.dumps(result, default=str, allow_nan=False))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def drive(parts: list[str], dry_run: bool, scale: float, wheels: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*wheels, str(ROOT)])}
    env.setdefault("PYTHONWARNINGS", "ignore")
    results: dict[str, Any] = {}
    for name in parts:
        limit = PARTS[name][0] * scale
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "result.json"
            cmd = [sys.executable, "-m", "bench.gpu_check", "--part", name, "--result", str(out)]
            if dry_run:
                cmd.append("--dry-run")
            began = time.perf_counter()
            try:
                done = subprocess.run(
                    cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit
                )
                status = "ok" if done.returncode == 0 and out.exists() else "failed"
                tail = (done.stderr or done.stdout)[-2000:]
            except subprocess.TimeoutExpired as exc:
                status, tail = "timeout", str(exc.stderr or "")[-2000:]
            seconds = time.perf_counter() - began
            result = json.loads(out.read_text()) if out.exists() else {}
        if status == "ok" and result.get("ok") is False:
            status = "check failed"
        results[name] = {
            "status": status,
            "seconds": round(seconds, 2),
            "limit_s": limit,
            "result": _json_safe(result),
            "error": None if status == "ok" else tail,
        }
        line = result.get("summary", "") if status in ("ok", "check failed") else tail[-200:]
        print(f"| {name} | {status} | {seconds:.1f} | {line.splitlines()[-1] if line else ''} |")
        sys.stdout.flush()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="rehearse on the CPU, small sizes")
    parser.add_argument("--wheels", default=os.environ.get("GPU_WHEELS"), help="wheels folder")
    parser.add_argument("--out", default="gpu-check.json", help="the results' JSON file")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated parts")
    parser.add_argument(
        "--timeout-scale", type=float, help="times each part's timeout (1 on a GPU, 6 dry)"
    )
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    wheels = use_wheels(args.wheels)
    if args.part:
        run_part(args.part, args.dry_run, Path(args.result))
        return 0
    try:
        import torch
    except ImportError:
        print(f"gpu-check: {sys.executable} has no torch; nothing measured", file=sys.stderr)
        return NO_CUDA
    began = datetime.now(UTC)
    if not args.dry_run and not torch.cuda.is_available():
        print(
            f"gpu-check: torch {torch.__version__} sees no CUDA device here; nothing measured "
            "(--dry-run rehearses on the CPU)",
            file=sys.stderr,
        )
        Path(args.out).write_text(json.dumps({"cuda": False, "torch": torch.__version__}))
        return NO_CUDA
    parts = [p for p in args.parts.split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown parts: {', '.join(unknown)}; known: {', '.join(PARTS)}")
    scale = args.timeout_scale or (6.0 if args.dry_run else 1.0)
    name = "cpu (dry run)" if args.dry_run else torch.cuda.get_device_name(0)
    print(f"\n## GPU check: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"python {platform.python_version()}, {began:%Y-%m-%d %H:%M} UTC\n")  # fmt: skip
    print("| part | status | s | result |\n|---|---|---:|---|")
    results = drive(parts, args.dry_run, scale, wheels)
    report = {
        "device": name,
        "dry_run": args.dry_run,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "started": began.isoformat(),
        "seconds": round((datetime.now(UTC) - began).total_seconds(), 1),
        "parts": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=1, allow_nan=False))
    print(f"\n{report['seconds']} s in all; results in {args.out}")
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
