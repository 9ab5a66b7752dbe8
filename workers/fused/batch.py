"""Drives a fused group: R runs that differ only in learning rate and seed, trained as one
batched computation, each run's losses and end reported as if it had run alone.

A fused variant is a function `train(run: FusedRun) -> None` written like the variant's own
program with every tensor stacked along a leading run dimension (R, ...). Everything around it
lives here: each run's problem drawn from its own seed and stacked, the step loop, which runs
are still training (a run that is cancelled or diverges is masked out: its losses stop and its
`Finished` goes out at once, while the others go on), and the time limit.

Runs are independent inside every batched operation (batched matmuls, elementwise ops, reductions
within one run's slice), so a masked run's numbers, NaN included, never reach another run.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trainwire.jobs import ErrorCode, Finished, JobSpec, RunOutcome
from workers.problem import TORCH_DTYPES, Problem
from workers.recorder import LossSink
from workers.runner import CancelFlag, TimedOut, _is_out_of_memory, job_stream

# ATen's CPU bmm takes another kernel than mm below this many multiply-adds per matrix
# (K * M * N < 400); there, batched kernels still compute each run's product as its own mm
BMM_SMALL = 400

# How a fused group's matrix products are computed (see run_fused's `kernels`):
#   "per_run": each run's product is the call it makes alone (mm, addmm, dot on its own slice,
#              the same shapes and strides), so the group's runs equal the runs alone by
#              construction: everything else in a step is elementwise or within one run's slice.
#   "batched": one batched call for every run (bmm, baddbmm, matmul on (R, ...) arrays): fewer
#              calls, but a BLAS may round a batched product otherwise than a single one (MKL's
#              SGEMM_BATCH and SGEMM do on AMD EPYC), so equality with the runs alone is a
#              fact to check on each machine, not a given.
KERNELS = ("per_run", "batched")
_kernels: contextvars.ContextVar[str] = contextvars.ContextVar("fused_kernels", default="per_run")
# whether the group's runs must equal the runs alone (else one reduction for every run)
_exact: contextvars.ContextVar[bool] = contextvars.ContextVar("fused_exact", default=True)


class FusedRecorder:
    """Per-run losses of a fused group, delivered in order to each run's sink.

    On the CPU a step's R losses are read once (`.tolist()`, no device) and batches are cut
    every few milliseconds. On a GPU each step's (R,) losses are copied on the device into an
    (steps, R) buffer, and slices of it come back to pinned host memory asynchronously, as
    `workers.recorder.LossRecorder` does for one run; a run whose loss is not finite is ended at
    that step when the slice lands (steps after it ran speculatively and are dropped).
    """

    def __init__(
        self,
        sinks: Sequence[LossSink],
        steps: int,
        device: torch.device,
        flush_seconds: float = 0.005,
        flush_steps: int = 512,
    ):
        self._sinks = sinks
        self._runs = len(sinks)
        self._steps = steps
        self._flush_seconds = flush_seconds
        self._flush_steps = flush_steps
        self._cuda = device.type == "cuda"
        self.delivered = [0] * self._runs  # steps handed to each run's sink
        self.diverged: dict[int, tuple[int, float]] = {}  # run -> (step, loss)
        self.open = [True] * self._runs  # still taking losses (not ended)
        self._pending: list[list[float]] = [[] for _ in sinks]
        self._recorded = 0
        self._host_flushed = 0  # steps recorded at the last delivery (CPU)
        self._last_flush = time.perf_counter()
        if self._cuda:
            self._buffer = torch.empty((steps, self._runs), dtype=torch.float64, device=device)
            self._host = torch.empty((steps, self._runs), dtype=torch.float64, pin_memory=True)
            self._flushed = 0
            self._in_flight: list[tuple[int, int, Any]] = []

    def record(self, t: int, losses: Any) -> list[int]:
        """Record step t's loss of every run ((R,) tensor or array); returns the runs that
        diverged now (known at once on the CPU, later on a GPU)."""
        self._recorded = t + 1
        if self._cuda and isinstance(losses, torch.Tensor) and losses.is_cuda:
            self._buffer[t].copy_(losses.detach())  # on the device, asynchronous
            now = time.perf_counter()
            if (
                t == 0
                or t + 1 - self._flushed >= self._flush_steps
                or now - self._last_flush >= self._flush_seconds
            ):
                self._issue_copy()
            return self._deliver_landed(wait=False)
        values = losses.tolist() if hasattr(losses, "tolist") else list(losses)
        ended = []
        for r, value in enumerate(values):
            if not self.open[r]:
                continue
            value = float(value)
            self._pending[r].append(value)
            if not math.isfinite(value):
                self.diverged[r] = (t, value)
                self._deliver(r)
                self.open[r] = False
                ended.append(r)
        now = time.perf_counter()
        if (
            t == 0
            or t + 1 - self._host_flushed >= self._flush_steps
            or now - self._last_flush >= self._flush_seconds
        ):
            self._last_flush = now
            self.flush_host()
        return ended

    def close(self, r: int) -> None:
        """Run r ends now (cancelled): deliver what it has, take no more of its losses."""
        if self.open[r]:
            self.flush()
            self.open[r] = False

    def flush_host(self) -> None:
        self._host_flushed = self._recorded
        for r in range(self._runs):
            if self.open[r]:
                self._deliver(r)

    def flush(self) -> list[int]:
        """Deliver everything recorded (on a GPU this waits for the device); returns runs that
        diverged in what landed."""
        ended: list[int] = []
        if self._cuda:
            self._issue_copy()
            ended = self._deliver_landed(wait=True)
        self.flush_host()
        return ended

    def _deliver(self, r: int) -> None:
        batch = self._pending[r]
        if batch:
            self._pending[r] = []
            first = self.delivered[r]
            self.delivered[r] += len(batch)
            self._sinks[r](first, batch)

    # -- GPU path ---------------------------------------------------------------------------
    def _issue_copy(self) -> None:
        self._last_flush = time.perf_counter()
        start, end = self._flushed, self._recorded
        if end <= start:
            return
        self._host[start:end].copy_(self._buffer[start:end], non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._in_flight.append((start, end, event))
        self._flushed = end

    def _deliver_landed(self, wait: bool) -> list[int]:
        ended = []
        while self._in_flight:
            start, end, event = self._in_flight[0]
            if wait:
                event.synchronize()
            elif not event.query():  # query() does not block
                break
            self._in_flight.pop(0)
            rows = self._host[start:end].tolist()  # (end - start) lists of R losses
            for r in range(self._runs):
                if not self.open[r]:
                    continue
                column = [row[r] for row in rows]
                for i, value in enumerate(column):
                    if not math.isfinite(value):
                        column = column[: i + 1]
                        self.diverged[r] = (start + i, value)
                        break
                self._pending[r].extend(column)
                self._deliver(r)
                if r in self.diverged:
                    self.open[r] = False
                    ended.append(r)
        return ended


class FusedRun:
    """What a fused variant sees: the runs' problems, their learning rates, the device and
    dtype, the step loop, and the recorder of every run's losses."""

    def __init__(
        self,
        specs: list[JobSpec],
        recorder: FusedRecorder,
        cancels: Sequence[CancelFlag],
        deadline: float | None,
        on_end: Callable[[int, RunOutcome], None],
    ):
        hp = specs[0].hyperparameters
        self.hp = hp  # every hyperparameter but the learning rate is shared
        self.runs = len(specs)
        self.device = torch.device(specs[0].device)
        self.dtype = TORCH_DTYPES[hp.dtype]
        self.learning_rates = [spec.hyperparameters.learning_rate for spec in specs]
        self.problems = [
            Problem(spec.seed, hp.batch_size, hp.d_in, hp.hidden, hp.d_out, hp.dtype)
            for spec in specs
        ]
        self.recorder = recorder
        self._cancels = cancels
        self._deadline = deadline
        self._on_end = on_end

    def host_to_device(self, values: torch.Tensor) -> torch.Tensor:
        """A small host tensor on the run's device: on a GPU through pinned memory with
        `non_blocking` (no host sync; a fresh pinned tensor each time, so an earlier copy still
        in flight is not overwritten)."""
        if self.device.type != "cuda":
            return values
        return values.pin_memory().to(self.device, non_blocking=True)

    @property
    def sizes(self) -> tuple[int, int, int, int]:
        """N, D_in, H, D_out."""
        return self.hp.batch_size, self.hp.d_in, self.hp.hidden, self.hp.d_out

    @property
    def training(self) -> list[int]:
        """The runs still training."""
        return [r for r in range(self.runs) if self.recorder.open[r]]

    def steps(self) -> Iterator[int]:
        """range(steps); before each step, a run whose cancel is set ends (`cancelled`), and
        the time limit ends them all. Stops early once no run is left."""
        for t in range(self.hp.steps):
            for r in self.training:
                if self._cancels[r].is_set():
                    self.recorder.close(r)
                    self._on_end(r, RunOutcome.cancelled)
            if self._deadline is not None and time.monotonic() > self._deadline:
                raise TimedOut()
            if not self.training:
                return
            yield t

    def record(self, t: int, losses: Any) -> None:
        """Hand out step t's loss of every run still training ((R,) tensor or array)."""
        for r in self.recorder.record(t, losses):
            self._on_end(r, RunOutcome.failed)

    # -- stacking -----------------------------------------------------------------------------
    def stacked_arrays(self) -> tuple[np.ndarray, ...]:
        """x (R, N, D_in), y (R, N, D_out), w1 (R, D_in, H), w2 (R, H, D_out) as numpy arrays."""
        each = [problem.arrays() for problem in self.problems]
        return tuple(np.stack([arrays[i] for arrays in each]) for i in range(4))

    def stacked_tensors(
        self, requires_grad: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The same x, y, w1, w2 as stacked tensors on the device; w1, w2 optionally leaves
        that require grad."""
        x, y, w1, w2 = (torch.from_numpy(a).to(self.device) for a in self.stacked_arrays())
        w1.requires_grad_(requires_grad)
        w2.requires_grad_(requires_grad)
        return x, y, w1, w2

    def stacked_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """x (R, N, D_in) and y (R, N, D_out) on the device."""
        x, y, _, _ = self.stacked_tensors()
        return x, y

    def stacked_linear(
        self, name: str, in_features: int, out_features: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each run's nn.Linear `name` (drawn from its own seed), stacked: weight
        (R, out, in) and bias (R, out), leaves that require grad."""
        cpu = torch.device("cpu")
        layers = [p.linear(name, in_features, out_features, cpu) for p in self.problems]
        weight = torch.stack([layer.weight.detach() for layer in layers]).to(self.device)
        bias = torch.stack([layer.bias.detach() for layer in layers]).to(self.device)
        return weight.requires_grad_(), bias.requires_grad_()

    def rates(self, *trailing: int) -> torch.Tensor:
        """The learning rates as an (R, 1, ...) tensor of the run's dtype, to scale a stacked
        gradient as `learning_rate * grad` scales one run's (the float cast to the dtype)."""
        return torch.tensor(self.learning_rates, dtype=self.dtype, device=self.device).view(
            self.runs, *([1] * len(trailing))
        )


def per_run_views(params: list[torch.Tensor], runs: int) -> list[list[torch.Tensor]]:
    """For each run, views of its slice of every stacked parameter: an optimizer over them
    updates the stacked tensors in place, with one param group (and learning rate) per run."""
    return [[p.detach()[r] for p in params] for r in range(runs)]


def hand_grads(
    params: list[torch.Tensor],
    views: list[list[torch.Tensor]],
    skip: set[tuple[int, int]] | None = None,
) -> None:
    """Give each run's views their slice of the stacked gradients; (run, parameter index)
    pairs in `skip` get None instead, as a parameter that a run alone did not use."""
    for r, run_views in enumerate(views):
        for i, (param, view) in enumerate(zip(params, run_views, strict=True)):
            grad = param.grad
            view.grad = None if grad is None or (skip is not None and (r, i) in skip) else grad[r]


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Every run's nn.Linear at once: x (R, N, in), weight (R, out, in), bias (R, out) ->
    (R, N, out); with per-run kernels each run's rows are F.linear (addmm) of its own slice."""
    runs, n, d_in = x.shape
    if _per_run(x.device, n * d_in * weight.shape[1]):
        # unbind, not x[r]: its backward stacks the R gradients once (indexing would add R
        # full-size zero tensors per operand)
        parts = zip(x.unbind(0), weight.unbind(0), bias.unbind(0), strict=True)
        return torch.stack([F.linear(xr, wr, br) for xr, wr, br in parts])
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def loss_sums(diff: torch.Tensor) -> torch.Tensor:
    """Each run's sum of squared errors, (R,), from (R, N, D_out) differences. In an exact
    group each run's is its own `sum()` over its slice, the reduction it makes alone: one
    `.sum(dim=(1, 2))` over every run takes other block shapes on CUDA (and so rounds
    otherwise) than the lone run's `sum()` over all of its values."""
    squares = diff.pow(2)
    if _exact.get():
        return torch.stack([part.sum() for part in squares.unbind(0)])
    return squares.sum(dim=(1, 2))


def bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched a @ b; with per-run kernels each run's product is its own `mm`, as alone."""
    if _per_run(a.device, a.shape[1] * a.shape[2] * b.shape[2]):
        return torch.stack([ar.mm(br) for ar, br in zip(a.unbind(0), b.unbind(0), strict=True)])
    return torch.bmm(a, b)


def npmatmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Batched a @ b for numpy arrays; with per-run kernels each run's product is its own
    `dot`, as alone."""
    if _kernels.get() == "per_run":
        return np.stack([a[r].dot(b[r]) for r in range(a.shape[0])])
    return np.matmul(a, b)


def _per_run(device: torch.device, multiply_adds: int) -> bool:
    """Whether a product is computed run by run (always with per-run kernels; with batched
    ones where ATen's CPU bmm would take its naive kernel)."""
    if _kernels.get() == "per_run":
        return True
    return device.type == "cpu" and multiply_adds < BMM_SMALL


@contextlib.contextmanager
def one_thread(device: torch.device) -> Iterator[None]:
    """torch and BLAS on one thread while a fused group runs on the CPU: a batched product
    then equals each run's own product on one thread (with more, bmm splits the work another
    way than mm does), so a run alone with `threads: 1` gives the same curve."""
    if device.type != "cpu":
        yield
        return
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)


def run_fused(
    specs: list[JobSpec],
    train: Callable[[FusedRun], None],
    sinks: Sequence[LossSink],
    finish: Callable[[Finished], None],
    cancels: Sequence[CancelFlag] | None = None,
    timeout_s: float | None = None,
    flush_seconds: float = 0.005,
    kernels: str = "per_run",
    exact: bool = True,
) -> None:
    """Run a fused group to its end; each run's losses go to its sink and its `Finished` to
    `finish` as soon as that run ends (a cancelled or diverged run before the others).
    `kernels` says how its matrix products are computed (see KERNELS); `exact`: whether its runs
    must equal the runs alone (see loss_sums)."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, not {kernels!r}")
    device = torch.device(specs[0].device)
    flags: list[CancelFlag] = list(cancels) if cancels else [threading.Event() for _ in specs]
    recorder = FusedRecorder(sinks, specs[0].hyperparameters.steps, device, flush_seconds)
    ended: set[int] = set()

    def end(r: int, outcome: RunOutcome, code: ErrorCode | None = None, text: str = "") -> None:
        if r in ended:
            return
        ended.add(r)
        recorder.open[r] = False
        steps = recorder.delivered[r]
        if r in recorder.diverged:
            step, loss = recorder.diverged[r]
            outcome, code = RunOutcome.failed, ErrorCode.diverged
            text = f"the loss became {loss} at step {step}; try a smaller learning_rate"
        finish(Finished(specs[r].job_id, outcome, steps, code, text or None))

    deadline = time.monotonic() + timeout_s if timeout_s else None
    run = FusedRun(specs, recorder, flags, deadline, end)
    failure: tuple[ErrorCode, str] | None = None
    try:
        stream_ctx: Any = (
            torch.cuda.stream(job_stream(device))
            if device.type == "cuda"
            else contextlib.nullcontext()
        )
        with stream_ctx, one_thread(device), np.errstate(over="ignore", invalid="ignore"):
            token = _kernels.set(kernels)
            exact_token = _exact.set(exact)
            try:
                train(run)
            finally:
                _exact.reset(exact_token)
                _kernels.reset(token)
                for r in recorder.flush():
                    end(r, RunOutcome.failed)
    except TimedOut:
        failure = (ErrorCode.timeout, f"the job ran past its time limit of {timeout_s:g} s")
    except Exception as exc:  # a fault in the group must not take its worker down
        code = ErrorCode.out_of_memory if _is_out_of_memory(exc) else ErrorCode.internal
        failure = (code, f"{type(exc).__name__}: {exc}"[:500])
    for r in range(len(specs)):
        if failure is None:
            end(r, RunOutcome.succeeded)
        else:
            end(r, RunOutcome.failed, *failure)
    del run
    if failure is not None and device.type == "cuda":
        torch.cuda.empty_cache()
