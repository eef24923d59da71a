"""The Task interface: this rank's share of the federated problem (its clients' data, the model,
the local solver and the evaluation metrics). The train loop only talks to this interface."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from pfl_dist.config import Config
from pfl_dist.solvers.padded import plan_epoch


@dataclass(frozen=True)
class Batch:
    """One local step's data for k clients: x (k, b, ...), y (k, b), weights (k, b) (1/b on the b
    real samples, 0 on padding, so the weighted loss sum is each client's mean loss), and
    `active` (k,), 0 for a client whose epoch is already over (None: every client steps)."""

    x: torch.Tensor
    y: torch.Tensor
    weights: torch.Tensor
    active: torch.Tensor | None = None


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

    # --- solver primitives the client maths composes (pfl_dist/algorithms/base.py: `prox_step`,
    # `local_sgd`) ---------------------------------------------------------------------------

    def fused_local_phase(
        self, models: torch.Tensor, rows: torch.Tensor, *, anchor: torch.Tensor, lam: float, lr: float, round_idx: int
    ) -> torch.Tensor | None:
        """A fast path for `local_sgd`: the configured local phase of proximal steps on
        f_i(w) + (lam/2)||w - anchor||^2 for the clients in `rows` (local row indices), run by a
        fused solver in place on `models` and returned, or None when the task has no fused solver
        for this case (then `local_sgd` runs `prox_step` over `batches`). The same steps as that
        loop up to rounding."""
        ...

    def parameter_groups(self) -> dict[str, slice] | None:
        """{"body": slice, "head": slice} of the flat model, or None for a model without a split."""
        ...

    def parameter_shapes(self) -> list[torch.Size]:
        """The flat model's parameter tensors in order (a codec may compress the matrices)."""
        ...

    def batches(self, rows: torch.Tensor, *, round_idx: int, epochs: int | None = None,
                stream: int = 0) -> Iterator[Batch]:
        """The local schedule of the clients in `rows`: None = the local phase (local_epochs epochs
        of minibatches, or num_local_steps full-batch steps); e = e epochs (full-batch: e x
        num_local_steps steps). `stream` > 0 draws other shuffles than the local phase's."""
        ...

    def full_batch(self, rows: torch.Tensor) -> Batch:
        """All training samples of the clients in `rows`, as one batch."""
        ...

    def gradient(self, models: torch.Tensor, batch: Batch) -> torch.Tensor:
        """(k, P): each client's gradient of its weighted loss on its rows of `batch`."""
        ...

    def metric_sums(self, local_models: torch.Tensor, global_model: torch.Tensor,
                    rows: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Additive per-rank sums (float64) over the clients in `rows` (local row indices: the
        evaluation cohort's members on this rank; None = every client of this rank; local_models
        (r, P) holds their models in that order) that one all-reduce turns into job totals. Each
        metric finalized as sum u / sum v over clients also comes as its per-client pair
        "client/<metric>" (2, r): u_i and v_i (pfl_dist/evaluation.py: the distribution over
        clients from "client/acc_personal", a cohort's standard errors)."""
        ...

    def finalize_metrics(self, sums: dict[str, torch.Tensor], global_model: torch.Tensor) -> dict[str, float]:
        ...


def padded_batches(
    full_batch: Callable[[torch.Tensor], Batch],
    features: torch.Tensor,
    labels: torch.Tensor,
    rows: torch.Tensor,
    *,
    counts: Sequence[int],
    first_client_id: int,
    cfg: Config,
    round_idx: int,
    epochs: int | None,
    stream: int,
    dtype: torch.dtype,
) -> Iterator[Batch]:
    """The local schedule (the one epoch loop): the batches of the clients in `rows` on padded
    (k, n, ...) data: the full batch K times (algorithm.batch_size null), else each client's own
    shuffled epochs of minibatches (`plan_epoch`, solvers/padded.py), a client whose epoch is over
    marked inactive for the remaining steps; `epochs` overrides the configured count."""
    algo = cfg.algorithm
    if not len(rows):
        return
    if algo.batch_size is None:
        batch = full_batch(rows)
        for _ in range(algo.num_local_steps * (1 if epochs is None else epochs)):
            yield batch
        return
    chosen = [counts[int(r)] for r in rows]
    client_ids = [first_client_id + int(r) for r in rows]
    if not isinstance(features, torch.Tensor):  # lazy client data (LazyRows): the chosen clients' rows, once
        features, labels, rows = features[rows], labels[rows], torch.arange(len(rows))
    device = features.device
    row_index = rows.to(device).unsqueeze(1)
    for epoch in range(algo.local_epochs if epochs is None else epochs):
        plan = plan_epoch(chosen, client_ids=client_ids, batch_size=algo.batch_size, seed=cfg.run.seed,
                          round_idx=round_idx, epoch=epoch, dtype=dtype, stream=stream)
        positions, weights, active = (t.to(device) for t in (plan.positions, plan.weights, plan.active))
        for step in range(positions.shape[0]):
            yield Batch(features[row_index, positions[step]], labels[row_index, positions[step]],
                        weights[step], active[step] if plan.ragged else None)
