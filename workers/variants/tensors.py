"""tensors: the tutorial's "torch tensors, hand-written backward".

The numpy program again with torch Tensors, which can live on a GPU: the forward pass, the loss
and the gradients are still written by hand. The tutorial calls `.item()` on the loss each step;
here the 0-d loss tensor goes to `run.record`, which on a GPU copies it back in batches instead of
stalling the host on every step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workers.runner import Run


def train(run: Run) -> None:
    N, D_in, H, D_out = run.sizes

    # Random input and output data, random starting weights, on the run's device
    x, y, w1, w2 = run.problem.tensors(run.device)  # (N, D_in), (N, D_out), (D_in, H), (H, D_out)

    run.keep(w1=w1, w2=w2)  # what the steps change, for checkpoints

    learning_rate = run.hp.learning_rate
    for t in run.steps():
        # Forward pass: compute predicted y
        h = x.mm(w1)  # (N, H)
        h_relu = h.clamp(min=0)
        y_pred = h_relu.mm(w2)  # (N, D_out)

        # Compute and record loss (a 0-d tensor: no host sync here)
        loss = (y_pred - y).pow(2).sum()
        run.record(t, loss)

        # Backprop to compute gradients of w1 and w2 with respect to loss
        grad_y_pred = 2.0 * (y_pred - y)  # (N, D_out)
        grad_w2 = h_relu.t().mm(grad_y_pred)  # (H, D_out)
        grad_h_relu = grad_y_pred.mm(w2.t())  # (N, H)
        grad_h = grad_h_relu.clone()
        grad_h[h < 0] = 0
        grad_w1 = x.t().mm(grad_h)  # (D_in, H)

        # Update weights using gradient descent
        w1 -= learning_rate * grad_w1
        w2 -= learning_rate * grad_w2
