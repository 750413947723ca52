"""Linear probes: how much of a property an embedding holds, read by a linear classifier."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_probe_accuracy(features: torch.Tensor, labels: torch.Tensor, fit: torch.Tensor,
                          *, steps: int = 200, weight_decay: float = 1e-3) -> float:
    """Fit multinomial logistic regression on rows ``fit`` (a boolean mask), return the
    accuracy on the other rows. Features are standardised with the fitted rows' statistics;
    full-batch L-BFGS, deterministic."""
    x_fit, y_fit = features[fit].double(), labels[fit]
    x_eval, y_eval = features[~fit].double(), labels[~fit]
    if len(y_eval) == 0 or len(y_fit) == 0:
        return float("nan")
    mean, std = x_fit.mean(0), x_fit.std(0).clamp_min(1e-6)
    x_fit, x_eval = (x_fit - mean) / std, (x_eval - mean) / std
    classes = int(labels.max()) + 1
    weight = torch.zeros(x_fit.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x_fit @ weight + bias, y_fit) + weight_decay * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return ((x_eval @ weight + bias).argmax(-1) == y_eval).double().mean().item()
