"""What every codec is made of: a Compressor (the arithmetic) carried by a Transport (the
collectives), with the per-client state the pair keeps.

A `Compressor` encodes a batch of vectors into messages, decodes messages, and knows the exact
size of one message; it owns its replicated state (PowerSGD's Q) and runs no collective. A
`Transport` carries its messages over a `Wire`: an all-reduce when the messages sum (the
compressor is linear in the update: one message of a rank's weighted sum), otherwise an
all_gather of every client's message, decoded in client-id order. The codec's registry entry
(pfl_dist/exchange/spec.py `CODECS`) names both. The `Codec` is what the Exchange holds: the
compressor, its transport and the error-feedback memory; the Exchange hands it the round's
weighted updates and a `Wire` and gets back the decoded weighted mean update, never knowing which
codec it carries.

Error feedback is a property of the (algorithm, codec) pair (`feedback_rule`): the codec's entry
says whether it compresses with error feedback (`CodecEntry.error_feedback`: top-k, rand-k,
PowerSGD), the algorithm says what its message is (`MethodInfo.message`, pfl_dist/methods.py),
and a residual is kept only for a fresh increment. A message that is the difference between kept
state and w_g (FedCLUP's w_i - w_g) still holds next round whatever a codec left out of it this
round: that state is its own memory, and a residual would send the left-out part twice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
import torch

from pfl_dist import plugins
from pfl_dist.errors import ConfigError
from pfl_dist.exchange.spec import ALL_GATHER, ALL_REDUCE, CodecEntry, CodecInfo, CodecSpec, feedback_rule
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


class Compressor:
    """A codec's arithmetic: encode, decode, the exact size of one message, its own state.

    The plan (what is sent for a model of these shapes: k, the packed width, PowerSGD's matrices)
    is fixed in `setup` from the spec, shapes and dtype; `encode`/`decode` are the arithmetic. A
    compressor never runs a collective and keeps no per-client state: it is given a batch of
    vectors and the round, and every draw it makes comes from a generator seeded by (seed, round,
    client) or (seed, round), so any process holding the same vectors derives the same messages
    and the same decoded vectors (a downlink codec calls it on w_g on every rank alike).
    Its `Transport` carries the messages; the `Codec` puts the two and the per-client
    error-feedback memory together.
    """

    num_control_words: ClassVar[int] = 0

    def __init__(self, spec: CodecSpec, *, shapes: Sequence[torch.Size], dtype: torch.dtype,
                 device: torch.device, seed: int) -> None:
        self.spec = spec
        self.shapes = list(shapes)
        self.num_params = sum(math.prod(s) for s in self.shapes)
        self.dtype = dtype
        self.device = device
        self.seed = seed
        self.element_size = torch.empty((), dtype=dtype).element_size()
        self.setup()

    def setup(self) -> None:
        """The plan, from the fields above (parameters, sizes, initial state)."""

    def message_bytes(self) -> int:
        """The exact encoded size of one message (indices and scales included)."""
        raise NotImplementedError

    def control_words(self, updates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Float64 words summed over ranks before the payload (e.g. a scale bound)."""
        return torch.zeros(self.num_control_words, dtype=torch.float64, device=updates.device)

    def encode(self, vectors: torch.Tensor, *, round_idx: int, clients: torch.Tensor,
               weights: torch.Tensor | None = None, control: torch.Tensor | None = None) -> torch.Tensor:
        """(k, P) vectors -> (k, ...) messages, row i the message of weights[i] * vectors[i]
        (weights None: 1). `clients` (k,) names each row's random stream. `control` is the round's
        control words per unit weight (summed over ranks, divided by the weight total N; for vectors
        of one's own: `control_words(vectors, weights)`); a compressor with control words (fp16's
        scale) needs the same ones to decode, as every receiver of the round's lane holds them."""
        raise NotImplementedError

    def decode(self, messages: torch.Tensor, *, round_idx: int, control: torch.Tensor | None = None) -> torch.Tensor:
        """(n, ...) messages -> (n, P) float64 decoded vectors."""
        raise NotImplementedError

    def residual(self, corrected: torch.Tensor, *, round_idx: int, messages: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """(k, P) what each client's message left out of its `corrected` update (error feedback),
        given this rank's encoded `messages` (a gathering compressor) or the round just reduced
        (a summing one); only a compressor whose entry has `error_feedback` is asked."""
        raise NotImplementedError

    def replicated_state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_replicated_state(self, state: dict[str, torch.Tensor]) -> None:
        assert not state


class SummingCompressor(Compressor):
    """A compressor whose messages sum (spec `ALL_REDUCE`): the message of sum_i w_i v_i is the sum
    of the clients' messages, so a rank encodes its clients' weighted sum once and the ring adds
    the ranks' messages (up to the rounding of the message's dtype: fp16/bf16)."""

    def encode_sum(self, vectors: torch.Tensor, *, weights: torch.Tensor, round_idx: int,
                   control: torch.Tensor | None) -> torch.Tensor:
        """(k, P) -> the one message of sum_i weights[i] vectors[i], in the dtype the wire sums."""
        raise NotImplementedError

    def encode(self, vectors: torch.Tensor, *, round_idx: int, clients: torch.Tensor,
               weights: torch.Tensor | None = None, control: torch.Tensor | None = None) -> torch.Tensor:
        ones = torch.ones(len(vectors), dtype=torch.float64, device=vectors.device)
        weights = ones if weights is None else weights
        return torch.stack([self.encode_sum(vectors[i: i + 1], weights=weights[i: i + 1], round_idx=round_idx,
                                            control=control) for i in range(len(vectors))]) \
            if len(vectors) else torch.zeros(0, self.num_params, dtype=self.dtype, device=self.device)

    def reduce(self, corrected: torch.Tensor, round_input: RoundInput, wire: Wire) -> torch.Tensor:
        """(P,) sum over all ranks' clients of w_i decode(encode(u_i)), float64: one all-reduce of
        this rank's `encode_sum`. A compressor whose sum takes several linear steps (PowerSGD)
        overrides this."""
        control = round_input.control / round_input.weight_total  # per unit weight, as `encode` takes it
        message = self.encode_sum(corrected, weights=round_input.weights, round_idx=round_input.round_idx,
                                  control=control)
        return self.decode(wire.all_reduce(message)[None], round_idx=round_input.round_idx, control=control)[0]


class GatherCompressor(Compressor):
    """A compressor whose messages do not sum (spec `ALL_GATHER`): per-client scales or indices.
    Messages are (k, message_bytes) uint8 rows, exactly the bytes a client sends."""

    def decode_sum(self, messages: torch.Tensor, *, round_idx: int) -> torch.Tensor:
        """(n, message_bytes) -> (P,) float64: the decoded messages added one after another (client-id
        order), so the result is the same bits for every world size."""
        return sum_in_order(self.decode(messages, round_idx=round_idx))


def sum_in_order(rows: torch.Tensor) -> torch.Tensor:
    """Rows added one after another (client-id order), so the float64 result is the same bits for
    every world size and thread count."""
    total = torch.zeros(rows.shape[1], dtype=torch.float64, device=rows.device)
    for row in rows:
        total += row
    return total


def gather_messages(messages: torch.Tensor, wire: Wire, *, slots: int) -> torch.Tensor:
    """One all_gather of this rank's (k, size) messages, padded to `slots` rows -> (W * slots, size)."""
    chunk = torch.zeros(slots, messages.shape[1], dtype=torch.uint8, device=messages.device)
    chunk[: len(messages)] = messages
    return wire.all_gather(chunk.reshape(-1)).view(-1, messages.shape[1])


class Transport(Protocol):
    def aggregate(self, compressor: Compressor, memory: ErrorFeedback | NoFeedback, round_input: RoundInput,
                  wire: Wire) -> torch.Tensor:
        """(P,) sum_i w_i decode(encode(u_i)) over all ranks' clients (float64), u_i = Delta_i + e_i;
        keeps each client's new residual in `memory` where it keeps one."""
        ...


class AllReduceTransport:
    """Messages that sum: one rank message (its clients' weighted sum) per linear step, all-reduced."""

    def aggregate(self, compressor: Compressor, memory: ErrorFeedback | NoFeedback, round_input: RoundInput,
                  wire: Wire) -> torch.Tensor:
        assert isinstance(compressor, SummingCompressor), type(compressor)
        corrected = memory.corrected(round_input.updates, round_input.rows)
        total = compressor.reduce(corrected, round_input, wire)
        if len(corrected) and memory.keeps:
            memory.keep(round_input.rows, compressor.residual(corrected, round_idx=round_input.round_idx))
        return total


class AllGatherTransport:
    """Every client's message as encoded, by one all_gather, decoded on every rank in client-id
    order (`GatherLayout`): the result does not depend on the world size at all."""

    def aggregate(self, compressor: Compressor, memory: ErrorFeedback | NoFeedback, round_input: RoundInput,
                  wire: Wire) -> torch.Tensor:
        assert isinstance(compressor, GatherCompressor), type(compressor)
        corrected = memory.corrected(round_input.updates, round_input.rows)
        messages = compressor.encode(corrected, round_idx=round_input.round_idx, clients=round_input.client_ids,
                                     weights=round_input.weights, control=round_input.control)
        gathered = gather_messages(messages, wire, slots=round_input.layout.slots)[round_input.layout.positions()]
        total = compressor.decode_sum(gathered, round_idx=round_input.round_idx)
        if len(corrected) and memory.keeps:
            memory.keep(round_input.rows, compressor.residual(corrected, round_idx=round_input.round_idx,
                                                                        messages=messages))
        return total


TRANSPORTS: dict[str, Transport] = {ALL_REDUCE: AllReduceTransport(), ALL_GATHER: AllGatherTransport()}


def compressor_class(entry: CodecEntry, *, key: str = "comm.codec") -> type[Compressor]:
    """The entry's Compressor class, imported through pfl_dist/plugins.py (built-ins and plug-ins
    alike); errors name `key` (comm.codec or comm.downlink_codec)."""
    cls = plugins.load(plugins.parse(entry.compressor, key=key), key=key)
    expected = SummingCompressor if entry.transport == ALL_REDUCE else GatherCompressor
    if not (isinstance(cls, type) and issubclass(cls, expected)):
        raise ConfigError(f"{key}={entry.name}: {entry.compressor} is not a {expected.__name__} "
                          f"(pfl_dist/exchange/base.py), which its transport {entry.transport} needs")
    declared = getattr(cls, "codec", None)
    if entry.compressor == entry.name and declared != CodecInfo(entry.transport, entry.error_feedback):
        # a plug-in: what was read from its source must be what the class holds once imported
        raise ConfigError(f"{key}={entry.name}: its imported codec declaration {declared!r} is not the one "
                          f"read from its source ({entry.transport}, error_feedback={entry.error_feedback})")
    return cls


class Codec:
    """A compressor carried by its transport, with the per-client error-feedback memory its
    (algorithm, codec) pair keeps: what the Exchange holds. It hands the Codec the round's
    weighted updates and a `Wire`, and gets back the decoded weighted mean update.

    Per-client state (error-feedback residuals, `memory`) is declared rows in the run's
    ClientStore under `codec/` (pfl_dist/store.py; a private one when none is given), which the
    checkpoint re-shards by client id; replicated state (the PowerSGD warm-start Q) is the
    compressor's, identical on every rank. `message` is what the algorithm sends
    (pfl_dist/methods.py INCREMENT or STATE); with `feedback_rule` it decides whether `memory`
    keeps residuals.
    """

    def __init__(self, spec: CodecSpec, *, shapes: Sequence[torch.Size], num_local_clients: int,
                 dtype: torch.dtype, device: torch.device, seed: int, message: str,
                 store: ClientStore | None = None) -> None:
        self.spec = spec
        entry = spec.entry
        self.compressor = compressor_class(entry)(spec, shapes=shapes, dtype=dtype, device=device, seed=seed)
        self.transport = TRANSPORTS[entry.transport]
        self.dtype = dtype
        num_params = self.compressor.num_params
        self.memory: ErrorFeedback | NoFeedback = (
            ErrorFeedback(num_local_clients, num_params, dtype=dtype, device=device, store=store)
            if feedback_rule(error_feedback=entry.error_feedback, message=message) else NoFeedback())

    def message_bytes(self) -> int:
        """The exact encoded size of one client's message (indices and scales included)."""
        return self.compressor.message_bytes()

    def control_words(self, updates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        return self.compressor.control_words(updates, counts)

    def aggregate(self, round_input: RoundInput, wire: Wire) -> torch.Tensor:
        """(P,) sum_i w_i decode(encode(Delta_i)) over all ranks' clients, in the model dtype."""
        return self.transport.aggregate(self.compressor, self.memory, round_input, wire).to(self.dtype)

    def client_state(self) -> dict[str, torch.Tensor]:
        return self.memory.state()

    def replicated_state(self) -> dict[str, torch.Tensor]:
        return self.compressor.replicated_state()

    def load_replicated_state(self, state: dict[str, torch.Tensor]) -> None:
        self.compressor.load_replicated_state(state)


def generator(seed: int, *words: int) -> torch.Generator:
    """A CPU generator seeded by (seed, words...): e.g. (seed, round, client), so a client's
    draws do not depend on which rank hosts it."""
    entropy = np.random.SeedSequence([seed, *words]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(entropy[0]) << 32 | int(entropy[1]))


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
