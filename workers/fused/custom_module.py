"""custom_module, fused: TwoLayerNet trained with torch.optim.SGD, for R runs at once.

The stacked layers run the model's forward pass for every run; `torch.optim.SGD` itself makes
the update, with one param group per run over views of that run's slices (each with its own
learning rate), so each slice is updated by the same `add_` as a run alone.
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

    x, y = run.stacked_data()  # (R, N, D_in), (R, N, D_out)

    # TwoLayerNet's linear1 and linear2, one per run, stacked
    w1, b1 = run.stacked_linear("input", D_in, H)
    w2, b2 = run.stacked_linear("output", H, D_out)
    params = [w1, b1, w2, b2]

    # one param group per run: its own learning rate over its own slices
    views = per_run_views(params, run.runs)
    optimizer = torch.optim.SGD(
        [{"params": v, "lr": lr} for v, lr in zip(views, run.learning_rates, strict=True)],
        lr=run.learning_rates[0],
        foreach=FOREACH,
    )
    for t in run.steps():
        # Forward pass: TwoLayerNet.forward of every run
        h_relu = linear(x, w1, b1).clamp(min=0)  # (R, N, H)
        y_pred = linear(h_relu, w2, b2)  # (R, N, D_out)

        # Compute and record each run's loss (R,)
        loss = loss_sums(y_pred - y)
        run.record(t, loss)

        # Zero gradients, perform a backward pass, and update the weights
        for param in params:
            param.grad = None
        loss.backward(torch.ones_like(loss))
        hand_grads(params, views)
        optimizer.step()
