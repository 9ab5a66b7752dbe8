"""The GPU code paths that can be shown without a GPU: the CUDA calls behind seams.

Admission by device memory (idle workers empty their caches for a job that waits), one stream
per worker thread, the sync debug mode over the step loop only, the numerics pinned and
recorded, and a fused group's per-run loss reduction."""

from __future__ import annotations

import threading
from typing import Any

import torch
from servers import wait_for

from trainwire.jobs import JobSpec
from workers.fused.batch import _exact, loss_sums, run_fused
from workers.hyperparameters import Limits, parse_hyperparameters
from workers.numerics import FOREACH, numerics_facts
from workers.pool import LocalBackend, _Queued
from workers.processes import device_facts
from workers.runner import job_stream, run_job
from workers.sync_debug import step_loop_sync_debug
from workers.variants import VARIANTS


def job(variant: str = "tensors", device: str = "cpu", **hp: Any) -> JobSpec:
    model = VARIANTS[variant].hyperparameters
    return JobSpec(variant, parse_hyperparameters(model, hp, variant, Limits()), 0, device)


def test_a_job_waiting_for_memory_gets_what_an_idle_workers_cache_holds() -> None:
    pool = LocalBackend(cpu_workers=0, jobs_per_gpu=2, cpu_threads=1, gpus=["cuda:0"])
    item = _Queued(job(device="cuda"))
    need = item.bytes_needed
    total = 4 * need
    # the idle worker's cache holds most of the card; the waiting worker's holds nothing
    cached = {"idle": total - need // 2, "waiting": 0}
    released: list[str] = []

    def release(device: str, child: object) -> None:
        name = threading.current_thread().name
        released.append(name)
        cached[name] = 0

    pool.device_memory = lambda device: (total - sum(cached.values()), total)
    pool.release_cached = release
    idle = threading.Thread(target=pool._take, args=("cuda:0", None), name="idle", daemon=True)
    idle.start()
    answer: list[object] = []
    waiting = threading.Thread(
        target=lambda: answer.append(pool._wait_for_memory(item, "cuda:0", None)),
        name="waiting",
        daemon=True,
    )
    waiting.start()
    waiting.join(timeout=60)
    pool.stop()
    idle.join(timeout=60)
    assert answer == [None], "the job was not admitted"  # admitted: it may run
    assert "idle" in released and pool._memory_waiters == {"cuda:0": 0}


def test_a_worker_that_goes_idle_while_a_job_waits_for_memory_empties_its_cache() -> None:
    pool = LocalBackend(cpu_workers=0, jobs_per_gpu=2, cpu_threads=1, gpus=["cuda:0"])
    released: list[str] = []
    pool.release_cached = lambda device, child: released.append(device)
    pool._memory_waiters["cuda:0"] = 1  # a job waits already, before this worker's job ended
    idle = threading.Thread(target=pool._take, args=("cuda:0", None), daemon=True)
    idle.start()
    wait_for(lambda: released == ["cuda:0"], timeout=60)
    pool.stop()
    idle.join(timeout=60)
    assert released == ["cuda:0"]  # once per idle spell, not at every wake-up


def test_a_job_too_big_for_the_card_fails_at_once() -> None:
    pool = LocalBackend(cpu_workers=0, jobs_per_gpu=1, cpu_threads=1, gpus=["cuda:0"])
    item = _Queued(job(device="cuda"))
    pool.device_memory = lambda device: (item.bytes_needed - 1, item.bytes_needed - 1)
    pool.release_cached = lambda device, child: None
    finished = pool._wait_for_memory(item, "cuda:0", None)
    assert finished is not None and finished.error_code == "out_of_memory"


def test_jobs_of_one_worker_thread_reuse_one_stream() -> None:
    made: list[torch.device] = []

    def make(device: torch.device) -> object:
        made.append(device)
        return object()

    device = torch.device("cuda", 7)
    first = job_stream(device, make)
    assert job_stream(device, make) is first
    other: list[object] = []
    thread = threading.Thread(target=lambda: other.append(job_stream(device, make)))
    thread.start()
    thread.join()
    assert other[0] is not first and made == [device, device]


def test_sync_debug_mode_covers_the_step_loop_only() -> None:
    calls: list[str | int] = []
    with step_loop_sync_debug("error", calls.append) as counted:
        outcome = run_job(job("optim", steps=30), lambda first, values: None)
    assert outcome.status == "succeeded"
    assert calls == ["error", 0] and counted == [29]  # after the first step, to the last
    outcome = run_job(job("optim", steps=5), lambda first, values: None)
    assert calls == ["error", 0]  # the step loop is itself again


def test_numerics_are_pinned_and_recorded() -> None:
    torch.backends.cuda.matmul.fp32_precision = "tf32"  # as some library might
    run_job(job(steps=2), lambda first, values: None)
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    facts = device_facts("cpu")
    assert facts["matmul_fp32_precision"] == "ieee" and facts["conv_fp32_precision"] == "ieee"
    assert facts["optimizer_foreach"] is FOREACH is False
    assert numerics_facts("cpu")["deterministic_algorithms"] is False


def test_an_exact_fused_group_reduces_each_runs_loss_as_alone() -> None:
    diff = torch.randn(5, 64, 10, dtype=torch.float32)
    alone = torch.stack([(d.pow(2)).sum() for d in diff.unbind(0)])
    assert torch.equal(loss_sums(diff), alone)  # exact by default
    token = _exact.set(False)
    try:
        assert torch.allclose(loss_sums(diff), diff.pow(2).sum(dim=(1, 2)))
    finally:
        _exact.reset(token)
    seen: list[bool] = []
    specs = [job("tensors", steps=1)] * 2
    for exact in (True, False):
        run_fused(specs, lambda run: seen.append(_exact.get()), [lambda f, v: None] * 2,
                  lambda finished: None, kernels="batched", exact=exact)  # fmt: skip
    assert seen == [True, False]
