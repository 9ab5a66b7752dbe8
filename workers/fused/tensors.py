"""tensors, fused: torch tensors with a hand-written backward, for R runs at once.

Matrix products are batched (`bmm`: each run's product as its own `mm`), each run's loss sums
its own slice, and every run's update uses its own learning rate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from workers.fused.batch import bmm, loss_sums

if TYPE_CHECKING:
    from workers.fused.batch import FusedRun


def train(run: FusedRun) -> None:
    N, D_in, H, D_out = run.sizes

    # (R, N, D_in), (R, N, D_out), (R, D_in, H), (R, H, D_out) on the run's device
    x, y, w1, w2 = run.stacked_tensors()

    learning_rate = run.rates(1, 1)  # (R, 1, 1)
    for t in run.steps():
        # Forward pass: compute predicted y
        h = bmm(x, w1)  # (R, N, H)
        h_relu = h.clamp(min=0)
        y_pred = bmm(h_relu, w2)  # (R, N, D_out)

        # Compute and record each run's loss: (R,), no host sync here
        loss = loss_sums(y_pred - y)
        run.record(t, loss)

        # Backprop to compute gradients of w1 and w2 with respect to loss
        grad_y_pred = 2.0 * (y_pred - y)  # (R, N, D_out)
        grad_w2 = bmm(h_relu.transpose(1, 2), grad_y_pred)  # (R, H, D_out)
        grad_h_relu = bmm(grad_y_pred, w2.transpose(1, 2))  # (R, N, H)
        grad_h = grad_h_relu.clone()
        grad_h[h < 0] = 0
        grad_w1 = bmm(x.transpose(1, 2), grad_h)  # (R, D_in, H)

        # Update weights using gradient descent, each run with its own rate
        w1 -= learning_rate * grad_w1
        w2 -= learning_rate * grad_w2
