"""A run's checkpoints: a run that pauses and goes on from its checkpoint makes the curve of the
run that never stopped, bit for bit, in every variant; files are whole or absent."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from pathlib import Path

import pytest
import torch
from runkit import make_spec
from safetensors.torch import load_file

from trainwire.jobs import Checkpointed, CheckpointPlan, CheckpointRef, JobSpec, RunOutcome
from workers.checkpoints import checkpoint_path, read_metadata
from workers.runner import run_job
from workers.variants import VARIANTS

SIZES = {"batch_size": 8, "d_in": 6, "hidden": 5, "d_out": 3}
STEPS = 24


class PauseAt:
    """A pause flag that sets itself once the run has recorded `step` losses."""

    def __init__(self, step: int):
        self.step = step
        self.seen = 0

    def sink(self, first: int, values: list[float]) -> None:
        self.seen = first + len(values)

    def is_set(self) -> bool:
        return self.seen >= self.step


def _spec(variant: str, folder: Path, every: int = 0, device: str = "cpu", **hp: object) -> JobSpec:
    spec = make_spec(variant, seed=7, device=device, steps=STEPS, **{**SIZES, **hp})
    return dataclasses.replace(spec, job_id="j1", checkpoint=CheckpointPlan(str(folder), every))


def _train(spec: JobSpec, pause: PauseAt | None = None) -> tuple[dict[int, float], list, object]:
    losses: dict[int, float] = {}
    written: list[Checkpointed] = []

    def sink(first: int, values: list[float]) -> None:
        losses.update(zip(range(first, first + len(values)), values, strict=True))
        if pause is not None:
            pause.sink(first, values)

    # flush every step: the pause flag sees each loss at once
    finished = run_job(
        spec, sink, threading.Event(), None, 0.0, pause=pause, on_checkpoint=written.append
    )
    return losses, written, finished


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[CUDA, pytest.mark.gpu])])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_pause_then_resume_is_the_run_that_never_stopped(
    variant: str, device: str, tmp_path: Path
) -> None:
    """On the CPU, pausing when step 9's loss is out stops before step 9."""
    if device not in VARIANTS[variant].devices:
        pytest.skip(f"{variant} runs on {VARIANTS[variant].devices}")
    whole, whole_written, whole_end = _train(_spec(variant, tmp_path / "whole", device=device))
    assert whole_end.status == RunOutcome.succeeded  # type: ignore[attr-defined]
    assert [c.step for c in whole_written] == [STEPS]  # every=0: the final weights only

    spec = _spec(variant, tmp_path / "paused", every=5, device=device)
    first, written, end = _train(spec, PauseAt(9))
    assert end.status == RunOutcome.paused  # type: ignore[attr-defined]
    # on the CPU the pause comes before step 9; a GPU hands losses out later, so later
    at = written[-1].step
    assert 9 <= at < STEPS and (at == 9 or device != "cpu")
    assert [c.step for c in written] == [*range(5, at, 5), at]  # the due ones, the pause's
    last = written[-1]
    assert last.error is None and Path(last.path) == checkpoint_path(tmp_path / "paused", at)
    assert hashlib.sha256(Path(last.path).read_bytes()).hexdigest() == last.sha256
    assert sorted(first) == list(range(at))

    ref = CheckpointRef(last.path, last.step, last.sha256)
    resumed_spec = dataclasses.replace(
        spec, checkpoint=dataclasses.replace(spec.checkpoint, resume=ref)
    )  # type: ignore[arg-type]
    rest, rest_written, rest_end = _train(resumed_spec)
    assert rest_end.status == RunOutcome.succeeded  # type: ignore[attr-defined]
    assert min(rest) == at, "it went on from the checkpoint, not from step 0"
    assert [c.step for c in rest_written] == [*range(at // 5 * 5 + 5, STEPS, 5), STEPS]
    assert {**first, **rest} == whole  # bit for bit: floats compare exactly


def test_the_final_weights_load_into_the_tutorials_model(tmp_path: Path) -> None:
    from workers.problem import Problem

    _, written, _ = _train(_spec("optim", tmp_path))
    path = written[-1].path
    tensors = load_file(path)
    model = torch.nn.Sequential(
        torch.nn.Linear(SIZES["d_in"], SIZES["hidden"]),
        torch.nn.ReLU(),
        torch.nn.Linear(SIZES["hidden"], SIZES["d_out"]),
    )
    model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("optimizer.")})
    assert read_metadata(Path(path).read_bytes())["step"] == STEPS
    x, _ = Problem(
        7, SIZES["batch_size"], SIZES["d_in"], SIZES["hidden"], SIZES["d_out"], "float32"
    ).data(torch.device("cpu"))
    assert model(x).shape == (SIZES["batch_size"], SIZES["d_out"])


def test_a_checkpoint_that_cannot_be_written_fails_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder should be")
    losses, written, end = _train(_spec("nn", blocker, every=10))
    assert end.status == RunOutcome.succeeded  # type: ignore[attr-defined]
    assert sorted(losses) == list(range(STEPS))
    assert [c.step for c in written] == [10, 20, STEPS]
    assert all(c.error for c in written), "each one reported, and tried again"


def test_a_damaged_checkpoint_is_not_used(tmp_path: Path) -> None:
    whole, _, _ = _train(_spec("tensors", tmp_path / "a"))
    spec = _spec("tensors", tmp_path / "b", every=10)
    _, written, _ = _train(spec)
    ref = CheckpointRef(written[0].path, 10, "0" * 64)  # not its sha256
    again = dataclasses.replace(spec, checkpoint=CheckpointPlan(str(tmp_path / "b"), 10, ref))
    losses, _, end = _train(again)
    assert end.status == RunOutcome.succeeded  # type: ignore[attr-defined]
    assert losses == whole, "from step 0 instead"
