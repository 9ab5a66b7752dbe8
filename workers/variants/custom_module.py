"""custom_module: the tutorial's "custom nn modules".

The model is our own `nn.Module` subclass, TwoLayerNet, trained with `torch.optim.SGD`. With the
same seed and learning rate it follows the `nn` variant's curve: same layers, same plain SGD.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from workers.numerics import FOREACH
from workers.problem import Problem

if TYPE_CHECKING:
    from workers.runner import Run


class TwoLayerNet(torch.nn.Module):
    def __init__(self, D_in: int, H: int, D_out: int, problem: Problem, device: torch.device):
        # two nn.Linear modules as member variables (initialised from the run's seed)
        super().__init__()
        self.linear1 = problem.linear("input", D_in, H, device)
        self.linear2 = problem.linear("output", H, D_out, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_relu = self.linear1(x).clamp(min=0)  # (N, H)
        y_pred = self.linear2(h_relu)  # (N, D_out)
        return y_pred


def train(run: Run) -> None:
    N, D_in, H, D_out = run.sizes

    x, y = run.problem.data(run.device)

    # Construct our model by instantiating the class defined above
    model = TwoLayerNet(D_in, H, D_out, run.problem, run.device)

    # Loss function and an optimizer over both Linear modules' parameters
    criterion = torch.nn.MSELoss(reduction="sum")
    optimizer = torch.optim.SGD(model.parameters(), lr=run.hp.learning_rate, foreach=FOREACH)
    run.keep(model=model, optimizer=optimizer)  # what the steps change, for checkpoints
    for t in run.steps():
        # Forward pass: compute predicted y by passing x to the model
        y_pred = model(x)

        # Compute and record loss
        loss = criterion(y_pred, y)
        run.record(t, loss)

        # Zero gradients, perform a backward pass, and update the weights
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
