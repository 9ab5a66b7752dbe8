"""The Ray backend's decisions that need no cluster: which slots a set of nodes gets, where a job
may run, and what becomes of a job whose worker was lost. (GPU nodes exist only here: no GPU
was available where these were written.)"""

from __future__ import annotations

from typing import Any

import pytest

from trainwire.jobs import ErrorCode, Finished, JobSpec, RunOutcome
from workers.backend import DeviceUnavailable
from workers.hyperparameters import Limits, parse_hyperparameters
from workers.ray_backend import RayBackend, _Node, _Queued, _Slot
from workers.variants import VARIANTS

TORCH = VARIANTS["nn"].devices  # ("cpu", "cuda")
NUMPY = VARIANTS["numpy"].devices  # ("cpu",)


def backend(nodes: list[_Node], **options: Any) -> RayBackend:
    """A backend that has looked at these nodes (and never connected)."""
    made = RayBackend(address="127.0.0.1:1", **options)
    made._nodes = {n.node_id: n for n in nodes}
    made._seen_nodes = True
    return made


def test_each_node_gets_slots_for_its_cpus_and_gpus() -> None:
    nodes = [_Node("a", cpus=4, gpus=0), _Node("b", cpus=2, gpus=2)]
    plan = backend(nodes, cpu_threads=2, jobs_per_gpu=3)._plan(nodes)
    assert sorted(plan) == sorted(
        [("a", "cpu", 0), ("a", "cpu", 1), ("b", "cpu", 0)] + [("b", "cuda", i) for i in range(6)]
    )


def test_a_cap_on_cpu_slots_spreads_them_over_the_nodes() -> None:
    nodes = [_Node("a", cpus=8, gpus=0), _Node("b", cpus=8, gpus=0), _Node("c", cpus=1, gpus=0)]
    plan = backend(nodes, max_cpu_slots=4)._plan(nodes)
    assert sorted(plan) == [("a", "cpu", 0), ("a", "cpu", 1), ("b", "cpu", 0), ("c", "cpu", 0)]


def test_slots_already_up_are_kept_when_a_node_joins_under_a_cap() -> None:
    nodes = [_Node("b", cpus=2, gpus=0)]
    made = backend(nodes, max_cpu_slots=2)
    for key in made._plan(nodes):
        made._slots[key] = _Slot(*key, actor=None)
    joined = [_Node("a", cpus=2, gpus=0), *nodes]
    assert sorted(made._plan(joined)) == [("b", "cpu", 0), ("b", "cpu", 1)]


def test_devices_are_placed_by_what_the_cluster_has() -> None:
    cpu_only = backend([_Node("a", cpus=2, gpus=0)])
    assert cpu_only.resolve_device("auto", TORCH) == "cpu"
    assert cpu_only.resolve_device("cpu", TORCH) == "cpu"
    with pytest.raises(DeviceUnavailable, match="no node with a GPU"):
        cpu_only.resolve_device("cuda", TORCH)

    with_gpu = backend([_Node("a", cpus=2, gpus=0), _Node("g", cpus=8, gpus=1)])
    assert with_gpu.resolve_device("auto", TORCH) == "cuda"
    assert with_gpu.resolve_device("auto", NUMPY) == "cpu"
    assert with_gpu.resolve_device("cuda", TORCH) == "cuda"
    with pytest.raises(DeviceUnavailable, match="CPU only"):
        with_gpu.resolve_device("cuda", NUMPY)
    with pytest.raises(DeviceUnavailable, match="names a device of one host"):
        with_gpu.resolve_device("cuda:0", TORCH)

    no_gpu_slots = backend([_Node("g", cpus=8, gpus=1)], jobs_per_gpu=0)
    assert no_gpu_slots.resolve_device("auto", TORCH) == "cpu"
    gpu_only = backend([_Node("g", cpus=0, gpus=1)])
    with pytest.raises(DeviceUnavailable, match="CPU"):
        gpu_only.resolve_device("cpu", TORCH)


def spec(job_id: str) -> JobSpec:
    hp = parse_hyperparameters(VARIANTS["numpy"].hyperparameters, {}, "numpy", Limits())
    return JobSpec("numpy", hp, 0, "cpu", job_id=job_id)


def lose(made: RayBackend, item: _Queued) -> Finished | None:
    """Take the job as a slot does, lose its run, and return what the backend said."""
    with made._cond:
        if item in made._queue:
            made._queue.remove(item)
        made._running[item.job_id] = item
    made._lost(item, _Slot("n", "cpu", 0, actor=None), "the node died", 7)
    return made.next_message(0)


def test_a_lost_run_goes_back_to_the_front_of_the_queue_until_the_attempts_are_spent() -> None:
    made = backend([_Node("n", cpus=1, gpus=0)], attempts=3)
    made.submit(spec("later"))
    item = _Queued(spec("lost"))
    assert lose(made, item) is None
    assert [s.job_id for s in made.queued_specs()] == ["lost", "later"]
    assert lose(made, item) is None
    finished = lose(made, item)
    assert finished is not None and finished.job_id == "lost"
    assert finished.status == RunOutcome.failed and finished.error_code == ErrorCode.worker_lost
    assert "3 times" in (finished.error_message or "") and "node n" in (
        finished.error_message or ""
    )
    assert [s.job_id for s in made.queued_specs()] == ["later"]


def test_a_lost_run_that_was_cancelled_or_stopped_is_not_rerun() -> None:
    made = backend([_Node("n", cpus=1, gpus=0)])
    cancelled = _Queued(spec("cancelled"), cancelled=True)
    assert lose(made, cancelled) == Finished("cancelled", RunOutcome.cancelled, 7)
    made._stopping.set()
    assert lose(made, _Queued(spec("stopped"))) == Finished("stopped", RunOutcome.interrupted, 7)
    assert made.queued() == 0


def test_the_flush_interval_grows_with_the_jobs_running() -> None:
    made = backend([_Node("n", cpus=1, gpus=0)], flush_seconds=0.02)
    assert made._flush_for_running() == 0.02
    made._running = {str(i): _Queued(spec(str(i))) for i in range(100)}
    assert made._flush_for_running() == pytest.approx(0.16)
