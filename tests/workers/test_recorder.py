"""The loss recorder: every step delivered once, in order, the first one at once."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from workers.recorder import Diverged, LossRecorder


class Sink:
    def __init__(self) -> None:
        self.calls: list[tuple[int, list[float]]] = []

    def __call__(self, first_step: int, losses: list[float]) -> None:
        self.calls.append((first_step, list(losses)))


def test_step_0_is_delivered_alone_at_once() -> None:
    sink = Sink()
    recorder = LossRecorder(sink, steps=100, flush_seconds=3600, flush_steps=512)
    recorder.record(0, 5.0)
    assert sink.calls == [(0, [5.0])]
    assert recorder.delivered == 1


def test_later_steps_are_batched_by_count_and_flush_delivers_the_rest() -> None:
    sink = Sink()
    recorder = LossRecorder(sink, steps=100, flush_seconds=3600, flush_steps=4)
    for t in range(11):
        recorder.record(t, float(t))
        assert recorder.delivered == len([v for _, batch in sink.calls for v in batch])
    assert sink.calls == [(0, [0.0]), (1, [1.0, 2.0, 3.0, 4.0]), (5, [5.0, 6.0, 7.0, 8.0])]
    recorder.flush()
    assert sink.calls[-1] == (9, [9.0, 10.0])
    assert recorder.delivered == 11
    recorder.flush()  # nothing pending: no empty batch
    assert len(sink.calls) == 4


def test_a_zero_flush_interval_delivers_every_step_as_it_comes() -> None:
    sink = Sink()
    recorder = LossRecorder(sink, steps=10, flush_seconds=0)
    for t in range(5):
        recorder.record(t, 10.0 - t)
        assert sink.calls[-1] == (t, [10.0 - t])


def test_numpy_scalars_and_tensors_arrive_as_python_floats() -> None:
    sink = Sink()
    recorder = LossRecorder(sink, steps=10, flush_seconds=3600)
    values: list[Any] = [
        np.float64(1.5),
        np.float32(2.5),
        torch.tensor(3.5),
        torch.tensor(4.5, dtype=torch.float64, requires_grad=True) * 1,  # a graph's output
    ]
    for t, value in enumerate(values):
        recorder.record(t, value)
    recorder.flush()
    losses = [v for _, batch in sink.calls for v in batch]
    assert losses == [1.5, 2.5, 3.5, 4.5]
    assert all(type(v) is float for v in losses)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_loss_is_delivered_then_raises_diverged(bad: float) -> None:
    sink = Sink()
    recorder = LossRecorder(sink, steps=100, flush_seconds=3600)
    for t in range(4):
        recorder.record(t, 1.0)
    with pytest.raises(Diverged) as info:
        recorder.record(4, bad)
    assert info.value.step == 4
    assert repr(info.value.loss) == repr(bad)  # nan, inf or -inf
    delivered = [v for _, batch in sink.calls for v in batch]
    assert delivered[:4] == [1.0] * 4 and len(delivered) == 5
    assert not math.isfinite(delivered[4])
    assert recorder.delivered == 5


@pytest.mark.parametrize("flush_seconds", [0.0, 0.005, 3600.0])
def test_a_runs_batches_are_contiguous_from_0_with_step_0_alone(
    train: Callable[..., Any], flush_seconds: float
) -> None:
    # the train fixture's sink checks that each batch starts where the last one ended
    result = train("tensors", flush_seconds=flush_seconds, steps=300, d_in=50, hidden=20)
    assert result.outcome.steps_done == len(result.losses) == 300
    assert result.batches[0] == (0, 1)
    assert sum(count for _, count in result.batches) == 300
    if flush_seconds == 3600.0:
        assert result.batches == [(0, 1), (1, 299)]  # the rest arrives with the final flush
    if flush_seconds == 0.0:
        assert len(result.batches) == 300


def test_step_0_reaches_the_sink_before_step_1_runs(train: Callable[..., Any]) -> None:
    """The time to the first loss is one step, however long the batching interval."""
    cancel = threading.Event()

    def stop_at_first_batch(collected: Any) -> None:
        cancel.set()

    result = train("numpy", cancel=cancel, on_batch=stop_at_first_batch, flush_seconds=3600)
    assert result.outcome.status == "cancelled"
    assert result.batches == [(0, 1)]
    assert result.outcome.steps_done == 1
