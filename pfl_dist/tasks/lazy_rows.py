"""`LazyRows`: one per-client tensor of a task with lazy client data (data.lazy, pfl_dist/data/lazy.py).

It stands where the eager task's (k, ...) tensor stands. Indexing it by a 1-D tensor of local
rows, `rows[index]`, asks the task's `ClientCache` for the distinct clients (made once if not
held), stacks their tensors of this field in the eager tensor's memory layout, and indexes the
stack the same way, so it returns exactly `eager[index]`: same values, dtype, shape and strides,
and what follows (the solver, the metrics' reductions) computes the same bits. Each client's
tensor must be what the eager tensor holds in that client's row (padded to the same length).
`shape`, `dtype`, `device` and `len` are the eager tensor's; slicing is refused (a slice of every
client is what lazy data avoids).
"""

from __future__ import annotations

from typing import Any

import torch

from pfl_dist.data.lazy import ClientCache


class LazyRows:
    """Field `field` of the clients in `cache` (global id = first_id + local row), shaped like
    the eager (k, ...) tensor `shape`. `transposed`: the eager tensor is a (k, a, b) view of
    (k, b, a) memory (the true models W_k^T), and each client's value is its (b, a) block."""

    def __init__(self, cache: ClientCache[Any], *, first_id: int, field: str, shape: tuple[int, ...],
                 dtype: torch.dtype, device: torch.device, transposed: bool = False) -> None:
        self.cache, self.first_id, self.field = cache, first_id, field
        self.shape, self.dtype, self.device, self.transposed = torch.Size(shape), dtype, device, transposed

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: object) -> torch.Tensor:
        if not isinstance(index, torch.Tensor) or index.dim() != 1:
            raise TypeError(f"lazy client data is indexed by a 1-D tensor of rows, not {type(index).__name__}")
        rows = index.tolist()
        distinct = list(dict.fromkeys(rows))
        position = {row: i for i, row in enumerate(distinct)}
        clients = self.cache.get([self.first_id + row for row in distinct])
        parts = [getattr(client, self.field) for client in clients]
        part_shape = (*self.shape[1:-2], self.shape[-1], self.shape[-2]) if self.transposed else self.shape[1:]
        stacked = torch.stack(parts) if parts else torch.empty(0, *part_shape, dtype=self.dtype)
        if self.transposed:
            stacked = stacked.transpose(-2, -1)
        return stacked.to(self.device)[torch.tensor([position[row] for row in rows], dtype=torch.long,
                                                    device=self.device)]
