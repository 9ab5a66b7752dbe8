"""dynamic: the tutorial's "dynamic network".

DynamicNet draws, at every forward pass, how many times to reuse its middle layer (0 to 3 in the
tutorial), so each step builds a different graph with plain Python control flow. The draw comes
from the run's own `random.Random`, so a run is reproducible. Training this strange model with
vanilla SGD is tough, so it uses momentum.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import torch

from workers.numerics import FOREACH
from workers.problem import Problem

if TYPE_CHECKING:
    from workers.runner import Run


class DynamicNet(torch.nn.Module):
    def __init__(
        self,
        D_in: int,
        H: int,
        D_out: int,
        problem: Problem,
        device: torch.device,
        max_middle_layers: int = 3,
    ):
        # three nn.Linear instances that the forward pass uses
        super().__init__()
        self.input_linear = problem.linear("input", D_in, H, device)
        self.middle_linear = problem.linear("middle", H, H, device)
        self.output_linear = problem.linear("output", H, D_out, device)
        self.max_middle_layers = max_middle_layers
        self.rng: random.Random = problem.choices()  # the run's own, not the global `random`

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # reuse middle_linear a random number of times: a new graph at every step
        h_relu = self.input_linear(x).clamp(min=0)  # (N, H)
        for _ in range(self.rng.randint(0, self.max_middle_layers)):
            h_relu = self.middle_linear(h_relu).clamp(min=0)  # (N, H)
        y_pred = self.output_linear(h_relu)  # (N, D_out)
        return y_pred


def train(run: Run) -> None:
    N, D_in, H, D_out = run.sizes

    x, y = run.problem.data(run.device)

    model = DynamicNet(D_in, H, D_out, run.problem, run.device, run.hp.max_middle_layers)

    # SGD with momentum over the model's parameters
    criterion = torch.nn.MSELoss(reduction="sum")
    optimizer = torch.optim.SGD(
        model.parameters(), lr=run.hp.learning_rate, momentum=run.hp.momentum, foreach=FOREACH
    )
    # what the steps change, for checkpoints: the depth draws' RNG too
    run.keep(model=model, optimizer=optimizer, depth_rng=model.rng)
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
