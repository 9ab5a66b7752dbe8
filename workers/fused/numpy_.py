"""numpy, fused: the numpy two-layer network for R runs at once.

Every array gains a leading run dimension; `npmatmul` multiplies each run's matrices (with
per-run kernels, by the `dot` each run makes alone), and each run's loss sums only its own slice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from workers.fused.batch import npmatmul

if TYPE_CHECKING:
    from workers.fused.batch import FusedRun


def train(run: FusedRun) -> None:
    N, D_in, H, D_out = run.sizes

    # each run's x, y, w1, w2 from its own seed, stacked: (R, N, D_in), (R, N, D_out),
    # (R, D_in, H), (R, H, D_out)
    x, y, w1, w2 = run.stacked_arrays()

    # (R, 1, 1): run r's learning rate, in the arrays' dtype as `learning_rate * grad` casts it
    learning_rate = np.array(run.learning_rates, dtype=x.dtype).reshape(-1, 1, 1)
    for t in run.steps():
        # Forward pass: compute predicted y
        h = npmatmul(x, w1)  # (R, N, H)
        h_relu = np.maximum(h, 0)
        y_pred = npmatmul(h_relu, w2)  # (R, N, D_out)

        # Compute and record each run's loss
        loss = np.square(y_pred - y).sum(axis=(1, 2))  # (R,)
        run.record(t, loss)

        # Backprop to compute gradients of w1 and w2 with respect to loss
        grad_y_pred = 2.0 * (y_pred - y)  # (R, N, D_out)
        grad_w2 = npmatmul(h_relu.transpose(0, 2, 1), grad_y_pred)  # (R, H, D_out)
        grad_h_relu = npmatmul(grad_y_pred, w2.transpose(0, 2, 1))  # (R, N, H)
        grad_h = grad_h_relu.copy()
        grad_h[h < 0] = 0
        grad_w1 = npmatmul(x.transpose(0, 2, 1), grad_h)  # (R, D_in, H)

        # Update weights, each run with its own rate
        w1 -= learning_rate * grad_w1
        w2 -= learning_rate * grad_w2
