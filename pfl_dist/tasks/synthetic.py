"""Softmax regression on the paper's synthetic clients, with the paper's ATR and ITR metrics.

ITR = mean_i ||w_i / s_i - W_i^T||_F, where s_i is client i's feature scale (w_i lives in the
scaled feature space, so w_i / s_i is the same model on raw features).
ATR = ||w_g - mean_k W_k^T||_F, comparing the scaled-space w_g with unscaled truths exactly as
the reference code does (kept for comparability; see docs/ARCHITECTURE.md).
Accuracies and losses of synthetic runs are measured on the clients' own training samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from pfl_dist.config import Config
from pfl_dist.data.synthetic import generate_clients
from pfl_dist.models.linear import LinearSoftmax
from pfl_dist.solvers.linear import prox_gd_linear_softmax
from pfl_dist.tasks.base import Batch

_GENERATION_BLOCK = 256  # clients generated per numpy block


class SyntheticTask:
    # One intra-op thread, whatever the rank's share of the cores: the local solver works on
    # cache-sized chunks of clients (~10k-100k-element ops), which OpenMP synchronisation makes
    # slower, not faster (k=100: 112 us/step with 1 thread, 1.2-1.7 ms with 2 on a shared
    # 2-core box). More cores are used by more ranks (docs/PERFORMANCE.md, thread rule).
    max_threads: int | None = 1
    metrics_measured_on = "train"  # accuracies and losses: the clients' own training samples

    def __init__(self, cfg: Config, *, client_ids: range, device: torch.device, dtype: torch.dtype) -> None:
        data = cfg.data
        self.cfg = cfg
        self.client_ids = client_ids
        self.model = LinearSoftmax(data.dim, data.num_classes, bias=False)
        self.num_params = self.model.num_params
        self.dtype = dtype
        num_clients, n, d, c = len(client_ids), data.samples_per_client, data.dim, data.num_classes
        self.features = torch.empty(num_clients, n, d, dtype=dtype)
        self.labels = torch.empty(num_clients, n, dtype=torch.long)
        self.scale = torch.empty(num_clients, d, dtype=torch.float64)
        # W_k^T, (k, d, C): the truth in the same layout as the model's weight matrix, viewed
        # from (k, C, d) memory as it always was: reductions over it depend on the memory order.
        self.true_models = torch.empty(num_clients, c, d, dtype=torch.float64).transpose(1, 2)
        # Blocks bound the float64 working memory (100,000 clients fit) and stay cache-sized.
        for start in range(0, num_clients, _GENERATION_BLOCK):
            ids = client_ids[start: start + _GENERATION_BLOCK]
            block = generate_clients(ids, seed=cfg.run.seed, num_clients=data.num_clients, num_samples=n, dim=d,
                                     num_classes=c, R=data.R, center_scale=data.center_scale)
            rows = slice(start, start + len(ids))
            self.features[rows] = torch.from_numpy(block.features)
            self.labels[rows] = torch.from_numpy(block.labels)
            self.scale[rows] = torch.from_numpy(block.scale)
            self.true_models[rows] = torch.from_numpy(block.true_models).transpose(1, 2)
        self.features, self.labels = self.features.to(device), self.labels.to(device)
        self.scale, self.true_models = self.scale.to(device), self.true_models.to(device)
        self.sample_counts = torch.full((num_clients,), n, dtype=dtype, device=device)

    @classmethod
    def preflight(cls, cfg: Config) -> None:
        """Nothing beyond the config: the data is generated from (seed, client id) on each rank."""

    def init_model(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.cfg.run.seed)
        return self.model.init_params(generator, dtype=self.dtype).to(self.features.device)

    def model_state_dict(self, model: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.state_dict(model)

    def local_smoothness(self) -> float:
        """max_i lambda_max(X_i^T X_i / (4 n_i)) on the scaled features (docs/METHOD.md §2)."""
        largest = -math.inf
        for start in range(0, len(self.features), _GENERATION_BLOCK):  # a float64 copy per block, not of all
            x = self.features[start: start + _GENERATION_BLOCK].double()
            gram = x.transpose(1, 2) @ x / (4 * x.shape[1])
            largest = max(largest, float(torch.linalg.eigvalsh(gram)[:, -1].max()))
        return largest

    def local_update(
        self, models: torch.Tensor, rows: torch.Tensor, *, anchor: torch.Tensor, lam: float, lr: float, round_idx: int
    ) -> torch.Tensor:
        return prox_gd_linear_softmax(
            self.model, models, self.features[rows], self.labels[rows],
            anchor=anchor, lam=lam, lr=lr, num_steps=self.cfg.algorithm.num_local_steps,
        )

    # --- solver primitives (full-batch GD only: the paper's synthetic solver) -------------------

    def parameter_groups(self) -> dict[str, slice] | None:
        return None  # one linear layer: no body/head split

    def parameter_shapes(self) -> list[torch.Size]:
        return [t.shape for t in self.model_state_dict(self.init_model()).values()]

    def full_batch(self, rows: torch.Tensor) -> Batch:
        n = self.features.shape[1]
        weights = torch.full((len(rows), n), 1.0 / n, dtype=self.dtype, device=self.features.device)
        return Batch(self.features[rows], self.labels[rows], weights)

    def batches(self, rows: torch.Tensor, *, round_idx: int, epochs: int | None = None,
                stream: int = 0) -> Iterator[Batch]:
        if not len(rows):
            return
        batch = self.full_batch(rows)
        for _ in range(self.cfg.algorithm.num_local_steps * (1 if epochs is None else epochs)):
            yield batch

    def gradient(self, models: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.model.weighted_grad(models, batch.x, batch.y, batch.weights)

    def metric_sums(self, local_models: torch.Tensor, global_model: torch.Tensor) -> dict[str, torch.Tensor]:
        n = self.features.shape[1]
        loss_p, correct_p = self.model.loss_and_correct(local_models, self.features, self.labels)
        loss_g, correct_g = self.model.shared_loss_and_correct(global_model, self.features, self.labels)
        raw_models = self.model.weight_matrix(local_models).double() / self.scale.unsqueeze(-1)
        itr = torch.linalg.matrix_norm(raw_models - self.true_models)
        return {
            "num_clients": torch.tensor(float(len(self.client_ids)), dtype=torch.float64),
            "num_samples": self.sample_counts.double().sum(),
            "ITR_sum": itr.sum(),
            "loss_personal_sum": (loss_p.double() * n).sum(),
            "correct_personal": correct_p.double().sum(),
            "client_correct": correct_p.double(),
            "client_count": torch.full((len(self.client_ids),), float(n), dtype=torch.float64),
            "loss_global_sum": (loss_g.double() * n).sum(),
            "correct_global": correct_g.double().sum(),
            "true_model_sum": self.true_models.sum(dim=0).flatten(),
        }

    def finalize_metrics(self, sums: dict[str, torch.Tensor], global_model: torch.Tensor) -> dict[str, float]:
        mean_truth = sums["true_model_sum"] / sums["num_clients"]
        global_weights = self.model.weight_matrix(global_model.unsqueeze(0)).double().flatten()
        samples = float(sums["num_samples"])
        return {
            "ITR": float(sums["ITR_sum"] / sums["num_clients"]),
            "ATR": float(torch.linalg.vector_norm(global_weights - mean_truth)),
            "loss_personal": float(sums["loss_personal_sum"]) / samples,
            "loss_global": float(sums["loss_global_sum"]) / samples,
            "acc_personal": float(sums["correct_personal"]) / samples,
            "acc_global": float(sums["correct_global"]) / samples,
        }
