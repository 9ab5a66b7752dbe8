"""custom_function, fused: MyReLU in the autograd program, for R runs at once.

The variant's own `MyReLU` works on stacked tensors unchanged: it is elementwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from workers.fused.batch import bmm, loss_sums
from workers.variants.custom_function import MyReLU

if TYPE_CHECKING:
    from workers.fused.batch import FusedRun


def train(run: FusedRun) -> None:
    N, D_in, H, D_out = run.sizes

    x, y, w1, w2 = run.stacked_tensors(requires_grad=True)  # w1 (R, D_in, H), w2 (R, H, D_out)

    learning_rate = run.rates(1, 1)  # (R, 1, 1)
    for t in run.steps():
        relu = MyReLU.apply

        # Forward pass with our custom autograd operation, every run at once
        y_pred = bmm(relu(bmm(x, w1)), w2)  # (R, N, D_out)

        # Compute and record each run's loss (R,)
        loss = loss_sums(y_pred - y)
        run.record(t, loss)

        # Use autograd to compute the backward pass of every run
        loss.backward(torch.ones_like(loss))

        # Update weights using gradient descent, each run with its own rate
        with torch.no_grad():
            w1 -= learning_rate * w1.grad
            w2 -= learning_rate * w2.grad

            w1.grad.zero_()
            w2.grad.zero_()
