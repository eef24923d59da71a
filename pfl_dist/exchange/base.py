"""What every codec sees: the round's input, the wire it may use, and the state it owns.

A codec and its state travel together (as a DDP communication hook and its state do): the
Exchange hands a codec the round's weighted updates and a `Wire`, and gets back the decoded
weighted mean update. It never knows which codec it carries.

Error feedback is a property of the (algorithm, codec) pair (`feedback_rule`): the codec says
whether it compresses with error feedback (`Codec.error_feedback`: top-k, rand-k, PowerSGD), the
algorithm says what its message is (`MethodInfo.message`, pfl_dist/methods.py), and a residual is
kept only for a fresh increment. A message that is the difference between kept state and w_g
(FedCLUP's w_i - w_g) still holds next round whatever a codec left out of it this round: that
state is its own memory, and a residual would send the left-out part twice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
import torch

from pfl_dist.exchange.spec import CodecSpec
from pfl_dist.methods import INCREMENT
from pfl_dist.store import ClientStore, DenseStore, Row


class Wire(Protocol):
    """The collectives a codec may run (the Exchange routes them through the Communicator)."""

    world_size: int

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place sum over ranks."""
        ...

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """(W * n,): every rank's flat (n,) tensor, in rank order."""
        ...


@dataclass(frozen=True)
class GatherLayout:
    """Where each rank's clients sit in an all_gather: every rank pads its messages to the
    largest per-rank count of the round (known on every rank: the sample and the client
    blocks are pure functions of the config), so chunk r holds rank r's clients first."""

    counts: tuple[int, ...]  # sampled clients per rank, in rank order

    @property
    def slots(self) -> int:
        return max(self.counts)

    def positions(self) -> list[int]:
        """Message slots of the gathered buffer that hold a client, in client-id order."""
        return [rank * self.slots + j for rank, count in enumerate(self.counts) for j in range(count)]


@dataclass(frozen=True)
class RoundInput:
    """This rank's share of one round, sorted by client id."""

    round_idx: int
    updates: torch.Tensor  # (k, P) Delta_i = sent_i - w_g, in the model dtype
    weights: torch.Tensor  # (k,) float64 n_i / N, N the round's weight total (sum 1 over all ranks)
    rows: torch.Tensor  # (k,) this rank's row of each client (per-client state)
    client_ids: torch.Tensor  # (k,) global client ids
    control: torch.Tensor  # the codec's control words, summed over ranks (float64)
    weight_total: float  # N
    layout: GatherLayout


class Codec:
    """Encodes client updates, runs its collectives on a `Wire`, decodes the weighted mean.

    Per-client state (error-feedback residuals, `memory`) is declared rows in the run's
    ClientStore under `codec/` (pfl_dist/store.py; a private one when none is given), which the
    checkpoint re-shards by client id; replicated state (the
    PowerSGD warm-start Q) is identical on every rank. `message` is what the algorithm sends
    (pfl_dist/methods.py INCREMENT or STATE); with `feedback_rule` it decides whether `memory`
    keeps residuals.
    """

    name: ClassVar[str]
    num_control_words: ClassVar[int] = 0
    error_feedback: ClassVar[bool] = False  # a biased compressor that feeds back what it leaves out

    def __init__(self, spec: CodecSpec, *, shapes: Sequence[torch.Size], num_local_clients: int,
                 dtype: torch.dtype, device: torch.device, seed: int, message: str,
                 store: ClientStore | None = None) -> None:
        self.spec = spec
        self.shapes = list(shapes)
        self.num_params = sum(math.prod(s) for s in self.shapes)
        self.num_local_clients = num_local_clients
        self.dtype = dtype
        self.device = device
        self.seed = seed
        self.element_size = torch.empty((), dtype=dtype).element_size()
        self.memory: ErrorFeedback | NoFeedback = (
            ErrorFeedback(num_local_clients, self.num_params, dtype=dtype, device=device, store=store)
            if feedback_rule(error_feedback=self.error_feedback, message=message) else NoFeedback())
        self.setup()

    def setup(self) -> None:
        """Codec-specific set-up from the fields above (parameters, state)."""

    def message_bytes(self) -> int:
        """The exact encoded size of one client's message (indices and scales included)."""
        raise NotImplementedError

    def control_words(self, updates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Float64 words summed over ranks before the payload (e.g. a scale bound)."""
        return torch.zeros(self.num_control_words, dtype=torch.float64, device=updates.device)

    def aggregate(self, round_input: RoundInput, wire: Wire) -> torch.Tensor:
        """(P,) sum_i w_i decode(encode(Delta_i)) over all ranks' clients, in the model dtype."""
        raise NotImplementedError

    def client_state(self) -> dict[str, torch.Tensor]:
        return self.memory.state()

    def replicated_state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_replicated_state(self, state: dict[str, torch.Tensor]) -> None:
        assert not state


def generator(seed: int, *words: int) -> torch.Generator:
    """A CPU generator seeded by (seed, words...): e.g. (seed, round, client), so a client's
    draws do not depend on which rank hosts it."""
    entropy = np.random.SeedSequence([seed, *words]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(entropy[0]) << 32 | int(entropy[1]))


def feedback_rule(*, error_feedback: bool, message: str) -> bool:
    """Whether a client keeps an error-feedback residual: only when its codec compresses with error
    feedback and its message is a fresh increment (pfl_dist/methods.py INCREMENT: FedAvg's reset
    update, SCAFFOLD's y_i - x and c_i+ - c_i). For kept state (STATE: FedCLUP's w_i - w_g) the part
    C leaves out is still in w_i - w_g next round; with a residual as well it would be sent twice
    (with rand-k:0.25 the issue-21 run's w_g ended 220 from the dense run's, ||w_g|| = 3.2)."""
    return error_feedback and message == INCREMENT


class ErrorFeedback:
    """Per-client residuals e_i (Stich et al. 2018, "Sparsified SGD with memory"): a client
    compresses u_i = Delta_i + e_i and keeps e_i <- u_i - C(u_i) for its next turn."""

    keeps: ClassVar[bool] = True
    row_name: ClassVar[str] = "codec_residual"  # its name in checkpoints

    def __init__(self, num_local_clients: int, num_params: int, *, dtype: torch.dtype, device: torch.device,
                 store: ClientStore | None = None) -> None:
        # e_i is a declared row, zeros until the client's first compressed message, held by the
        # run's store (or a private one, for a codec used on its own).
        self.store = store if store is not None else DenseStore(
            num_local_clients, global_model=torch.zeros(num_params, dtype=dtype, device=device))
        self.store.declare("codec", [Row(self.row_name, "zeros", shape=(num_params,), dtype=dtype)])

    def corrected(self, updates: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return updates + self.store.read("codec", rows)[self.row_name]

    def keep(self, rows: torch.Tensor, residual: torch.Tensor) -> None:
        self.store.write("codec", rows, {self.row_name: residual})

    def state(self) -> dict[str, torch.Tensor]:
        return {name: rows.cpu() for name, rows in self.store.rows("codec").items()}



class NoFeedback:
    """No residual: a client compresses Delta_i as it is (codecs without error feedback, and
    messages that are kept state, `feedback_rule`). Nothing per client, nothing checkpointed."""

    keeps: ClassVar[bool] = False  # a codec need not compute what it would feed back

    def corrected(self, updates: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return updates

    def keep(self, rows: torch.Tensor, residual: torch.Tensor) -> None:
        """What C left out is dropped (or, for kept state, still in the client's next Delta_i)."""

    def state(self) -> dict[str, torch.Tensor]:
        return {}
