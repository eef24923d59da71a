"""FedAvgM as a plug-in algorithm: server momentum on top of FedAvg's client update.

Run it with the examples folder on PYTHONPATH (docs/EXTENDING.md, "An algorithm"):

    PYTHONPATH=examples python -m pfl_dist.train algorithm.name=custom_algorithm:FedAvgM \\
        algorithm.params.momentum=0.9 train.num_rounds=20

The class declares its facts as a literal `info = MethodInfo(...)`: the config checks, the
launcher and the torch-free sweep driver read it from this file without importing it (and
without torch). Its settings are `algorithm.params` (declared in `info.params` with their
defaults; an unknown key or a value of another type is one config error line).
"""

from __future__ import annotations

from typing import Any

import torch

from pfl_dist.algorithms import FedAvg
from pfl_dist.errors import ConfigError
from pfl_dist.methods import MethodInfo


class FedAvgM(FedAvg):
    """FedAvgM (Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data Distribution for
    Federated Visual Classification", 2019, Algorithm "FedAvg with server momentum"). Clients do
    FedAvg's local steps from w_g; the server treats the mean update as a pseudo-gradient:

        Delta  = w_g - sum_i p_i w_i                   (p_i: algorithm.client_weights, n_i by default)
        v      <- beta v + Delta                       (beta = algorithm.params.momentum, v_0 = 0)
        w_g    <- w_g - eta_s v                        (eta_s = algorithm.params.server_lr)

    With beta = 0 and eta_s = 1 this is FedAvg: w_g <- sum_i p_i w_i (up to rounding).

    The momentum buffer v is replicated server state: it is part of `state_dict`, which the
    Trainer saves in every checkpoint's replicated section and gives back to `load_state_dict`
    on resume (pfl_dist/algorithms/base.py), so a resumed run continues bit for bit.
    """

    info = MethodInfo("fedavgm", "FedAvgM", params=(("momentum", 0.0), ("server_lr", 1.0)),
                      paper="Hsu et al., 2019", colors="#fb9a99", marker="8")  # salmon
    server_step_keys = ("algorithm.params",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.momentum = float(self.cfg.params["momentum"])
        self.server_lr = float(self.cfg.params["server_lr"])
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"algorithm.params.momentum must be in [0, 1), got {self.momentum}")
        if not self.server_lr > 0.0:
            raise ConfigError(f"algorithm.params.server_lr must be > 0, got {self.server_lr}")
        self.velocity: torch.Tensor | None = None  # v, set by init_server_state

    def init_server_state(self, global_model: torch.Tensor) -> None:
        self.velocity = torch.zeros_like(global_model)

    def server_update(self, global_model: torch.Tensor, aggregate: torch.Tensor) -> torch.Tensor:
        assert self.velocity is not None
        self.velocity = self.momentum * self.velocity + (global_model - aggregate)
        return global_model - self.server_lr * self.velocity

    def state_dict(self) -> dict[str, Any]:
        assert self.velocity is not None
        return {**super().state_dict(), "velocity": self.velocity.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        assert self.velocity is not None
        self.velocity = state["velocity"].to(self.velocity.device)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "momentum": self.momentum, "server_lr": self.server_lr}
