"""optim: the tutorial's "pytorch: optim".

The nn model again, now updated by an optimizer from `torch.optim`: Adam.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from workers.numerics import FOREACH

if TYPE_CHECKING:
    from workers.runner import Run


def train(run: Run) -> None:
    N, D_in, H, D_out = run.sizes

    x, y = run.problem.data(run.device)

    model = torch.nn.Sequential(
        run.problem.linear("input", D_in, H, run.device),
        torch.nn.ReLU(),
        run.problem.linear("output", H, D_out, run.device),
    )
    loss_fn = torch.nn.MSELoss(reduction="sum")

    # Adam updates the model's parameters for us
    learning_rate = run.hp.learning_rate
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate, foreach=FOREACH)
    run.keep(model=model, optimizer=optimizer)  # what the steps change, for checkpoints
    for t in run.steps():
        # Forward pass: compute predicted y by passing x to the model
        y_pred = model(x)

        # Compute and record loss
        loss = loss_fn(y_pred, y)
        run.record(t, loss)

        # Zero the gradients the optimizer will update (backward() accumulates them)
        optimizer.zero_grad()

        # Backward pass: gradient of the loss with respect to the model's parameters
        loss.backward()

        # One optimizer step updates the parameters
        optimizer.step()
