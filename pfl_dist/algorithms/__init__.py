"""Federated algorithms: each owns its client update, its server update and its per-client state
(pfl_dist/algorithms/base.py). The facts about each method (label, whether it communicates,
whether lambda enters it) live torch-free in pfl_dist/methods.py."""

from __future__ import annotations

from pfl_dist.algorithms.base import Algorithm, ClientOutput, ClientRound, ClientState, RoundEnd
from pfl_dist.algorithms.classic import FedAvg, FedCLUP, FedProx, LocalTrain, theory_lambda
from pfl_dist.algorithms.groups import FedPer, FedRep
from pfl_dist.algorithms.personal import APFL, Ditto, FedAvgFT, PerFedAvg, PFedMe
from pfl_dist.algorithms.scaffold import Scaffold
from pfl_dist.config import AlgorithmConfig

ALGORITHMS: dict[str, type[Algorithm]] = {cls.name: cls for cls in (
    FedCLUP, FedAvg, FedProx, LocalTrain, PFedMe, Ditto, APFL, PerFedAvg, FedRep, FedPer, FedAvgFT, Scaffold)}


def build_algorithm(cfg: AlgorithmConfig, *, smoothness: float, groups: dict[str, slice] | None = None,
                    participation: float = 1.0) -> Algorithm:
    return ALGORITHMS[cfg.name](cfg, smoothness=smoothness, groups=groups, participation=participation)


__all__ = ["ALGORITHMS", "APFL", "Algorithm", "ClientOutput", "ClientRound", "ClientState", "Ditto", "FedAvg",
           "FedAvgFT", "FedCLUP", "FedPer", "FedProx", "FedRep", "LocalTrain", "PFedMe", "PerFedAvg", "RoundEnd",
           "Scaffold", "build_algorithm", "theory_lambda"]
