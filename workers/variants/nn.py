"""nn: the tutorial's "pytorch: nn".

The model is an `nn.Sequential` of Linear, ReLU, Linear; the loss is `nn.MSELoss(reduction='sum')`.
The weights are still updated by hand with plain gradient descent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from workers.runner import Run


def train(run: Run) -> None:
    N, D_in, H, D_out = run.sizes

    x, y = run.problem.data(run.device)  # (N, D_in), (N, D_out)

    # nn.Sequential applies its modules in turn. Each Linear holds a weight and a bias; they are
    # initialised from the run's seed with PyTorch's own distribution (run.problem.linear).
    model = torch.nn.Sequential(
        run.problem.linear("input", D_in, H, run.device),
        torch.nn.ReLU(),
        run.problem.linear("output", H, D_out, run.device),
    )

    # Sum of squared errors, as in every variant
    loss_fn = torch.nn.MSELoss(reduction="sum")

    run.keep(model=model)  # what the steps change, for checkpoints

    learning_rate = run.hp.learning_rate
    for t in run.steps():
        # Forward pass: compute predicted y by passing x to the model
        y_pred = model(x)  # (N, D_out)

        # Compute and record loss
        loss = loss_fn(y_pred, y)
        run.record(t, loss)

        # Zero the gradients before running the backward pass
        model.zero_grad()

        # Backward pass: gradient of the loss with respect to every parameter
        loss.backward()

        # Update the weights using gradient descent
        with torch.no_grad():
            for param in model.parameters():
                param -= learning_rate * param.grad
