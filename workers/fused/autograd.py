"""autograd, fused: the autograd program for R runs at once.

w1 and w2 are stacked leaves; each run's loss is its own slice's sum, and `backward` is seeded
with one per run, so each run's gradient is the one it would get alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from workers.fused.batch import bmm, loss_sums

if TYPE_CHECKING:
    from workers.fused.batch import FusedRun


def train(run: FusedRun) -> None:
    N, D_in, H, D_out = run.sizes

    x, y, w1, w2 = run.stacked_tensors(requires_grad=True)  # w1 (R, D_in, H), w2 (R, H, D_out)

    learning_rate = run.rates(1, 1)  # (R, 1, 1)
    for t in run.steps():
        # Forward pass: the same operations, batched; autograd remembers them
        y_pred = bmm(bmm(x, w1).clamp(min=0), w2)  # (R, N, D_out)

        # Compute and record each run's loss (R,)
        loss = loss_sums(y_pred - y)
        run.record(t, loss)

        # Backward pass: d(loss_r)/d(w_r) for every run at once
        loss.backward(torch.ones_like(loss))

        # Manually update weights using gradient descent, outside the graph
        with torch.no_grad():
            w1 -= learning_rate * w1.grad
            w2 -= learning_rate * w2.grad

            # Manually zero the gradients after updating weights
            w1.grad.zero_()
            w2.grad.zero_()
