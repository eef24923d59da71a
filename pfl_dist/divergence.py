"""Divergence: what became non-finite in a round, agreed by every rank, named by its config key.

A round can diverge in three places, each made by its own step size (the algorithm declares the
keys: `sent_step_keys`, `kept_step_keys`, `server_step_keys` in pfl_dist/algorithms/base.py):

- the model a client sends (algorithm.local_lr; Per-FedAvg's also algorithm.personal_lr),
- the personal state a client keeps (algorithm.personal_lr: Ditto's, pFedMe's, APFL's personal
  model, FedRep's head; the local model itself for FedCLUP, FedAvg, FedProx, LocalTrain, FedPer),
- w_g in the server step, from a finite mean (FedCLUP's algorithm.global_lr, pFedMe's and
  SCAFFOLD's algorithm.beta).

Every rank stops in the same round and the job prints one line that does not depend on the world
size. A client whose message or kept state is non-finite sends a non-finite message (a NaN put in
for a kept state that diverged alone), so after the exchange every rank's mean, and w_g, is
non-finite; then one MIN all-reduce (telemetry, in that round only) tells every rank the lowest
diverged client id and what of it diverged, and rank 0 prints the line. A server step that
diverges from a finite mean is the same on every rank. LocalTrain has no per-round collective: the
rank that hosts a diverged client names it (`ClientDivergenceError`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from pfl_dist.comm import Traffic
from pfl_dist.errors import ClientDivergenceError, DivergenceError

if TYPE_CHECKING:
    from pfl_dist.algorithms import Algorithm, ClientOutput
    from pfl_dist.comm import Communicator

SENT, KEPT = 1, 2  # bits of what diverged
PARTS = {SENT: "the model it sends is", KEPT: "the state it keeps is", SENT | KEPT: "the model it sends and the state "
         "it keeps are"}


def _finite_rows(tensor: torch.Tensor, num_rows: int) -> torch.Tensor:
    if not (tensor.is_floating_point() and tensor.numel()):
        return torch.ones(num_rows, dtype=torch.bool)
    return torch.isfinite(tensor.reshape(num_rows, -1)).all(dim=1).cpu()


def diverged_parts(out: ClientOutput, num_rows: int) -> torch.Tensor:
    """(k,) the SENT | KEPT bits of each sampled row whose message or kept state is non-finite (a
    kept local model that is the message itself, as FedCLUP's, counts as the message)."""
    parts = torch.zeros(num_rows, dtype=torch.long)
    if num_rows:
        parts |= SENT * (~_finite_rows(out.sent, num_rows)).long()
        for kept in out.keep.values():
            if kept is not out.sent:
                parts |= KEPT * (~_finite_rows(kept, num_rows)).long()
    return parts


def carrying_divergence(sent: torch.Tensor, parts: torch.Tensor) -> torch.Tensor:
    """`sent` with a NaN message for each client whose kept state diverged but whose message did
    not, so that the exchange carries every divergence to every rank."""
    hidden = parts == KEPT
    if not bool(hidden.any()):
        return sent
    sent = sent.clone()
    sent[hidden.to(sent.device)] = math.nan
    return sent


def _keys(algorithm: Algorithm, parts: int) -> str:
    keys = (*(algorithm.kept_step_keys if parts & KEPT else ()), *(algorithm.sent_step_keys if parts & SENT else ()))
    return " or ".join(dict.fromkeys(keys))


def client_diverged(round_num: int, client: int, parts: int, algorithm: Algorithm) -> str:
    return f"round {round_num}: client {client} diverged: {PARTS[parts]} non-finite; lower {_keys(algorithm, parts)}"


def check_local(round_num: int, parts: torch.Tensor, *, first_client: int, rows: torch.Tensor,
                algorithm: Algorithm) -> None:
    """Without a per-round collective (LocalTrain): this rank names its own first diverged client."""
    if bool(parts.any()):
        row = int(parts.nonzero()[0])
        raise ClientDivergenceError(client_diverged(round_num, first_client + int(rows[row]), int(parts[row]),
                                                    algorithm))


def check_round(round_num: int, parts: torch.Tensor, *, rows: torch.Tensor, first_client: int, num_clients: int,
                mean: torch.Tensor, global_model: torch.Tensor, algorithm: Algorithm, comm: Communicator) -> None:
    """After the server step: nothing if w_g is finite, else the one DivergenceError every rank raises."""
    if bool(torch.isfinite(global_model).all()):
        assert not bool(parts.any()), "a diverged client's message reaches w_g on every rank"
        return
    if bool(torch.isfinite(mean).all()):
        keys = " or ".join(algorithm.server_step_keys)
        raise DivergenceError(f"round {round_num}: the global model is non-finite after the server step (every "
                              f"client's model and their mean are finite); lower {keys or 'the server step'}")
    first = _first_diverged(parts, rows=rows, first_client=first_client, num_clients=num_clients, comm=comm)
    if first is None:
        raise DivergenceError(f"round {round_num}: the mean of the clients' models is non-finite though each is "
                              f"finite (they overflow {str(global_model.dtype).removeprefix('torch.')}); lower "
                              f"{_keys(algorithm, SENT)}")
    raise DivergenceError(client_diverged(round_num, *first, algorithm))


def _first_diverged(parts: torch.Tensor, *, rows: torch.Tensor, first_client: int, num_clients: int,
                    comm: Communicator) -> tuple[int, int] | None:
    """(client id, parts) of the lowest diverged client id over all ranks, from one MIN all-reduce
    of client * 4 + parts (exact in float64); None when no client diverged."""
    none = 4 * num_clients
    diverged = parts.nonzero()
    mine = (first_client + int(rows[int(diverged[0])])) * 4 + int(parts[int(diverged[0])]) if len(diverged) else none
    word = torch.tensor([float(mine)], dtype=torch.float64, device=comm.runtime.device)
    lowest = int(comm.all_reduce(word, traffic=Traffic.TELEMETRY, op="min")[0])
    return None if lowest >= none else divmod(lowest, 4)
