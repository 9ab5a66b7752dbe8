"""dynamic, fused: DynamicNet for R runs at once, each drawing its own depth at every step.

Run r reuses the middle layer `rng_r.randint(0, max_middle_layers)` times, from its own
`random.Random` as alone. The batch goes through the middle layer as many times as the deepest
run asks; at pass k a run whose depth is k or less keeps its hidden state (`torch.where`), so
its gradient gets nothing from that pass. SGD with momentum is torch.optim.SGD with one param
group per run; a run that did not use the middle layer at a step gets no gradient for it, so
SGD leaves that layer and its momentum alone, as it would for the run alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from workers.fused.batch import hand_grads, linear, loss_sums, per_run_views
from workers.numerics import FOREACH

if TYPE_CHECKING:
    from workers.fused.batch import FusedRun

MIDDLE = (2, 3)  # the middle layer's weight and bias, as indices into the parameters


def train(run: FusedRun) -> None:
    N, D_in, H, D_out = run.sizes

    x, y = run.stacked_data()

    # DynamicNet's input, middle and output layers, one of each per run, stacked
    w_in, b_in = run.stacked_linear("input", D_in, H)
    w_mid, b_mid = run.stacked_linear("middle", H, H)
    w_out, b_out = run.stacked_linear("output", H, D_out)
    params = [w_in, b_in, w_mid, b_mid, w_out, b_out]
    max_middle_layers = run.hp.max_middle_layers
    rngs = [problem.choices() for problem in run.problems]  # each run's own depth draws

    views = per_run_views(params, run.runs)
    optimizer = torch.optim.SGD(
        [{"params": v, "lr": lr} for v, lr in zip(views, run.learning_rates, strict=True)],
        lr=run.learning_rates[0],
        foreach=FOREACH,
        momentum=run.hp.momentum,
    )
    for t in run.steps():
        # Forward pass: every run draws its depth, as DynamicNet.forward does alone
        depths = [rng.randint(0, max_middle_layers) for rng in rngs]
        # one host-to-device copy per step (asynchronous on a GPU), not one per middle pass
        depth = run.host_to_device(torch.tensor(depths)).view(-1, 1, 1)
        h_relu = linear(x, w_in, b_in).clamp(min=0)  # (R, N, H)
        for k in range(max(depths)):
            deeper = depth > k
            h_relu = torch.where(deeper, linear(h_relu, w_mid, b_mid).clamp(min=0), h_relu)
        y_pred = linear(h_relu, w_out, b_out)  # (R, N, D_out)

        # Compute and record each run's loss (R,)
        loss = loss_sums(y_pred - y)
        run.record(t, loss)

        # Zero gradients, perform a backward pass, and update the weights
        for param in params:
            param.grad = None
        loss.backward(torch.ones_like(loss))
        unused = {(r, i) for r, depth in enumerate(depths) if depth == 0 for i in MIDDLE}
        hand_grads(params, views, skip=unused)
        optimizer.step()
