"""FedAdam (Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar, McMahan, "Adaptive Federated
Optimization", ICLR 2021): FedAvg's clients, Adam on the server."""

from __future__ import annotations

from typing import Any

import torch

from pfl_dist.algorithms.classic import FedAvg
from pfl_dist.errors import ConfigError
from pfl_dist.methods import MethodInfo


class FedAdam(FedAvg):
    """FedAdam, Algorithm 2 of the paper. Clients take FedAvg's local steps from x = w_g; the
    server treats the mean change as a pseudo-gradient and takes an Adam step without bias
    correction:

        Delta <- mean_i (w_i - x)                      (a plain mean over the sampled clients)
        m     <- beta1 m + (1 - beta1) Delta            (m_{-1} = 0)
        v     <- beta2 v + (1 - beta2) Delta^2          (v_{-1} = tau^2, the paper's v_{-1} >= tau^2)
        x     <- x + eta m / (sqrt(v) + tau)

    eta, beta1, beta2, tau are algorithm.params server_lr, beta1, beta2, tau. The means are plain
    means as in the paper (`paper_client_weights`; algorithm.client_weights: samples weighs them
    by n_i). m and v are replicated server state, saved in every checkpoint (`state_dict`)."""

    info = MethodInfo("fedadam", "FedAdam", paper="Reddi et al., ICLR 2021", colors="#543005", marker=">",  # brown
                      params=(("server_lr", 0.1), ("beta1", 0.9), ("beta2", 0.99), ("tau", 0.001)))
    paper_client_weights = "uniform"
    server_step_keys = ("algorithm.params",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        params = self.cfg.params
        self.server_lr, self.beta1, self.beta2, self.tau = (float(params[key]) for key in
                                                            ("server_lr", "beta1", "beta2", "tau"))
        for key in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"algorithm.params.{key} must be in [0, 1), got {getattr(self, key)}")
        for key in ("server_lr", "tau"):
            if not getattr(self, key) > 0.0:
                raise ConfigError(f"algorithm.params.{key} must be > 0, got {getattr(self, key)}")
        self.moments: torch.Tensor | None = None  # (2, P): m and v, set by init_server_state

    def init_server_state(self, global_model: torch.Tensor) -> None:
        self.moments = torch.stack([torch.zeros_like(global_model), torch.full_like(global_model, self.tau**2)])

    def server_update(self, global_model: torch.Tensor, aggregate: torch.Tensor) -> torch.Tensor:
        assert self.moments is not None
        delta = aggregate - global_model
        m = self.beta1 * self.moments[0] + (1.0 - self.beta1) * delta
        v = self.beta2 * self.moments[1] + (1.0 - self.beta2) * delta * delta
        self.moments = torch.stack([m, v])
        return global_model + self.server_lr * m / (v.sqrt() + self.tau)

    def state_dict(self) -> dict[str, Any]:
        assert self.moments is not None
        return {**super().state_dict(), "moments": self.moments.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        assert self.moments is not None
        self.moments = state["moments"].to(self.moments.device)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "server_lr": self.server_lr, "beta1": self.beta1, "beta2": self.beta2,
                "tau": self.tau}
