"""Aggregation math as pure functions (no process group), tested on their own."""

from __future__ import annotations

import torch


def pack_weighted_sum(models: torch.Tensor, weights: torch.Tensor, *, num_params: int) -> torch.Tensor:
    """One flat buffer [sum_i n_i w_i, sum_i n_i] (LocalTrain's evaluation model: one all-reduce).

    `models` is (k, P) for this rank's sampled clients (k may be 0), `weights` their n_i.
    """
    buffer = torch.zeros(num_params + 1, dtype=models.dtype, device=models.device)
    if models.shape[0]:
        buffer[:num_params] = weights.to(models.dtype) @ models
        buffer[num_params] = weights.sum()
    return buffer


def weighted_average(buffer: torch.Tensor) -> torch.Tensor:
    """sum_i n_i w_i / sum_i n_i from a reduced buffer."""
    return buffer[:-1] / buffer[-1]


def envelope_step(global_model: torch.Tensor, average: torch.Tensor, *, step_factor: float) -> torch.Tensor:
    """FedCLUP's global step: w_g - gamma * lam * (w_g - avg). step_factor = gamma * lam.

    gamma * lam = 1 is plain averaging; the paper's gamma = 1/lam + 1/L gives 1 + lam/L.
    """
    return global_model - step_factor * (global_model - average)
