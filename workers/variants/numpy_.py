"""numpy: the tutorial's "numpy two-layer network".

A fully-connected ReLU network with one hidden layer, trained to predict y from x by minimising
the sum of squared errors, with the forward and backward passes written by hand in numpy.
numpy knows nothing of graphs, gradients or GPUs: this runs on the CPU only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from workers.runner import Run


def train(run: Run) -> None:
    # N is batch size; D_in is input dimension; H is hidden dimension; D_out is output dimension.
    N, D_in, H, D_out = run.sizes

    # Random input and output data, random starting weights: drawn from the run's seed
    x, y, w1, w2 = run.problem.arrays()  # (N, D_in), (N, D_out), (D_in, H), (H, D_out)

    # what the steps change, for checkpoints (a resumed run goes on from its stored w1, w2)
    run.keep(w1=w1, w2=w2)

    learning_rate = run.hp.learning_rate
    for t in run.steps():
        # Forward pass: compute predicted y
        h = x.dot(w1)  # (N, H)
        h_relu = np.maximum(h, 0)
        y_pred = h_relu.dot(w2)  # (N, D_out)

        # Compute and record loss
        loss = np.square(y_pred - y).sum()
        run.record(t, loss)

        # Backprop to compute gradients of w1 and w2 with respect to loss
        grad_y_pred = 2.0 * (y_pred - y)  # (N, D_out)
        grad_w2 = h_relu.T.dot(grad_y_pred)  # (H, D_out)
        grad_h_relu = grad_y_pred.dot(w2.T)  # (N, H)
        grad_h = grad_h_relu.copy()
        grad_h[h < 0] = 0
        grad_w1 = x.T.dot(grad_h)  # (D_in, H)

        # Update weights
        w1 -= learning_rate * grad_w1
        w2 -= learning_rate * grad_w2
