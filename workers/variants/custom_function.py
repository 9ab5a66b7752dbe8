"""custom_function: the tutorial's MyReLU, a custom `torch.autograd.Function`.

We define our own autograd operator by subclassing `torch.autograd.Function` and writing its
forward and backward passes; the rest is the autograd program.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from workers.runner import Run


class MyReLU(torch.autograd.Function):
    """ReLU with a hand-written backward."""

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor) -> torch.Tensor:
        # stash the input for the backward pass
        ctx.save_for_backward(input)
        return input.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        # the gradient passes where the input was positive, and is zero elsewhere
        (input,) = ctx.saved_tensors
        grad_input = grad_output.clone()
        grad_input[input < 0] = 0
        return grad_input


def train(run: Run) -> None:
    N, D_in, H, D_out = run.sizes

    x, y, w1, w2 = run.problem.tensors(run.device, requires_grad=True)

    run.keep(w1=w1, w2=w2)  # what the steps change, for checkpoints

    learning_rate = run.hp.learning_rate
    for t in run.steps():
        # To apply our Function, we use Function.apply method. We alias this as 'relu'.
        relu = MyReLU.apply

        # Forward pass: compute predicted y using our custom autograd operation
        y_pred = relu(x.mm(w1)).mm(w2)  # (N, D_out)

        # Compute and record loss
        loss = (y_pred - y).pow(2).sum()
        run.record(t, loss)

        # Use autograd to compute the backward pass
        loss.backward()

        # Update weights using gradient descent
        with torch.no_grad():
            w1 -= learning_rate * w1.grad
            w2 -= learning_rate * w2.grad

            # Manually zero the gradients after updating weights
            w1.grad.zero_()
            w2.grad.zero_()
