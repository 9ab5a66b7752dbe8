"""nn, fused: the nn.Sequential model for R runs at once.

Each run's two nn.Linear layers (drawn from its own seed) are stacked into weight (R, out, in)
and bias (R, out); a batched `linear` plays nn.Linear, `relu` plays nn.ReLU, and the summed
squared error of each run is MSELoss(reduction="sum") of its slice. The update is the
variant's own `param -= learning_rate * param.grad`, with each run's rate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from workers.fused.batch import linear, loss_sums

if TYPE_CHECKING:
    from workers.fused.batch import FusedRun


def train(run: FusedRun) -> None:
    N, D_in, H, D_out = run.sizes

    x, y = run.stacked_data()  # (R, N, D_in), (R, N, D_out)

    # Linear(D_in, H), ReLU, Linear(H, D_out), one of each per run
    w1, b1 = run.stacked_linear("input", D_in, H)  # (R, H, D_in), (R, H)
    w2, b2 = run.stacked_linear("output", H, D_out)  # (R, D_out, H), (R, D_out)
    params = [w1, b1, w2, b2]
    rates = [run.rates(1, 1), run.rates(1), run.rates(1, 1), run.rates(1)]

    for t in run.steps():
        # Forward pass: compute predicted y of every run
        y_pred = linear(torch.relu(linear(x, w1, b1)), w2, b2)  # (R, N, D_out)

        # Compute and record each run's loss (R,)
        loss = loss_sums(y_pred - y)
        run.record(t, loss)

        # Zero the gradients before running the backward pass
        for param in params:
            param.grad = None

        # Backward pass: gradient of each run's loss with respect to its parameters
        loss.backward(torch.ones_like(loss))

        # Update the weights using gradient descent, each run with its own rate
        with torch.no_grad():
            for param, learning_rate in zip(params, rates, strict=True):
                param -= learning_rate * param.grad
