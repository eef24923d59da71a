"""The Task interface: this rank's share of the federated problem (its clients' data, the model,
the local solver and the evaluation metrics). The train loop only talks to this interface."""

from __future__ import annotations

from typing import Protocol

import torch

from pfl_dist.config import Config


class Task(Protocol):
    num_params: int
    client_ids: range  # the global ids of this rank's clients, contiguous
    sample_counts: torch.Tensor  # (k,) n_i of this rank's clients, the aggregation weights
    max_threads: int | None  # intra-op thread cap for this task; None = the runtime's thread rule
    # Where the data metrics (loss_*, acc_*, ...) are measured: "train" = the clients' training
    # samples, "eval" = test splits. It prefixes their TensorBoard tags and metrics.jsonl keys.
    metrics_measured_on: str

    def __init__(self, cfg: Config, *, client_ids: range, device: torch.device, dtype: torch.dtype) -> None:
        ...

    @classmethod
    def preflight(cls, cfg: Config) -> None:
        """Checks that need the task's data (files, partition) before any rank starts; one
        ConfigError/DataError line on failure."""
        ...

    def init_model(self) -> torch.Tensor:
        """The shared initial model (P,), identical on every rank."""
        ...

    def model_state_dict(self, model: torch.Tensor) -> dict[str, torch.Tensor]:
        """The flat model (P,) as named tensors, for final/global.pt."""
        ...

    def local_smoothness(self) -> float:
        """The largest smoothness constant among this rank's clients (for L = 'auto')."""
        ...

    def local_update(
        self, models: torch.Tensor, rows: torch.Tensor, *, anchor: torch.Tensor, lam: float, lr: float, round_idx: int
    ) -> torch.Tensor:
        """Train `models` (one row per client in `rows`, local row indices) in place."""
        ...

    def metric_sums(self, local_models: torch.Tensor, global_model: torch.Tensor) -> dict[str, torch.Tensor]:
        """Additive per-rank sums (float64) that one all-reduce turns into job totals."""
        ...

    def finalize_metrics(self, sums: dict[str, torch.Tensor], global_model: torch.Tensor) -> dict[str, float]:
        ...
