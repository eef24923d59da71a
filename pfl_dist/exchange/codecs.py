"""Update codecs over one all-reduce or one all-gather: fp16/bf16, QSGD, top-k, rand-k.

Each codec's `aggregate` returns sum_i w_i decode(encode(Delta_i)) with w_i = n_i / N. Codecs
that are linear in the update (half precision, rand-k) encode the rank's weighted sum and
all-reduce it; codecs whose messages carry per-client scales or indices (QSGD, top-k) send
every client's exact message by all_gather and decode them in client-id order, so their
result does not depend on the world size at all.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from pfl_dist.exchange.base import Codec, ErrorFeedback, RoundInput, Wire, generator

_RANDK_STREAM = 0x52_4B  # separates the rand-k coordinate draws from other seeded streams
_QSGD_STREAM = 0x51_53


class HalfPrecision(Codec):
    """fp16 / bf16: the all-reduce runs in half precision (torch's `fp16_compress_hook`).

    Scaling, so no sum can overflow for any number of clients: every partial sum of the ring is
    bounded by B = sum_i w_i max|Delta_i| (a control word, summed over ranks before the payload),
    and the payload is multiplied by the power of two 2^e with 2^e B <= max/2 of the dtype (exact,
    and it also lifts small updates out of fp16's subnormal range).
    """

    name = "fp16"
    num_control_words = 1
    half: ClassVar[torch.dtype] = torch.float16

    def message_bytes(self) -> int:
        return self.num_params * torch.empty((), dtype=self.half).element_size()

    def control_words(self, updates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        if not len(updates):
            return torch.zeros(1, dtype=torch.float64)
        return (counts.double() @ updates.abs().amax(dim=1).double()).reshape(1)

    def scale(self, bound: float) -> float:
        """The power of two 2^e with 2^e * bound <= max/2 of the half dtype (1 for bound 0)."""
        if bound <= 0 or not math.isfinite(bound):
            return 1.0
        return 2.0 ** math.floor(math.log2(torch.finfo(self.half).max / 2 / bound))

    def aggregate(self, round_input: RoundInput, wire: Wire) -> torch.Tensor:
        scale = self.scale(float(round_input.control[0]) / round_input.weight_total)
        partial = (round_input.weights @ round_input.updates.double()) * scale
        payload = wire.all_reduce(partial.to(self.half))
        return (payload.double() / scale).to(self.dtype)


class BFloat16(HalfPrecision):
    name = "bf16"
    half = torch.bfloat16


class QSGD(Codec):
    """Alistarh et al. 2017: v -> ||v||_2 sign(v_j) xi_j / s with xi_j in {0..s} drawn so that
    E[xi_j] = s |v_j| / ||v||_2 (unbiased). A message is the scale w_i ||v||_2 (one model-dtype
    word) and the signed levels packed into 2, 4 or 8 bits each.

    Transport: all_gather of every client's message. The shared-scale all-reduce variant would
    need a scale common to all clients (one more collective for the max norm, and a client with a
    small update then quantizes with the largest norm's step: its variance grows by
    (max norm / own norm)^2), and its integer sums need a wider integer type on the wire than the
    levels themselves (10,000 clients x 127 overflows int8 and int16), which undoes the
    compression. The all_gather sends each message exactly as encoded, so the ledger's uplink is
    the bytes on the wire, and decoding in client-id order makes the result world-size free.
    """

    name = "qsgd"

    def setup(self) -> None:
        self.levels = int(self.spec.param or 1)
        self.bits = next(b for b in (2, 4, 8) if 2 * self.levels + 1 <= 2**b)
        self.packed_bytes = math.ceil(self.num_params * self.bits / 8)

    def message_bytes(self) -> int:
        return self.element_size + self.packed_bytes

    def aggregate(self, round_input: RoundInput, wire: Wire) -> torch.Tensor:
        messages = [self.encode(update, weight=float(weight), round_idx=round_input.round_idx, client=int(client))
                    for update, weight, client in zip(round_input.updates, round_input.weights,
                                                      round_input.client_ids, strict=True)]
        gathered = gather_messages(messages, wire, slots=round_input.layout.slots, size=self.message_bytes())
        total = torch.zeros(self.num_params, dtype=torch.float64, device=self.device)
        for position in round_input.layout.positions():
            total += self.decode(gathered[position])
        return total.to(self.dtype)

    def encode(self, update: torch.Tensor, *, weight: float, round_idx: int, client: int) -> torch.Tensor:
        scale, signed = qsgd_quantize(update, levels=self.levels,
                                      generator=generator(self.seed, _QSGD_STREAM, round_idx, client))
        scale_word = torch.tensor([scale * weight], dtype=self.dtype)
        packed = pack_bits((signed + self.levels).to(torch.uint8), bits=self.bits)
        return torch.cat([scale_word.view(torch.uint8), packed]).to(self.device)

    def decode(self, message: torch.Tensor) -> torch.Tensor:
        scale = float(message[: self.element_size].cpu().clone().view(self.dtype)[0])
        symbols = unpack_bits(message[self.element_size:].cpu(), bits=self.bits, count=self.num_params)
        return ((symbols.double() - self.levels) * (scale / self.levels)).to(self.device)


def qsgd_quantize(v: torch.Tensor, *, levels: int, generator: torch.Generator) -> tuple[float, torch.Tensor]:
    """(||v||_2, signed levels in -s..s) with E[scale * levels / s] = v."""
    v = v.detach().double().cpu()
    norm = float(torch.linalg.vector_norm(v))
    if norm == 0:
        return 0.0, torch.zeros(v.shape, dtype=torch.int16)
    ratio = v.abs() / norm * levels
    lower = ratio.floor()
    up = torch.rand(v.shape, generator=generator, dtype=torch.float64) < ratio - lower
    level = (lower + up.double()).clamp(max=levels)
    return norm, (torch.sign(v) * level).to(torch.int16)


def pack_bits(symbols: torch.Tensor, *, bits: int) -> torch.Tensor:
    """uint8 symbols < 2^bits -> bytes holding 8/bits symbols each (the last one zero-padded)."""
    per_byte = 8 // bits
    padded = torch.zeros(math.ceil(len(symbols) / per_byte) * per_byte, dtype=torch.uint8)
    padded[: len(symbols)] = symbols.cpu()
    groups = padded.view(-1, per_byte).to(torch.int32)
    shifts = torch.arange(per_byte, dtype=torch.int32) * bits
    return (groups << shifts).sum(dim=1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, *, bits: int, count: int) -> torch.Tensor:
    per_byte = 8 // bits
    shifts = torch.arange(per_byte, dtype=torch.int32) * bits
    symbols = (packed.to(torch.int32)[:, None] >> shifts) & (2**bits - 1)
    return symbols.reshape(-1)[:count].to(torch.uint8)


def gather_messages(messages: list[torch.Tensor], wire: Wire, *, slots: int, size: int) -> torch.Tensor:
    """One all_gather of this rank's messages, padded to `slots` -> (W * slots, size) uint8."""
    chunk = torch.zeros(slots, size, dtype=torch.uint8, device=messages[0].device if messages else "cpu")
    for j, message in enumerate(messages):
        chunk[j] = message
    return wire.all_gather(chunk.reshape(-1)).view(-1, size)


def num_kept(fraction: float, num_params: int) -> int:
    """k = round(fraction * P), at least 1."""
    return max(1, min(num_params, round(fraction * num_params)))


class TopK(Codec):
    """Top-k sparsification with error feedback (Stich et al. 2018): a client sends the k
    largest |u_j| of u = Delta + e with their int32 indices, and keeps e <- u - sent. Messages
    travel by all_gather (each client's indices differ)."""

    name = "topk"

    def setup(self) -> None:
        self.k = num_kept(float(self.spec.param or 1), self.num_params)
        self.memory = ErrorFeedback(self.num_local_clients, self.num_params, dtype=self.dtype, device=self.device)

    def message_bytes(self) -> int:
        return self.k * (self.element_size + 4)

    def aggregate(self, round_input: RoundInput, wire: Wire) -> torch.Tensor:
        corrected = self.memory.corrected(round_input.updates, round_input.rows)
        messages, residuals = [], []
        for u, weight in zip(corrected, round_input.weights, strict=True):
            indices, values, residual = top_k(u, self.k)
            weighted = (values.double() * float(weight)).to(self.dtype)
            messages.append(torch.cat([weighted.view(torch.uint8), indices.to(torch.int32).view(torch.uint8)]))
            residuals.append(residual)
        gathered = gather_messages(messages, wire, slots=round_input.layout.slots, size=self.message_bytes())
        total = torch.zeros(self.num_params, dtype=torch.float64, device=self.device)
        split = self.k * self.element_size
        for position in round_input.layout.positions():
            message = gathered[position]
            values = message[:split].clone().view(self.dtype).double()
            indices = message[split:].clone().view(torch.int32).long()
            total.index_add_(0, indices, values)
        if residuals:
            self.memory.keep(round_input.rows, torch.stack(residuals))
        return total.to(self.dtype)

    def client_state(self) -> dict[str, torch.Tensor]:
        return self.memory.state()

    def load_client_state(self, state: dict[str, torch.Tensor]) -> None:
        self.memory.load(state)


def top_k(u: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(indices of the k largest |u_j| ascending, u at them, u with them zeroed): residual + sent
    is u exactly (each coordinate is in exactly one of the two, unchanged)."""
    indices = torch.topk(u.abs(), k, sorted=False).indices.sort().values
    residual = u.clone()
    residual[indices] = 0
    return indices, u[indices], residual


class RandK(Codec):
    """Rand-k with error feedback (Stich et al. 2018): every client sends its corrected update
    u = Delta + e at the same k coordinates, drawn from (seed, round), so no indices travel and
    the k values are all-reduced; e <- u with those coordinates zeroed."""

    name = "randk"

    def setup(self) -> None:
        self.k = num_kept(float(self.spec.param or 1), self.num_params)
        self.memory = ErrorFeedback(self.num_local_clients, self.num_params, dtype=self.dtype, device=self.device)

    def message_bytes(self) -> int:
        return self.k * self.element_size

    def coordinates(self, round_idx: int) -> torch.Tensor:
        chosen = torch.randperm(self.num_params, generator=generator(self.seed, _RANDK_STREAM, round_idx))[: self.k]
        return chosen.sort().values.to(self.device)

    def aggregate(self, round_input: RoundInput, wire: Wire) -> torch.Tensor:
        chosen = self.coordinates(round_input.round_idx)
        corrected = self.memory.corrected(round_input.updates, round_input.rows)
        partial = (round_input.weights @ corrected[:, chosen].double()).to(self.dtype)
        reduced = wire.all_reduce(partial)
        if len(corrected):
            residual = corrected.clone()
            residual[:, chosen] = 0
            self.memory.keep(round_input.rows, residual)
        total = torch.zeros(self.num_params, dtype=self.dtype, device=self.device)
        total[chosen] = reduced
        return total

    def client_state(self) -> dict[str, torch.Tensor]:
        return self.memory.state()

    def load_client_state(self, state: dict[str, torch.Tensor]) -> None:
        self.memory.load(state)
