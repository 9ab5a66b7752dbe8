"""GPU code paths: each torch variant on CUDA, losses leaving the device without per-step syncs,
out-of-memory contained to its job, and the pool's GPU workers. Skipped where there is no GPU.

Needs torch, numpy and pydantic only (no service), so it runs on a bare GPU host:
`python -m pytest --noconftest -m gpu tests/gpu` (what `make gpu-check` does).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from trainwire.jobs import Finished, JobSpec
from workers.backend import wait_finished
from workers.hyperparameters import Limits, parse_hyperparameters
from workers.pool import LocalBackend
from workers.runner import run_job
from workers.sync_debug import step_loop_sync_debug
from workers.variants import VARIANTS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

TORCH_VARIANTS = [name for name, v in VARIANTS.items() if "cuda" in v.devices]
NO_LIMITS = Limits(max_steps=10**9, max_job_bytes=1 << 62)


def spec(variant: str, seed: int = 0, device: str = "cuda:0", **hp: object) -> JobSpec:
    model = VARIANTS[variant].hyperparameters
    return JobSpec(
        variant, parse_hyperparameters(model, dict(hp), variant, NO_LIMITS), seed, device
    )


def losses_of(job: JobSpec) -> tuple[Finished, list[float]]:
    got: list[float] = []
    outcome = run_job(job, lambda first, values: got.extend(values))
    return outcome, got


@pytest.mark.parametrize("variant", TORCH_VARIANTS)
def test_variant_on_gpu_follows_the_cpu_curve(variant: str) -> None:
    gpu_outcome, gpu = losses_of(spec(variant, dtype="float64"))
    cpu_outcome, cpu = losses_of(spec(variant, dtype="float64", device="cpu"))
    assert gpu_outcome.status == cpu_outcome.status == "succeeded"
    assert len(gpu) == len(cpu) == 50
    for g, c in zip(gpu, cpu, strict=True):
        assert g == pytest.approx(c, rel=1e-6)


@pytest.mark.parametrize("variant", TORCH_VARIANTS)
def test_losses_leave_the_gpu_without_a_sync_per_step(variant: str) -> None:
    # the set-up's host-to-device copies synchronise (and are expected to): the mode is on for
    # the step loop only, and "error" fails the job at the first step that synchronises
    job = spec(variant, steps=300)
    losses_of(job)  # warm up: first-use allocations may sync
    with step_loop_sync_debug("error") as counted:
        outcome, got = losses_of(job)
    assert outcome.status == "succeeded", outcome.error_message
    assert len(got) == 300 and counted == [299]


def test_divergence_on_gpu_stops_at_the_first_non_finite_step() -> None:
    outcome, got = losses_of(spec("tensors", learning_rate=1e-2, dtype="float32", steps=200))
    assert outcome.status == "failed" and outcome.error_code == "diverged"
    assert got and not torch.isfinite(torch.tensor(got[-1]))
    assert all(torch.isfinite(torch.tensor(got[:-1])))


def test_out_of_memory_fails_only_that_job_and_frees_the_device() -> None:
    losses_of(spec("tensors"))  # this thread's stream and its cuBLAS workspace exist now
    before = torch.cuda.memory_allocated()
    _, total = torch.cuda.mem_get_info()
    # the host draws only (N, 1) and (1, H) arrays; the device's (N, H) hidden layer alone
    # needs twice the card in float64
    side = int((2 * total / 8) ** 0.5) + 1
    job = spec("tensors", batch_size=side, d_in=1, hidden=side, d_out=1, dtype="float64")
    outcome, _ = losses_of(job)
    assert outcome.status == "failed" and outcome.error_code == "out_of_memory", (
        outcome.error_message
    )
    assert torch.cuda.memory_allocated() <= before + (1 << 20)  # the job's tensors are gone
    outcome, got = losses_of(spec("tensors"))
    assert outcome.status == "succeeded" and len(got) == 50


def test_pool_runs_concurrent_jobs_on_one_gpu() -> None:
    pool = LocalBackend(cpu_workers=0, jobs_per_gpu=4, cpu_threads=1, gpus=["cuda:0"])
    pool.start()
    for i in range(8):
        variant = TORCH_VARIANTS[i % len(TORCH_VARIANTS)]
        pool.submit(replace(spec(variant, i, device="cuda"), job_id=f"job{i}"))
    finished, started = wait_finished(pool, 8, timeout=120)
    pool.stop()
    assert all(o.status == "succeeded" for o in finished)
    assert {s.device for s in started.values()} == {"cuda:0"}


_POOL_IN_A_PROCESS = """
import torch
from workers.backend import wait_finished
from workers.hyperparameters import Limits, parse_hyperparameters
from workers.pool import LocalBackend
from trainwire.jobs import JobSpec
from workers.variants import VARIANTS

pool = LocalBackend(cpu_workers=0, jobs_per_gpu=1, cpu_threads=1, gpus=["cuda:0"], processes=True)
pool.start()
hp = parse_hyperparameters(VARIANTS["optim"].hyperparameters, {}, "optim", Limits())
pool.submit(JobSpec("optim", hp, 0, "cuda", job_id="job"))
finished, _ = wait_finished(pool, 1, timeout=120)
pool.stop()
print(finished[0].status, torch.cuda.is_initialized())
"""


def test_with_worker_processes_the_server_process_holds_no_cuda_context() -> None:
    # a CUDA context costs hundreds of MB on each device: only the children that train hold one
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run(
        [sys.executable, "-c", _POOL_IN_A_PROCESS],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["succeeded", "False"], done.stdout
