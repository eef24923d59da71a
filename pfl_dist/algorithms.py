"""Federated algorithms as small classes over one interface.

A round is the same for every algorithm (train.py): sample, local update, one all-reduce,
global step. An algorithm only decides
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
        self.lam = cfg.lam
        self.smoothness = smoothness
        self.local_lr = self.default_local_lr() if cfg.local_lr == "auto" else float(cfg.local_lr)

    def default_local_lr(self) -> float:
        """eta = 1/(L + lam): stable for the proximal objective (PAPER.md §2)."""
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

    def __init__(self, cfg: AlgorithmConfig, *, smoothness: float) -> None:
        super().__init__(cfg, smoothness=smoothness)
        if cfg.global_lr == "auto":
            # gamma = 1/lam + 1/L, so gamma * lam = 1 + lam/L (well defined at lam = 0).
            self.step_factor = 1.0 + self.lam / smoothness
        else:
            self.step_factor = float(cfg.global_lr) * self.lam

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


ALGORITHMS: dict[str, type[Algorithm]] = {cls.name: cls for cls in (FedCLUP, FedAvg, FedProx, LocalTrain)}


def build_algorithm(cfg: AlgorithmConfig, *, smoothness: float) -> Algorithm:
    return ALGORITHMS[cfg.name](cfg, smoothness=smoothness)
