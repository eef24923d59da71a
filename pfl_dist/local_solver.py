"""Local solvers: K proximal steps on L_i(w) + (lam/2)||w - w_g||^2, vectorized over clients.

    w <- w - eta * (grad L_i(w) + lam * (w - w_g))

`models` is (k, P), one row per sampled client of this rank, updated in place.
"""

from __future__ import annotations

from typing import Protocol

import torch


class GradientModel(Protocol):
    def loss_and_grad(
        self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *, need_loss: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor]: ...


def proximal_gradient_descent(
    model: GradientModel,
    models: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    anchor: torch.Tensor,
    lam: float,
    lr: float,
    num_steps: int,
) -> torch.Tensor:
    """Full-batch GD for `num_steps` steps (the paper's synthetic solver)."""
    for _ in range(num_steps):
        _, grad = model.loss_and_grad(models, features, labels, need_loss=False)
        if lam:
            grad.add_(models - anchor, alpha=lam)
        models.sub_(grad, alpha=lr)
    return models
