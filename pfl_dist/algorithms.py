"""Federated algorithms as small classes over one interface.

A round is the same for every algorithm (train.py): sample, local update, the exchange
(pfl_dist/exchange/), global step. An algorithm only decides
- where a sampled client's local update starts (`start_models`): its own persistent w_i, or w_g;
- the proximal weight of the local loss (`prox_weight`);
- the global step from the reduced weighted average (`global_step`);
- whether it communicates at all (`communicates`).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from pfl_dist.aggregate import envelope_step
from pfl_dist.config import AlgorithmConfig


class Algorithm:
    name: ClassVar[str]
    communicates: ClassVar[bool] = True
    resets_local_models: ClassVar[bool] = False

    def __init__(self, cfg: AlgorithmConfig, *, smoothness: float) -> None:
        self.cfg = cfg
        self.smoothness = smoothness
        self.set_lam(cfg.lam_auto_init if cfg.lam == "auto" else cfg.lam)

    def set_lam(self, lam: float) -> None:
        """Set lambda and every step size derived from it (lam=auto changes it mid-run)."""
        self.lam = lam
        self.local_lr = self.default_local_lr() if self.cfg.local_lr == "auto" else float(self.cfg.local_lr)

    def default_local_lr(self) -> float:
        """eta = 1/(L + lam): stable for the proximal objective (docs/METHOD.md §2)."""
        return 1.0 / (self.smoothness + self.prox_weight)

    @property
    def prox_weight(self) -> float:
        return self.lam

    def start_models(self, local_models: torch.Tensor, global_model: torch.Tensor) -> torch.Tensor:
        if self.resets_local_models:
            return global_model.expand_as(local_models).clone()
        return local_models.clone()

    def global_step(self, global_model: torch.Tensor, average: torch.Tensor) -> torch.Tensor:
        return average

    def describe(self) -> dict[str, float]:
        return {"lam": self.lam, "local_lr": self.local_lr, "smoothness": self.smoothness}


class FedCLUP(Algorithm):
    """Yu et al., ICML 2025: persistent local models warm-started every round, K proximal GD
    steps towards w_g, then a gradient step on the average Moreau envelope."""

    name = "fedclup"

    def set_lam(self, lam: float) -> None:
        super().set_lam(lam)
        if self.cfg.global_lr == "auto":
            # gamma = 1/lam + 1/L, so gamma * lam = 1 + lam/L (well defined at lam = 0).
            self.step_factor = 1.0 + lam / self.smoothness
        elif self.cfg.global_lr == "1/lam":
            self.step_factor = 1.0  # gamma * lam = 1: w_g is the weighted average of the local models
        else:
            self.step_factor = float(self.cfg.global_lr) * lam

    def global_step(self, global_model: torch.Tensor, average: torch.Tensor) -> torch.Tensor:
        return envelope_step(global_model, average, step_factor=self.step_factor)

    def describe(self) -> dict[str, float]:
        return {**super().describe(), "global_step_factor": self.step_factor}


class FedAvg(Algorithm):
    """McMahan et al. 2017: clients reset to w_g, take plain local steps, the server averages."""

    name = "fedavg"
    resets_local_models = True

    @property
    def prox_weight(self) -> float:
        return 0.0


class FedProx(FedAvg):
    """Li et al. 2020: FedAvg with the proximal term (weight lam, the paper's mu) in the local loss."""

    name = "fedprox"

    @property
    def prox_weight(self) -> float:
        return self.lam


class LocalTrain(Algorithm):
    """lambda = 0 and no communication: every client trains alone on its own data."""

    name = "local"
    communicates = False

    @property
    def prox_weight(self) -> float:
        return 0.0


def theory_lambda(r_hat: float, *, num_samples: float, c: float) -> float:
    """The paper's rule (docs/METHOD.md §3): lam = c / (n R^2) if R >= 1/sqrt(n), else c / (sqrt(n) R).

    The branches meet at lam = c when R = 1/sqrt(n). R_hat is floored at 1e-12, so identical
    clients give a very large (FedAvg-like) lambda instead of a division by zero.
    """
    r_hat = max(r_hat, 1e-12)
    if r_hat >= num_samples**-0.5:
        return c / (num_samples * r_hat**2)
    return c / (num_samples**0.5 * r_hat)


ALGORITHMS: dict[str, type[Algorithm]] = {cls.name: cls for cls in (FedCLUP, FedAvg, FedProx, LocalTrain)}


def build_algorithm(cfg: AlgorithmConfig, *, smoothness: float) -> Algorithm:
    return ALGORITHMS[cfg.name](cfg, smoothness=smoothness)
