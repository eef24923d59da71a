"""Softmax regression on per-client feature matrices: what the synthetic and client-file tasks share.

A subclass fills in the rank's clients (`_set_clients`): features (k, n_max, d) zero-padded,
labels (k, n_max), each client's sample count, its feature scale s_k (d,) and, when known, its
true model W_k. Everything else lives here: the smoothness bound, the local solver and the
paper's metrics.

- ITR = mean_k ||w_k / s_k - W_k^T||_F, where s_k is client k's feature scale (w_k lives in the
  scaled feature space, so w_k / s_k is the same model on raw features).
- ATR = ||w_g - mean_k W_k^T||_F, comparing the scaled-space w_g with unscaled truths exactly as
  the reference code does (kept for comparability; see docs/ARCHITECTURE.md).
- Accuracies and losses are measured on the clients' own training samples, or on held-out rows
  when the subclass sets them (`_set_eval`: client_files with data.test_fraction); the metric
  names say which (`metrics_measured_on`: train/... or eval/...). With validation rows
  (`val_rows`: client_files with data.val_fraction) the personal loss and accuracy on them too,
  named val/loss_personal and val/acc_personal.
ITR and ATR are reported only when the true models are known.

When every client has the same number of samples (always on synthetic data) the metrics run the
unpadded kernels of pfl_dist/models/linear.py, and a full-batch local phase that asks for it
(`local_sgd(..., fused=True)`: the paper's four methods) runs the fused solver of
pfl_dist/solvers/linear.py (`fused_local_phase`), bit for bit what the synthetic task always ran
(tests/unit/test_golden.py). Everything else (different counts, `algorithm.batch_size`
minibatches, the other methods) takes the generic loop on `batches` and `gradient`
(pfl_dist/algorithms/base.py `local_sgd`) and masked metrics.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from pfl_dist.config import Config
from pfl_dist.models.linear import LinearSoftmax
from pfl_dist.solvers.linear import prox_gd_linear_softmax
from pfl_dist.solvers.padded import full_batch_weights
from pfl_dist.tasks.base import Batch, padded_batches

BLOCK = 256  # clients per float64 block in the smoothness bound


def _equal(counts: list[int], features: torch.Tensor) -> bool:
    """Every client fills the padded length: the unpadded kernels apply."""
    return not counts or (counts[0] == features.shape[1] and counts.count(counts[0]) == len(counts))


def block_smoothness(features: torch.Tensor, counts: list[int] | None) -> float:
    """max over a block of clients (b, n_max, d) of lambda_max(X_i^T X_i / (4 n_i)); counts None:
    every client fills n_max."""
    x = features.double()
    if counts is None:
        gram = x.transpose(1, 2) @ x / (4 * x.shape[1])
    else:  # padding rows are zero: they add nothing to X^T X
        gram = x.transpose(1, 2) @ x / (4 * torch.tensor(counts, dtype=torch.float64, device=x.device)).view(-1, 1, 1)
    return float(torch.linalg.eigvalsh(gram)[:, -1].max())


class LinearClientsTask:
    # One intra-op thread, whatever the rank's share of the cores: the local solver works on
    # cache-sized chunks of clients (~10k-100k-element ops), which OpenMP synchronisation makes
    # slower, not faster (k=100: 112 us/step with 1 thread, 1.2-1.7 ms with 2 on a shared
    # 2-core box). More cores are used by more ranks (docs/PERFORMANCE.md, thread rule).
    max_threads: int | None = 1
    metrics_measured_on = "train"  # accuracies and losses: the clients' own training samples

    cfg: Config
    client_ids: range
    model: LinearSoftmax
    num_params: int
    dtype: torch.dtype
    features: torch.Tensor  # (k, n_max, d), zero-padded past each client's count
    labels: torch.Tensor  # (k, n_max) int64, 0 on padding
    scale: torch.Tensor  # (k, d) float64: client k's features were divided by scale[k]
    true_models: torch.Tensor | None  # (k, d, C) float64 W_k^T, or None when unknown
    counts: list[int]  # n_k
    sample_counts: torch.Tensor  # (k,) n_k in the run's dtype: the aggregation weights
    # The rows the metrics are measured on: the training rows (above), or held-out ones (`_set_eval`).
    eval_features: torch.Tensor
    eval_labels: torch.Tensor
    eval_counts: list[int]
    # The clients' validation rows (data.val_fraction; client_files), measured as val/...: None = none.
    val_rows: tuple[torch.Tensor, torch.Tensor, list[int]] | None = None

    def _set_counts(self, counts: list[int], device: torch.device) -> None:
        self.counts = counts
        self.equal_counts = _equal(counts, self.features)
        if self.equal_counts and counts:  # torch.tensor of a 5 x 10^6-long list: most of a 10^7 rank's start-up
            self.sample_counts = torch.full((len(counts),), counts[0], dtype=self.dtype, device=device)
        else:
            self.sample_counts = torch.tensor(counts, dtype=self.dtype, device=device)
        self._set_eval(self.features, self.labels, counts, measured_on="train")

    def _set_eval(self, features: torch.Tensor, labels: torch.Tensor, counts: list[int], *, measured_on: str) -> None:
        """The rows the metrics are measured on, zero-padded like the training rows."""
        self.eval_features, self.eval_labels, self.eval_counts = features, labels, counts
        self.eval_equal_counts = _equal(counts, features)
        self.metrics_measured_on = measured_on

    def model_state_dict(self, model: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.state_dict(model)

    def local_smoothness(self) -> float:
        """max_i lambda_max(X_i^T X_i / (4 n_i)) on the scaled features (docs/METHOD.md §2)."""
        largest = -math.inf
        for start in range(0, len(self.features), BLOCK):  # a float64 copy per block, not of all
            largest = max(largest, block_smoothness(self.features[start: start + BLOCK],
                                                    None if self.equal_counts else self.counts[start: start + BLOCK]))
        return largest

    def fused_local_phase(
        self, models: torch.Tensor, rows: torch.Tensor, *, anchor: torch.Tensor, lam: float, lr: float, round_idx: int
    ) -> torch.Tensor | None:
        """The fused linear softmax solver (pfl_dist/solvers/linear.py) when every client fills the
        padded length and the phase is full-batch; None (the generic loop) otherwise."""
        if self.cfg.algorithm.batch_size is not None or not self.equal_counts:
            return None
        return prox_gd_linear_softmax(self.model, models, self.features[rows], self.labels[rows],
                                      anchor=anchor, lam=lam, lr=lr, num_steps=self.cfg.algorithm.num_local_steps)


    def parameter_groups(self) -> dict[str, slice] | None:
        return None  # one linear layer: no body/head split

    def parameter_shapes(self) -> list[torch.Size]:
        return [t.shape for t in self.model_state_dict(torch.zeros(self.num_params, dtype=self.dtype)).values()]

    def full_batch(self, rows: torch.Tensor) -> Batch:
        """All samples of the clients in `rows`: weight 1/n_i on each real sample, 0 on padding."""
        if self.equal_counts:
            n = self.features.shape[1]
            weights = torch.full((len(rows), n), 1.0 / n, dtype=self.dtype, device=self.features.device)
        else:
            weights = full_batch_weights([self.counts[int(r)] for r in rows], num_positions=self.features.shape[1],
                                         dtype=self.dtype).to(self.features.device)
        return Batch(self.features[rows], self.labels[rows], weights)

    def batches(self, rows: torch.Tensor, *, round_idx: int, epochs: int | None = None,
                stream: int = 0) -> Iterator[Batch]:
        return padded_batches(self.full_batch, self.features, self.labels, rows, counts=self.counts,
                              first_client_id=self.client_ids.start, cfg=self.cfg, round_idx=round_idx,
                              epochs=epochs, stream=stream, dtype=self.dtype)

    def gradient(self, models: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.model.weighted_grad(models, batch.x, batch.y, batch.weights)

    # --- metrics -------------------------------------------------------------------------------

    def _loss_and_correct_sums(self, models: torch.Tensor, *, shared: bool, rows: torch.Tensor | None,
                               on: tuple[torch.Tensor, torch.Tensor, list[int]] | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-client sums (r,) of the cross-entropy and of correct predictions on the real samples
        of the evaluation rows (`on`: other rows, the validation rows) of the clients in `rows`
        (None: every client of this rank), of each client's own row of `models` (r, P), or of one
        shared model (P,)."""
        features, labels, counts = (self.eval_features, self.eval_labels, self.eval_counts) if on is None else on
        equal = self.eval_equal_counts if on is None else _equal(counts, features)
        if rows is not None:
            features, labels, counts = features[rows], labels[rows], [counts[int(r)] for r in rows]
        if equal:
            n = features.shape[1]
            if shared:
                loss, correct = self.model.shared_loss_and_correct(models, features, labels)
            else:
                loss, correct = self.model.loss_and_correct(models, features, labels)
            return loss.double() * n, correct.double()
        weights = models.expand(len(features), -1) if shared else models
        logits = self.model.logits(weights, features).double()
        valid = torch.arange(features.shape[1], device=logits.device) < torch.tensor(
            counts, device=logits.device).unsqueeze(1)
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
        correct = (logits.argmax(dim=-1) == labels) & valid
        return (losses * valid).sum(dim=1), correct.double().sum(dim=1)

    def metric_sums(self, local_models: torch.Tensor, global_model: torch.Tensor,
                    rows: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        loss_p, correct_p = self._loss_and_correct_sums(local_models, shared=False, rows=rows)
        loss_g, correct_g = self._loss_and_correct_sums(global_model, shared=True, rows=rows)
        counts = self.eval_counts if rows is None else [self.eval_counts[int(r)] for r in rows]
        samples = torch.tensor([float(n) for n in counts], dtype=torch.float64)
        sums = {
            "num_clients": torch.tensor(float(len(counts)), dtype=torch.float64),
            "num_samples": torch.tensor(float(sum(counts)), dtype=torch.float64),
        }
        truth, scale = self.true_models, self.scale
        if truth is not None and rows is not None:
            truth, scale = truth[rows], scale[rows]
        if truth is not None:
            raw_models = self.model.weight_matrix(local_models).double() / scale.unsqueeze(-1)
            errors = torch.linalg.matrix_norm(raw_models - truth)
            sums["ITR_sum"] = errors.sum()
            sums["client/ITR"] = torch.stack([errors.cpu(), torch.ones_like(samples)])
        sums |= {
            "loss_personal_sum": loss_p.sum(),
            "correct_personal": correct_p.sum(),
            "loss_global_sum": loss_g.sum(),
            "correct_global": correct_g.sum(),
        }
        for name, per_client in (("acc_personal", correct_p), ("loss_personal", loss_p),
                                 ("acc_global", correct_g), ("loss_global", loss_g)):
            sums[f"client/{name}"] = torch.stack([per_client.cpu(), samples])
        if truth is not None:
            sums["true_model_sum"] = truth.sum(dim=0).flatten()
        if self.val_rows is not None:  # each client's own model on its validation rows
            loss_v, correct_v = self._loss_and_correct_sums(local_models, shared=False, rows=rows, on=self.val_rows)
            val_counts = self.val_rows[2] if rows is None else [self.val_rows[2][int(r)] for r in rows]
            sums |= {"val_num_samples": torch.tensor(float(sum(val_counts)), dtype=torch.float64),
                     "val_loss_personal_sum": loss_v.sum(), "val_correct_personal": correct_v.sum()}
        return sums

    def finalize_metrics(self, sums: dict[str, torch.Tensor], global_model: torch.Tensor) -> dict[str, float]:
        samples = float(sums["num_samples"])
        metrics: dict[str, float] = {}
        if "ITR_sum" in sums:
            mean_truth = sums["true_model_sum"] / sums["num_clients"]
            global_weights = self.model.weight_matrix(global_model.unsqueeze(0)).double().flatten()
            metrics["ITR"] = float(sums["ITR_sum"] / sums["num_clients"])
            metrics["ATR"] = float(torch.linalg.vector_norm(global_weights - mean_truth))
        metrics |= {
            "loss_personal": float(sums["loss_personal_sum"]) / samples,
            "loss_global": float(sums["loss_global_sum"]) / samples,
            "acc_personal": float(sums["correct_personal"]) / samples,
            "acc_global": float(sums["correct_global"]) / samples,
        }
        if "val_num_samples" in sums:  # data.val_fraction: named with their split
            num_val = float(sums["val_num_samples"])
            metrics |= {"val/acc_personal": float(sums["val_correct_personal"]) / num_val,
                        "val/loss_personal": float(sums["val_loss_personal_sum"]) / num_val}
        return metrics
