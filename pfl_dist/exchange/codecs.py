"""The compressors carried by one all-reduce or one all-gather: fp16/bf16, QSGD, top-k, rand-k.

Each is a `Compressor` (pfl_dist/exchange/base.py): encode a batch of vectors, decode messages,
the exact bytes of one message. Compressors that are linear in the update (half precision,
rand-k: `SummingCompressor`) have messages that sum, so the all-reduce transport sends one
message of a rank's weighted sum; compressors whose messages carry per-client scales or indices
(QSGD, top-k: `GatherCompressor`) have every client's exact message sent by all_gather and decoded
in client-id order, so their result does not depend on the world size at all.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from pfl_dist.exchange.base import GatherCompressor, SummingCompressor, generator

_RANDK_STREAM = 0x52_4B  # separates the rand-k coordinate draws from other seeded streams
_QSGD_STREAM = 0x51_53


def _unit_weights(vectors: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    return torch.ones(len(vectors), dtype=torch.float64) if weights is None else weights.double()


class HalfPrecision(SummingCompressor):
    """fp16 / bf16: the all-reduce runs in half precision (torch's `fp16_compress_hook`).

    Scaling, so no sum can overflow for any number of clients: every partial sum of the ring is
    bounded by B = sum_i w_i max|Delta_i| (a control word, summed over ranks before the payload),
    and the payload is multiplied by the power of two 2^e with 2^e B <= max/2 of the dtype (exact,
    and it also lifts small updates out of fp16's subnormal range). A message is the P half values;
    the scale comes from the control word every receiver holds (the round's float64 lane), so
    decoding needs the same `control` as encoding.
    """

    num_control_words = 1
    half: ClassVar[torch.dtype] = torch.float16

    def message_bytes(self) -> int:
        return self.num_params * torch.empty((), dtype=self.half).element_size()

    def control_words(self, updates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """[sum_i counts_i max|Delta_i|]: with counts n_i, divided by N it is B."""
        if not len(updates):
            return torch.zeros(1, dtype=torch.float64)
        return (counts.double() @ updates.abs().amax(dim=1).double()).reshape(1)

    def scale(self, bound: float) -> float:
        """The power of two 2^e with 2^e * bound <= max/2 of the half dtype (1 for bound 0)."""
        if bound <= 0 or not math.isfinite(bound):
            return 1.0
        return 2.0 ** math.floor(math.log2(torch.finfo(self.half).max / 2 / bound))

    def _scale(self, control: torch.Tensor | None) -> float:
        if control is None:
            raise ValueError(f"{self.spec}: encode and decode need the round's control word (control_words)")
        return self.scale(float(control[0]))

    def encode_sum(self, vectors: torch.Tensor, *, weights: torch.Tensor, round_idx: int,
                   control: torch.Tensor | None) -> torch.Tensor:
        return ((weights @ vectors.double()) * self._scale(control)).to(self.half)

    def decode(self, messages: torch.Tensor, *, round_idx: int, control: torch.Tensor | None = None) -> torch.Tensor:
        return messages.double() / self._scale(control)


class BFloat16(HalfPrecision):
    half = torch.bfloat16


class QSGD(GatherCompressor):
    """QSGD as in the paper (Alistarh, Grubic, Li, Tomioka, Vojnovic, "QSGD: Communication-Efficient
    SGD via Gradient Quantization and Encoding", NeurIPS 2017), `qsgd:s:d`.

    The update is cut into buckets of d consecutive coordinates (the last one shorter), and each
    bucket b is quantized with its own norm: v_j -> ||v_b||_2 sign(v_j) xi_j / s with xi_j in
    {0..s} and level floor(r) + 1 with probability r - floor(r), r = s |v_j| / ||v_b||_2, so
    E[xi_j / s] = |v_j| / ||v_b|| (unbiased). The variance bound of the paper's Lemma 3.1,
    E||Q(v) - v||^2 <= min(n/s^2, sqrt(n)/s) ||v||^2, then holds per bucket with n = d: one norm
    for a whole update (d >= P, the quantizer before issue 25) has n = P, which on a model of
    millions of coordinates is a bound tens of times larger. The default d = 512 is the bucket
    size of the paper's experiments.

    Encoding (the exact bytes of one message, `message_bytes`):

        ceil(P / d) x element size   the bucket scales w_i ||v_b||_2, one model-dtype word each
      + ceil(P x b / 8)              the signed levels xi_j sign(v_j) + s in 0..2s, b bits each,
                                     b = ceil(log2(2s + 1)), as one little-endian bit stream

    (b = 2 for s = 1, 3 for s = 2 or 3, 4 for s = 4..7, 8 for s = 64..127.) The paper's Elias
    coding of the levels would save more at small s on sparse updates; a fixed width keeps the
    size a function of (P, s, d) alone, which the ledger needs before the round.

    Transport: all_gather of every client's message. The shared-scale all-reduce variant would
    need a scale common to all clients (one more collective for the max norm, and a client with a
    small update then quantizes with the largest norm's step: its variance grows by
    (max norm / own norm)^2), and its integer sums need a wider integer type on the wire than the
    levels themselves (10,000 clients x 127 overflows int8 and int16), which undoes the
    compression. The all_gather sends each message exactly as encoded, so the ledger's uplink is
    the bytes on the wire, and decoding in client-id order makes the result world-size free.
    """

    def setup(self) -> None:
        levels, bucket = self.spec.params
        self.levels, self.bucket = int(levels), int(bucket)
        self.bits = symbol_bits(self.levels)
        self.num_buckets = math.ceil(self.num_params / self.bucket)
        self.packed_bytes = math.ceil(self.num_params * self.bits / 8)

    def message_bytes(self) -> int:
        return self.num_buckets * self.element_size + self.packed_bytes

    def encode(self, vectors: torch.Tensor, *, round_idx: int, clients: torch.Tensor,
               weights: torch.Tensor | None = None, control: torch.Tensor | None = None) -> torch.Tensor:
        """(k, P) updates -> (k, message_bytes) uint8: the bucket scales w_i ||v_b|| (model dtype) and
        the packed levels, each client's draws from its (seed, round, client) generator."""
        uniforms = torch.stack([torch.rand(self.num_params, dtype=torch.float64,
                                           generator=generator(self.seed, _QSGD_STREAM, round_idx, int(client)))
                                for client in clients]) if len(clients) else torch.zeros(0, self.num_params)
        norms, signed = quantize_rows(vectors, levels=self.levels, uniforms=uniforms, bucket=self.bucket)
        scales = (norms * _unit_weights(vectors, weights).cpu()[:, None]).to(self.dtype)
        packed = pack_bits(signed + self.levels, bits=self.bits)
        scale_bytes = scales.contiguous().view(torch.uint8).view(len(scales), self.num_buckets * self.element_size)
        return torch.cat([scale_bytes, packed], dim=1).to(self.device)

    def decode(self, messages: torch.Tensor, *, round_idx: int, control: torch.Tensor | None = None) -> torch.Tensor:
        """(n, message_bytes) -> (n, P) float64: each coordinate's bucket scale * level / s."""
        messages = messages.cpu()
        split = self.num_buckets * self.element_size
        scales = bytes_as(messages[:, :split], self.dtype).double()
        symbols = unpack_bits(messages[:, split:], bits=self.bits, count=self.num_params)
        per_coordinate = scales.repeat_interleave(self.bucket, dim=1)[:, : self.num_params]
        return ((symbols.double() - self.levels) * (per_coordinate / self.levels)).to(self.device)


def symbol_bits(levels: int) -> int:
    """b = ceil(log2(2s + 1)): the bits of one signed level in 0..2s."""
    return (2 * levels).bit_length()


def quantize_rows(v: torch.Tensor, *, levels: int, uniforms: torch.Tensor, bucket: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows v_i -> ((k, buckets) bucket norms ||v_ib||_2, (k, P) signed levels in -s..s as int16)
    with level floor(r) + 1 when u < r - floor(r), r = s |v_ij| / ||v_ib||: E[norm * level / s] = v.
    bucket None: one bucket per row."""
    v = v.detach().double().cpu()
    k, count = v.shape
    width = count if bucket is None else min(bucket, max(count, 1))
    num_buckets = math.ceil(count / width) if count else 0
    padded = torch.zeros(k, num_buckets * width, dtype=torch.float64)
    padded[:, :count] = v
    norms = torch.linalg.vector_norm(padded.view(k, num_buckets, width), dim=2)
    divisor = torch.where(norms > 0, norms, 1.0).repeat_interleave(width, dim=1)[:, :count]
    ratio = v.abs() / divisor * levels
    lower = ratio.floor()
    level = (lower + (uniforms < ratio - lower).double()).clamp(max=levels)
    return norms, (torch.sign(v) * level).to(torch.int16)


def qsgd_quantize(v: torch.Tensor, *, levels: int, generator: torch.Generator) -> tuple[float, torch.Tensor]:
    """One vector, one bucket: (||v||_2, signed levels) with E[||v|| * levels / s] = v."""
    uniforms = torch.rand(v.shape, generator=generator, dtype=torch.float64)
    norms, signed = quantize_rows(v.reshape(1, -1), levels=levels, uniforms=uniforms.reshape(1, -1))
    return float(norms[0, 0]), signed[0]


_BIT_WEIGHTS = 1 << torch.arange(8, dtype=torch.int32)  # a byte's bits, least significant first


def pack_bits(symbols: torch.Tensor, *, bits: int) -> torch.Tensor:
    """(k, P) symbols in 0..2^bits-1 -> (k, ceil(P bits / 8)) bytes: each symbol's `bits` bits,
    least significant first, one stream per row (the last byte zero-padded). A width dividing 8
    puts 8 / bits whole symbols in each byte (vectorized); another width is streamed one row at a
    time, so the bit stream of a large model is never held for all clients at once."""
    k, count = symbols.shape
    if 8 % bits == 0:
        per_byte = 8 // bits
        padded = torch.zeros(k, math.ceil(count / per_byte) * per_byte, dtype=torch.int32)
        padded[:, :count] = symbols.cpu()
        shifts = torch.arange(per_byte, dtype=torch.int32) * bits
        return (padded.view(k, padded.shape[1] // per_byte, per_byte) << shifts).sum(dim=2).to(torch.uint8)
    num_bytes = math.ceil(count * bits / 8)
    shifts = torch.arange(bits, dtype=torch.int32)
    out = torch.zeros(k, num_bytes, dtype=torch.uint8)
    for i, row in enumerate(symbols.cpu().to(torch.int32)):
        stream = torch.zeros(num_bytes * 8, dtype=torch.int32)
        stream[: count * bits] = ((row[:, None] >> shifts) & 1).reshape(-1)
        out[i] = (stream.view(num_bytes, 8) * _BIT_WEIGHTS).sum(dim=1).to(torch.uint8)
    return out


def unpack_bits(packed: torch.Tensor, *, bits: int, count: int) -> torch.Tensor:
    """The inverse of `pack_bits`: (k, bytes) -> (k, count) int32 symbols."""
    if 8 % bits == 0:
        per_byte = 8 // bits
        shifts = torch.arange(per_byte, dtype=torch.int32) * bits
        symbols = (packed.cpu().to(torch.int32)[:, :, None] >> shifts) & (2**bits - 1)
        return symbols.reshape(len(packed), packed.shape[1] * per_byte)[:, :count]
    shifts = torch.arange(bits, dtype=torch.int32)
    out = torch.zeros(len(packed), count, dtype=torch.int32)
    for i, row in enumerate(packed.cpu().to(torch.int32)):
        stream = ((row[:, None] >> torch.arange(8, dtype=torch.int32)) & 1).reshape(-1)[: count * bits]
        out[i] = (stream.view(count, bits) << shifts).sum(dim=1)
    return out


def bytes_as(columns: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(n, b) uint8 columns of messages -> (n, b / element size) values of `dtype`."""
    width = columns.shape[1] // torch.empty((), dtype=dtype).element_size()
    return columns.reshape(-1).view(dtype).reshape(len(columns), width)


def num_kept(fraction: float, num_params: int) -> int:
    """k = round(fraction * P), at least 1."""
    return max(1, min(num_params, round(fraction * num_params)))


class TopK(GatherCompressor):
    """Top-k sparsification with error feedback (Stich et al. 2018): a client sends the k
    largest |u_j| of u = Delta + e with their int32 indices, and keeps e <- u - sent (e = 0 when
    the message is kept state: `feedback_rule`). Messages travel by all_gather (each client's
    indices differ)."""

    def setup(self) -> None:
        self.k = num_kept(float(self.spec.param or 1), self.num_params)

    def message_bytes(self) -> int:
        return self.k * (self.element_size + 4)

    def encode(self, vectors: torch.Tensor, *, round_idx: int, clients: torch.Tensor,
               weights: torch.Tensor | None = None, control: torch.Tensor | None = None) -> torch.Tensor:
        """(k, P) -> (k, message_bytes) uint8: the k values w_i u_j (model dtype), then their int32
        indices, ascending."""
        indices, values, _ = top_k_rows(vectors, self.k)
        weighted = (values.double() * _unit_weights(vectors, weights)[:, None].to(values.device)).to(self.dtype)
        num_clients = len(vectors)
        return torch.cat([weighted.view(torch.uint8).view(num_clients, self.k * self.element_size),
                          indices.to(torch.int32).view(torch.uint8).view(num_clients, self.k * 4)], dim=1)

    def _split(self, messages: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        split = self.k * self.element_size
        return bytes_as(messages[:, split:], torch.int32).long(), bytes_as(messages[:, :split], self.dtype).double()

    def decode(self, messages: torch.Tensor, *, round_idx: int, control: torch.Tensor | None = None) -> torch.Tensor:
        indices, values = self._split(messages)
        dense = torch.zeros(len(messages), self.num_params, dtype=torch.float64, device=messages.device)
        return dense.scatter_(1, indices, values)

    def decode_sum(self, messages: torch.Tensor, *, round_idx: int) -> torch.Tensor:
        """Each message's k values added at its indices, in client-id order (no dense rows)."""
        total = torch.zeros(self.num_params, dtype=torch.float64, device=self.device)
        for row_indices, row_values in zip(*self._split(messages), strict=True):
            total.index_add_(0, row_indices, row_values)
        return total

    def residual(self, corrected: torch.Tensor, *, round_idx: int, messages: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """u with the sent coordinates zeroed: residual + sent is u exactly."""
        assert messages is not None
        return corrected.clone().scatter_(1, self._split(messages)[0].to(corrected.device), 0)


def top_k_rows(u: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: (indices of the k largest |u_j|, ascending; u at them; u with them zeroed).
    residual + sent is u exactly: each coordinate is in exactly one of the two, unchanged."""
    indices = torch.topk(u.abs(), k, dim=1, sorted=False).indices.sort(dim=1).values
    residual = u.clone()
    residual.scatter_(1, indices, 0)
    return indices, u.gather(1, indices), residual


def top_k(u: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One vector's (indices, values, residual), as `top_k_rows`."""
    indices, values, residual = top_k_rows(u.reshape(1, -1), k)
    return indices[0], values[0], residual[0]


class RandK(SummingCompressor):
    """Rand-k with error feedback (Stich et al. 2018): every client sends its corrected update
    u = Delta + e at the same k coordinates, drawn from (seed, round), so no indices travel and
    the messages (k values each) sum; e <- u with those coordinates zeroed (e = 0 when the message
    is kept state: `feedback_rule`)."""

    def setup(self) -> None:
        self.k = num_kept(float(self.spec.param or 1), self.num_params)
        self._drawn: tuple[int, torch.Tensor] | None = None  # (round, its coordinates)

    def message_bytes(self) -> int:
        return self.k * self.element_size

    def coordinates(self, round_idx: int) -> torch.Tensor:
        """The round's k coordinates, ascending: the same on every rank and for every client."""
        if self._drawn is None or self._drawn[0] != round_idx:
            chosen = torch.randperm(self.num_params, generator=generator(self.seed, _RANDK_STREAM, round_idx))[: self.k]
            self._drawn = (round_idx, chosen.sort().values.to(self.device))
        return self._drawn[1]

    def encode_sum(self, vectors: torch.Tensor, *, weights: torch.Tensor, round_idx: int,
                   control: torch.Tensor | None) -> torch.Tensor:
        return (weights @ vectors[:, self.coordinates(round_idx)].double()).to(self.dtype)

    def decode(self, messages: torch.Tensor, *, round_idx: int, control: torch.Tensor | None = None) -> torch.Tensor:
        dense = torch.zeros(len(messages), self.num_params, dtype=torch.float64, device=messages.device)
        dense[:, self.coordinates(round_idx)] = messages.double()
        return dense

    def residual(self, corrected: torch.Tensor, *, round_idx: int, messages: torch.Tensor | None = None
                 ) -> torch.Tensor:
        residual = corrected.clone()
        residual[:, self.coordinates(round_idx)] = 0
        return residual
