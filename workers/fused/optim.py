"""optim, fused: the nn model updated by torch.optim.Adam, for R runs at once.

Adam's state is per parameter and elementwise, so `torch.optim.Adam` over one param group per run
(views of that run's slices, with its own learning rate) keeps each run's moments and makes
each run's update exactly as a run alone. (A tensor learning rate over the stacked parameters is
not something Adam takes, and its fused=True kernel computes otherwise.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from workers.fused.batch import hand_grads, linear, loss_sums, per_run_views
from workers.numerics import FOREACH

if TYPE_CHECKING:
    from workers.fused.batch import FusedRun


def train(run: FusedRun) -> None:
    N, D_in, H, D_out = run.sizes

    x, y = run.stacked_data()

    w1, b1 = run.stacked_linear("input", D_in, H)
    w2, b2 = run.stacked_linear("output", H, D_out)
    params = [w1, b1, w2, b2]

    # Adam updates each run's parameters for us, with that run's learning rate
    views = per_run_views(params, run.runs)
    optimizer = torch.optim.Adam(
        [{"params": v, "lr": lr} for v, lr in zip(views, run.learning_rates, strict=True)],
        lr=run.learning_rates[0],
        foreach=FOREACH,
    )
    for t in run.steps():
        # Forward pass: compute predicted y of every run
        y_pred = linear(torch.relu(linear(x, w1, b1)), w2, b2)  # (R, N, D_out)

        # Compute and record each run's loss (R,)
        loss = loss_sums(y_pred - y)
        run.record(t, loss)

        # Zero the gradients, then the backward pass of every run
        for param in params:
            param.grad = None
        loss.backward(torch.ones_like(loss))

        # One optimizer step updates every run's parameters
        hand_grads(params, views)
        optimizer.step()
