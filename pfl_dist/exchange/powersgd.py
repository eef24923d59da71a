"""PowerSGD (Vogels, Karimireddy, Jaggi, NeurIPS 2019) for federated updates.

The flat model is viewed as its parameter matrices (a conv kernel (o, i, h, w) as (o, i*h*w),
as torch's PowerSGD hook does). A matrix is compressed when rank r saves bytes, (n + m) r < n m;
vectors and the rest are sent dense. One round, with M_i = Delta_i + e_i and weights w_i:

    P   = sum_i w_i M_i Q      all-reduce 1 (with the dense part beside it)
    P^  = orthonormal basis of P (QR, the same on every rank)
    Q   = sum_i w_i M_i^T P^   all-reduce 2
    mean update = P^ Q^T;  e_i <- M_i - P^ P^T M_i (each client's own approximation error)

(e_i = 0 when the message is kept state, pfl_dist/exchange/base.py `feedback_rule`.)

Warm start: Q is kept from one round to the next (replicated state, identical on all ranks),
so a few rounds act as power iterations on the slowly moving update. The first Q is drawn from
a generator seeded by the run seed, the same on every rank.

Differences from torch's `powerSGD_hook`, which this follows otherwise: the error feedback is
per client (FL clients take turns; a rank hosts many), and a client's error is measured against
its own rank-r projection P^ P^T M_i, as in the paper's Algorithm 2 (the hook uses the averaged
result); Q is not re-orthogonalized before reuse (P is orthogonalized every round, which is all
the paper's Algorithm 1 needs); P is orthogonalized by QR, which also handles a zero P.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pfl_dist.exchange.base import RoundInput, SummingCompressor, Wire, generator

_INIT_STREAM = 0x50_53


@dataclass(frozen=True)
class Block:
    """One compressed parameter matrix: rows x cols at `offset` of the flat model, rank r."""

    offset: int
    rows: int
    cols: int
    rank: int

    @property
    def span(self) -> slice:
        return slice(self.offset, self.offset + self.rows * self.cols)


def plan_blocks(shapes: list[torch.Size], rank: int) -> tuple[list[Block], torch.Tensor]:
    """(the matrices worth compressing at `rank`, the flat indices sent dense)."""
    blocks, dense, offset = [], [], 0
    for shape in shapes:
        size = math.prod(shape)
        rows, cols = (shape[0], size // shape[0]) if len(shape) >= 2 else (1, size)
        r = min(rows, cols, rank)
        if len(shape) >= 2 and (rows + cols) * r < rows * cols:
            blocks.append(Block(offset, rows, cols, r))
        else:
            dense.append(torch.arange(offset, offset + size))
        offset += size
    return blocks, torch.cat(dense) if dense else torch.zeros(0, dtype=torch.long)


class PowerSGD(SummingCompressor):
    """The plan (`plan_blocks`: which matrices are compressed at rank r, which indices go dense) is
    fixed at set-up; the round's arithmetic is `reduce` (two linear all-reduces, above), and a
    standalone `encode`/`decode` is the same arithmetic for each vector on its own (one worker of
    the paper's Algorithm 1, from the current Q): its message is P^ (rows x r), its Q (cols x r) per
    matrix and the dense values, exactly `message_bytes`."""

    def setup(self) -> None:
        self.blocks, dense = plan_blocks(self.shapes, int(self.spec.param or 1))
        self.dense = dense.to(self.device)
        self.q = torch.zeros(sum(b.cols * b.rank for b in self.blocks), dtype=self.dtype, device=self.device)
        self.warm = False  # set once a Q has been reduced: from then on it is reused
        self.bases: list[torch.Tensor] = []  # the last reduced round's P^ per block (its residuals)

    def message_bytes(self) -> int:
        low_rank = sum((b.rows + b.cols) * b.rank for b in self.blocks)
        return (low_rank + len(self.dense)) * self.element_size

    def _qs(self) -> list[torch.Tensor]:
        if not self.warm:
            draw = generator(self.seed, _INIT_STREAM)
            self.q = torch.randn(len(self.q), generator=draw, dtype=torch.float64).to(self.dtype).to(self.device)
        out, start = [], 0
        for b in self.blocks:
            out.append(self.q[start: start + b.cols * b.rank].view(b.cols, b.rank))
            start += b.cols * b.rank
        return out

    def _basis(self, p: torch.Tensor) -> torch.Tensor:
        return torch.linalg.qr(p).Q

    def reduce(self, corrected: torch.Tensor, round_input: RoundInput, wire: Wire) -> torch.Tensor:
        mean = (round_input.weights @ corrected.double()).to(self.dtype)  # this rank's sum_i w_i M_i
        qs = self._qs()
        ps = [mean[b.span].view(b.rows, b.cols) @ q for b, q in zip(self.blocks, qs, strict=True)]
        first = wire.all_reduce(torch.cat([*(p.reshape(-1) for p in ps), mean[self.dense]]))
        bases, start = [], 0
        for b in self.blocks:
            bases.append(self._basis(first[start: start + b.rows * b.rank].view(b.rows, b.rank)))
            start += b.rows * b.rank
        new_qs = [mean[b.span].view(b.rows, b.cols).T @ basis for b, basis in zip(self.blocks, bases, strict=True)]
        # (no matrix worth compressing: every rank skips the second all-reduce alike)
        second = wire.all_reduce(torch.cat([q.reshape(-1) for q in new_qs])) if new_qs else self.q
        total = torch.zeros(self.num_params, dtype=self.dtype, device=self.device)
        total[self.dense] = first[start:]
        start = 0
        for b, basis in zip(self.blocks, bases, strict=True):
            q = second[start: start + b.cols * b.rank].view(b.cols, b.rank)
            total[b.span] = (basis @ q.T).reshape(-1)
            start += b.cols * b.rank
        self.q, self.warm, self.bases = second, True, bases
        return total

    def residual(self, corrected: torch.Tensor, *, round_idx: int, messages: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """e_i = M_i - P^ P^T M_i on compressed matrices (the round just reduced), 0 where sent dense."""
        errors = corrected.clone()
        errors[:, self.dense] = 0
        for b, basis in zip(self.blocks, self.bases, strict=True):
            matrices = corrected[:, b.span].view(-1, b.rows, b.cols)
            errors[:, b.span] = (matrices - basis @ (basis.T @ matrices)).reshape(len(corrected), -1)
        return errors

    def encode_sum(self, vectors: torch.Tensor, *, weights: torch.Tensor, round_idx: int,
                   control: torch.Tensor | None) -> torch.Tensor:
        """The message of sum_i w_i M_i on its own, from the current Q (state is not advanced):
        [P^ per block, Q per block, dense values] in the model dtype."""
        mean = (weights @ vectors.double()).to(self.dtype)
        bases, qs = [], []
        for b, q in zip(self.blocks, self._qs(), strict=True):
            matrix = mean[b.span].view(b.rows, b.cols)
            basis = self._basis(matrix @ q)
            bases.append(basis.reshape(-1))
            qs.append((matrix.T @ basis).reshape(-1))
        return torch.cat([*bases, *qs, mean[self.dense]])

    def decode(self, messages: torch.Tensor, *, round_idx: int, control: torch.Tensor | None = None) -> torch.Tensor:
        """(n, message) -> (n, P) float64: P^ Q^T per block, the dense values where they belong."""
        out = torch.zeros(len(messages), self.num_params, dtype=torch.float64, device=messages.device)
        low_rank = sum(b.rows * b.rank for b in self.blocks)
        p_start, q_start = 0, low_rank
        for b in self.blocks:
            basis = messages[:, p_start: p_start + b.rows * b.rank].reshape(-1, b.rows, b.rank)
            q = messages[:, q_start: q_start + b.cols * b.rank].reshape(-1, b.cols, b.rank)
            out[:, b.span] = (basis @ q.transpose(1, 2)).reshape(len(messages), -1).double()
            p_start, q_start = p_start + b.rows * b.rank, q_start + b.cols * b.rank
        out[:, self.dense] = messages[:, q_start:].double()
        return out

    def replicated_state(self) -> dict[str, torch.Tensor]:
        return {"q": self.q.cpu(), "warm": torch.tensor(self.warm)}

    def load_replicated_state(self, state: dict[str, torch.Tensor]) -> None:
        self.q = state["q"].to(self.device)
        self.warm = bool(state["warm"])
