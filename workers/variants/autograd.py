"""autograd: the tutorial's "use autograd of pytorch".

The same network, but the backward pass is left to autograd: w1 and w2 require gradients, the
forward pass builds a graph, and `loss.backward()` fills `w1.grad` and `w2.grad`. The weights are
still updated by hand, inside `torch.no_grad()`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from workers.runner import Run


def train(run: Run) -> None:
    N, D_in, H, D_out = run.sizes

    # x, y do not need gradients; w1, w2 do (requires_grad=True)
    x, y, w1, w2 = run.problem.tensors(run.device, requires_grad=True)

    run.keep(w1=w1, w2=w2)  # what the steps change, for checkpoints

    learning_rate = run.hp.learning_rate
    for t in run.steps():
        # Forward pass: the same operations as by hand; autograd remembers them
        y_pred = x.mm(w1).clamp(min=0).mm(w2)  # (N, D_out)

        # Compute and record loss (a 0-d tensor)
        loss = (y_pred - y).pow(2).sum()
        run.record(t, loss)

        # Backward pass: gradients of loss with respect to w1 and w2
        loss.backward()

        # Manually update weights using gradient descent, outside the graph
        with torch.no_grad():
            w1 -= learning_rate * w1.grad
            w2 -= learning_rate * w2.grad

            # Manually zero the gradients after updating weights
            w1.grad.zero_()
            w2.grad.zero_()
