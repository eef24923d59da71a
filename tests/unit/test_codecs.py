"""Each codec against an independent reference written from its paper (plain torch, float64,
one client at a time). Several ranks are simulated by threads sharing an in-memory wire."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch

from pfl_dist.config import load_config
from pfl_dist.errors import ConfigError
from pfl_dist.exchange.base import Codec, GatherLayout, RoundInput
from pfl_dist.exchange.base import generator as client_generator
from pfl_dist.exchange.codecs import _QSGD_STREAM, HalfPrecision, qsgd_quantize, top_k
from pfl_dist.exchange.spec import CodecSpec, parse_codec
from pfl_dist.methods import INCREMENT


class ThreadGroup:
    """W simulated ranks (threads); collectives meet at a barrier and sum in rank order in the
    tensor's own dtype, as a reduction on the wire would."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self.barrier = threading.Barrier(world_size)
        self.slots: list[torch.Tensor] = [torch.zeros(0)] * world_size

    def wire(self, rank: int) -> SimulatedWire:
        return SimulatedWire(self, rank)


class SimulatedWire:
    def __init__(self, group: ThreadGroup, rank: int) -> None:
        self.group, self.rank, self.world_size = group, rank, group.world_size

    def _exchange(self, tensor: torch.Tensor, combine: Callable[[list[torch.Tensor]], torch.Tensor]) -> torch.Tensor:
        self.group.slots[self.rank] = tensor.clone()
        self.group.barrier.wait()
        result = combine(self.group.slots)
        self.group.barrier.wait()
        return result

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        def total(slots: list[torch.Tensor]) -> torch.Tensor:
            out = slots[0].clone()
            for other in slots[1:]:
                out += other
            return out
        tensor.copy_(self._exchange(tensor, total))
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._exchange(tensor, torch.cat)


def make(text: str, shapes: Sequence[tuple[int, ...]], *, num_local_clients: int,
         dtype: torch.dtype = torch.float64, seed: int = 0, message: str = INCREMENT) -> Codec:
    return Codec(parse_codec(text), shapes=[torch.Size(s) for s in shapes], num_local_clients=num_local_clients,
               dtype=dtype, device=torch.device("cpu"), seed=seed, message=message)


def run_ranks(codecs: list[Codec], updates: torch.Tensor, counts: torch.Tensor, *, round_idx: int = 0,
              ) -> list[torch.Tensor]:
    """Split the clients (rows of `updates`) into contiguous blocks, one per codec/rank, and run
    one aggregation on all of them at once; -> each rank's result."""
    world_size = len(codecs)
    blocks = torch.arange(len(updates)).tensor_split(world_size)
    total = float(counts.double().sum())
    control = sum(c.control_words(updates[b], counts[b]) for c, b in zip(codecs, blocks, strict=True))
    layout = GatherLayout(tuple(len(b) for b in blocks))
    group, results = ThreadGroup(world_size), [torch.zeros(0)] * world_size

    def work(rank: int) -> None:
        ids = blocks[rank]
        round_input = RoundInput(round_idx=round_idx, updates=updates[ids], weights=counts[ids].double() / total,
                                 rows=ids - ids[0] if len(ids) else ids, client_ids=ids, control=control,
                                 weight_total=total, layout=layout)
        results[rank] = codecs[rank].aggregate(round_input, group.wire(rank))

    threads = [threading.Thread(target=work, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def weighted_mean(updates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """sum_i n_i Delta_i / sum_i n_i, one client at a time in float64."""
    total = torch.zeros(updates.shape[1], dtype=torch.float64)
    for update, count in zip(updates, counts, strict=True):
        total += float(count) * update.double()
    return total / float(counts.double().sum())


# --- spec ------------------------------------------------------------------------------------


def test_codec_strings_parse_with_defaults_and_reject_bad_parameters() -> None:
    assert parse_codec("topk:0.05") == CodecSpec("topk", (0.05,))
    assert parse_codec("powersgd") == CodecSpec("powersgd", (1,))
    assert str(parse_codec("qsgd:8")) == "qsgd:8:512" and parse_codec("qsgd:2:64") == CodecSpec("qsgd", (2, 64))
    for bad in ("gzip", "topk:0", "topk:2", "qsgd:0", "qsgd:200", "qsgd:x", "fp16:3", "powersgd:0", "qsgd:4:0",
                "qsgd:4:x", "qsgd:4:2.5", "qsgd:4:-8", "qsgd:4:512:1", "topk:0.1:3"):
        with pytest.raises(ValueError, match="comm.codec"):
            parse_codec(bad)


@pytest.mark.parametrize(("text", "message"), [
    ("qsgd:0", "comm.codec: the parameter of 'qsgd' is the levels s, an integer in 1..127, got '0'"),
    ("qsgd:4:0", "comm.codec: the parameter of 'qsgd' is the bucket size d, an integer >= 1, got '0'"),
    ("qsgd:4:x", "comm.codec: the parameter of 'qsgd' is the bucket size d, an integer >= 1, got 'x'"),
    ("qsgd:4:512:2", "comm.codec: codec 'qsgd' takes at most 2 parameter(s), got 'qsgd:4:512:2'")])
def test_a_bad_qsgd_spec_is_one_config_error_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(None, [f"comm.codec={text}"])
    assert str(raised.value) == message


# --- fp16 / bf16 ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "half"), [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_precision_mean_of_10000_clients_is_within_epsilon_and_never_overflows(name: str,
                                                                                     half: torch.dtype) -> None:
    # Prepare: updates of size ~100 with weights up to 6000: unscaled, sum n_i Delta_i is ~1e9
    generator = torch.Generator().manual_seed(0)
    num_clients, num_params = 10_000, 64
    common = torch.randn(num_params, generator=generator, dtype=torch.float64) * 100
    updates = common + torch.randn(num_clients, num_params, generator=generator, dtype=torch.float64) * 30
    counts = torch.randint(100, 6000, (num_clients,), generator=generator).double()
    naive = torch.zeros(num_params, dtype=half)
    for update, count in zip(updates[:200], counts[:200], strict=True):
        naive += (count * update).to(half)
    if half == torch.float16:
        assert not torch.isfinite(naive).all()  # what the scaling prevents
    reference = weighted_mean(updates, counts)
    # Execute: 4 simulated ranks, the all-reduce summing in half precision
    codecs = [make(name, [(num_params,)], num_local_clients=2500) for _ in range(4)]
    results = run_ranks(codecs, updates, counts)
    # Assert
    eps = torch.finfo(half).eps
    for got in results:
        assert torch.isfinite(got).all()
        assert torch.equal(got, results[0])
        relative = float(torch.linalg.vector_norm(got - reference) / torch.linalg.vector_norm(reference))
        assert relative <= eps, (relative, eps)


def half_reference(x: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(the half values' 16-bit patterns, their float64 values) of float64 `x`: fp16 by numpy's
    cast; bf16 written out: to float32 (nearest), then the upper 16 bits rounded to nearest even."""
    if name == "fp16":
        half = x.astype(np.float16)
        return half.view(np.uint16), half.astype(np.float64)
    bits = x.astype(np.float32).view(np.uint32)
    upper = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint32)
    return upper.astype(np.uint16), (upper << 16).view(np.float32).astype(np.float64)


@pytest.mark.parametrize("num_params", [7, 1000])
@pytest.mark.parametrize(("name", "largest"), [("fp16", 65504.0), ("bf16", 3.3895313892515355e38)])
def test_half_precision_matches_a_numpy_reference_in_bytes_and_values(name: str, largest: float,
                                                                     num_params: int) -> None:
    # Prepare: three clients' updates of very different sizes, their weights and the round's bound
    # B = sum_i w_i max|v_i| (the control word per unit weight)
    rng = np.random.default_rng(3)
    v = rng.standard_normal((3, num_params)) * 10.0 ** rng.uniform(-6, 3, size=(3, 1))
    weights = np.array([0.2, 0.3, 0.5])
    bound = float(weights @ np.abs(v).max(axis=1))
    compressor = make(name, [(num_params,)], num_local_clients=3).compressor
    control = torch.tensor([bound], dtype=torch.float64)
    # Execute
    messages = compressor.encode(torch.from_numpy(v), round_idx=0, clients=torch.arange(3),
                                 weights=torch.from_numpy(weights), control=control)
    decoded = compressor.decode(messages, round_idx=0, control=control)
    # Assert: fp16_compress_hook's cast of w_i v_i times the power of two 2^e with 2^e B <= max / 2,
    # written independently in numpy; 2 bytes per coordinate; decoding divides the scale back out
    scale = 2.0 ** math.floor(math.log2(largest / 2 / bound))
    bits, values = half_reference(weights[:, None] * v * scale, name)
    assert compressor.message_bytes() == bits[0].nbytes == 2 * num_params
    np.testing.assert_array_equal(messages.view(torch.int16).numpy().view(np.uint16), bits)
    np.testing.assert_array_equal(decoded.numpy(), values / scale)


def test_half_precision_scale_is_a_power_of_two_bounding_every_partial_sum() -> None:
    codec = make("fp16", [(4,)], num_local_clients=1)
    scale = codec.compressor.scale(3.0)  # type: ignore[attr-defined]
    assert math.log2(scale).is_integer() and scale * 3.0 <= 65504 / 2 < 2 * scale * 3.0
    assert codec.compressor.scale(0.0) == 1.0  # type: ignore[attr-defined]


# --- QSGD --------------------------------------------------------------------------------------


def test_qsgd_is_unbiased_mean_of_10000_draws_within_3_sigma() -> None:
    # Prepare: the paper's quantizer, from its definition: with r = s|v_j|/||v||, level
    # floor(r) + 1 with probability r - floor(r); so the std of one draw is ||v||/s sqrt(p(1-p)).
    levels, num_draws = 4, 10_000
    v = torch.tensor([0.9, -0.05, 0.31, 0.0, -1.7, 0.02, 0.5, -0.44], dtype=torch.float64)
    norm = float(torch.linalg.vector_norm(v))
    ratio = v.abs() * levels / norm
    p = ratio - ratio.floor()
    sigma = norm / levels * torch.sqrt(p * (1 - p)) / math.sqrt(num_draws)
    # Execute
    total = torch.zeros_like(v)
    for draw in range(num_draws):
        scale, signed = qsgd_quantize(v, levels=levels, generator=torch.Generator().manual_seed(draw))
        total += scale * signed.double() / levels
    mean = total / num_draws
    # Assert
    assert torch.all((mean - v).abs() <= 3 * sigma + 1e-12), ((mean - v) / sigma)
    assert mean[3] == 0.0  # a zero coordinate is never sent


def test_qsgd_message_round_trips_and_aggregates_weighted_in_client_order() -> None:
    # Prepare
    generator = torch.Generator().manual_seed(1)
    updates = torch.randn(6, 37, generator=generator, dtype=torch.float64)
    counts = torch.tensor([3.0, 1.0, 4.0, 1.0, 5.0, 9.0])
    for levels, bits in ((1, 2), (7, 4), (127, 8)):
        one = make(f"qsgd:{levels}", [(37,)], num_local_clients=6)
        assert one.message_bytes() == 8 + math.ceil(37 * bits / 8)
        # Reference: each client's draw from its (seed, round, client) generator, decoded directly
        reference = torch.zeros(37, dtype=torch.float64)
        for client in range(6):
            message = one.compressor.encode(updates[client: client + 1], weights=torch.ones(1), round_idx=2,  # type: ignore[attr-defined]
                                 clients=torch.tensor([client]))
            decoded = one.compressor.decode(message, round_idx=2)[0]  # type: ignore[attr-defined]
            assert message.shape == (1, one.message_bytes())
            scale, signed = qsgd_quantize(updates[client], levels=levels,
                                          generator=client_generator(0, _QSGD_STREAM, 2, client))
            # the packed message carries exactly the levels of the paper's quantizer, and its scale
            assert torch.equal((decoded * levels / scale).round().to(torch.int16), signed)
            assert torch.allclose(decoded, scale * signed.double() / levels, rtol=1e-15, atol=0)
            reference += float(counts[client]) / float(counts.sum()) * decoded
        # Execute: the same clients on 1 rank and on 3 ranks
        single = run_ranks([one], updates, counts, round_idx=2)[0]
        several = run_ranks([make(f"qsgd:{levels}", [(37,)], num_local_clients=2) for _ in range(3)], updates,
                            counts, round_idx=2)
        # Assert: world-size free, bit for bit
        assert torch.allclose(single, reference, rtol=1e-12, atol=1e-12)
        assert all(torch.equal(r, single) for r in several)


def test_qsgd_variance_is_within_the_papers_bound() -> None:
    v = torch.randn(100, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    levels, draws = 2, 2000
    errors = []
    for draw in range(draws):
        scale, signed = qsgd_quantize(v, levels=levels, generator=torch.Generator().manual_seed(draw))
        errors.append(float(((scale * signed.double() / levels - v) ** 2).sum()))
    bound = min(100 / levels**2, math.sqrt(100) / levels) * float((v**2).sum())  # Alistarh et al., Lemma 3.1
    assert sum(errors) / draws <= bound


def paper_uniforms(seed: int, round_idx: int, client: int, count: int) -> np.ndarray:
    """The uniforms of a client's draws, from the documented seeding contract (a SeedSequence of
    (seed, stream, round, client) seeding a torch generator), not from the project's helpers."""
    entropy = np.random.SeedSequence([seed, _QSGD_STREAM, round_idx, client]).generate_state(2, dtype=np.uint32)
    draw = torch.Generator().manual_seed(int(entropy[0]) << 32 | int(entropy[1]))
    return torch.rand(count, generator=draw, dtype=torch.float64).numpy()


def paper_qsgd(v: np.ndarray, uniforms: np.ndarray, *, levels: int, bucket: int, weight: float,
               dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, bytes, int]:
    """Alistarh et al. 2017 with bucketing, written from the paper in numpy: per bucket of d
    coordinates, scale w ||v_b||_2 and levels l + 1 with probability r - l (r = s |v_j| / ||v_b||,
    l = floor(r)); a symbol sign(v_j) level + s in b = ceil(log2(2s + 1)) bits, least significant
    first. -> (bucket scales, decoded vector, the packed level bytes, the message's bytes)."""
    width = math.ceil(math.log2(2 * levels + 1))
    scales, symbols = [], np.zeros(len(v), dtype=np.int64)
    for start in range(0, len(v), bucket):
        part = v[start: start + bucket]
        norm = math.sqrt(float(np.sum(part * part)))
        ratio = np.abs(part) / norm * levels if norm > 0 else np.zeros_like(part)
        lower = np.floor(ratio)
        level = lower + (uniforms[start: start + bucket] < ratio - lower)
        symbols[start: start + bucket] = (np.sign(part) * level).astype(np.int64) + levels
        scales.append(weight * norm)
    scale_words = np.array(scales, dtype=dtype)
    per_coordinate = np.repeat(scale_words.astype(np.float64), bucket)[: len(v)]
    decoded = per_coordinate * (symbols - levels) / levels
    bits = ((symbols[:, None] >> np.arange(width)) & 1).astype(np.uint8).reshape(-1)
    packed = np.packbits(bits, bitorder="little").tobytes()
    return scale_words.astype(np.float64), decoded, packed, scale_words.nbytes + len(packed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("levels", "bucket", "num_params"), [
    (1, 512, 37), (2, 7, 37), (3, 10, 1000), (4, 512, 1000), (4, 512, 1024), (8, 16, 100), (127, 1, 20),
    (5, 100_000, 300)])
def test_qsgd_matches_the_papers_bucketed_quantizer_in_bytes_and_values(levels: int, bucket: int, num_params: int,
                                                                        dtype: torch.dtype) -> None:
    # Prepare
    generator = torch.Generator().manual_seed(levels * 1000 + bucket)
    updates = torch.randn(3, num_params, generator=generator, dtype=torch.float64).to(dtype)
    updates[1, : min(bucket, num_params)] = 0  # a zero bucket: scale 0, every level 0
    weights = torch.tensor([0.5, 0.25, 0.125], dtype=torch.float64)
    compressor = make(f"qsgd:{levels}:{bucket}", [(num_params,)], num_local_clients=3, dtype=dtype, seed=11).compressor
    clients = torch.tensor([4, 9, 2])
    # Execute
    messages = compressor.encode(updates, round_idx=6, clients=clients, weights=weights)
    decoded = compressor.decode(messages, round_idx=6)
    # Assert: the paper's quantizer, byte for byte where it is defined bit for bit
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    element = np.dtype(np_dtype).itemsize
    num_buckets = math.ceil(num_params / bucket)
    for row, client in enumerate(clients.tolist()):
        uniforms = paper_uniforms(11, 6, client, num_params)
        scales, expected, packed, size = paper_qsgd(updates[row].double().numpy(), uniforms, levels=levels,
                                                    bucket=bucket, weight=float(weights[row]), dtype=np_dtype)
        assert size == compressor.message_bytes() == messages.shape[1]
        assert size == num_buckets * element + math.ceil(num_params * math.ceil(math.log2(2 * levels + 1)) / 8)
        got_scales = messages[row, : num_buckets * element].numpy().view(np_dtype).astype(np.float64)
        np.testing.assert_allclose(got_scales, scales, rtol=4 * np.finfo(np_dtype).eps, atol=0)
        assert messages[row, num_buckets * element:].numpy().tobytes() == packed
        np.testing.assert_allclose(decoded[row].numpy(), expected, rtol=4 * np.finfo(np_dtype).eps, atol=0)


def test_qsgd_with_buckets_is_unbiased_mean_of_20000_seeded_draws_within_4_sigma() -> None:
    # Prepare: coordinates spread over 3 buckets of 4 (the last one of 3), one exactly zero
    levels, bucket, num_draws = 2, 4, 20_000
    v = torch.tensor([0.9, -0.05, 0.31, 0.0, -1.7, 0.02, 0.5, -0.44, 3.0, -0.001, 0.2], dtype=torch.float64)
    norms = torch.stack([torch.linalg.vector_norm(v[i: i + bucket]) for i in range(0, len(v), bucket)])
    norm = norms.repeat_interleave(bucket)[: len(v)]
    # one draw of coordinate j is norm_b / s * (l or l + 1): its variance is (norm_b / s)^2 p (1 - p),
    # p = r - floor(r), so the mean of N independent draws has standard deviation sigma_j below
    ratio = v.abs() * levels / norm
    p = ratio - ratio.floor()
    sigma = norm / levels * torch.sqrt(p * (1 - p)) / math.sqrt(num_draws)
    compressor = make(f"qsgd:{levels}:{bucket}", [(len(v),)], num_local_clients=1).compressor
    # Execute: N clients' seeded draws (client ids 0..N-1 of round 3: fixed seeds, the same every run)
    draws = compressor.decode(compressor.encode(v.repeat(num_draws, 1), round_idx=3,
                                                clients=torch.arange(num_draws)), round_idx=3)
    mean = draws.mean(dim=0)
    # Assert: within 4 sigma per coordinate (a 1 in 15,000 event per coordinate for a fresh seed;
    # the seeds are fixed), a zero stays zero, and the mean squared error is within Lemma 3.1's
    # bound per bucket, min(d / s^2, sqrt(d) / s) ||v_b||^2
    assert torch.all((mean - v).abs() <= 4 * sigma + 1e-12), ((mean - v) / sigma)
    assert torch.all(draws[:, 3] == 0)
    sizes = torch.tensor([min(bucket, len(v) - i) for i in range(0, len(v), bucket)], dtype=torch.float64)
    bound = float((torch.minimum(sizes / levels**2, sizes.sqrt() / levels) * norms**2).sum())
    assert float(((draws - v) ** 2).sum(dim=1).mean()) <= bound
    # and not a degenerate quantizer: the draws do vary
    assert float(draws.std(dim=0).max()) > 0.1


def test_qsgd_with_one_bucket_per_update_decodes_as_the_unbucketed_quantizer() -> None:
    # The quantizer before buckets (one norm per update) is qsgd:s:d with d >= P: same draws, same levels
    v = torch.randn(50, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    for levels in (1, 2, 4, 127):
        compressor = make(f"qsgd:{levels}:50", [(50,)], num_local_clients=1, seed=5).compressor
        decoded = compressor.decode(compressor.encode(v[None], round_idx=1, clients=torch.tensor([3])),
                                    round_idx=1)[0]
        scale, signed = qsgd_quantize(v, levels=levels, generator=client_generator(5, _QSGD_STREAM, 1, 3))
        assert torch.allclose(decoded, scale * signed.double() / levels, rtol=1e-15, atol=0)


# --- top-k -------------------------------------------------------------------------------------


def test_top_k_keeps_exactly_the_k_largest_and_residual_plus_sent_is_the_input() -> None:
    u = torch.randn(1000, generator=torch.Generator().manual_seed(3), dtype=torch.float32)
    for k in (1, 10, 999, 1000):
        indices, values, residual = top_k(u, k)
        by_size = sorted(range(1000), key=lambda j: -abs(float(u[j])))
        assert set(indices.tolist()) == set(by_size[:k])
        rebuilt = residual.clone()
        rebuilt[indices] += values
        assert torch.equal(rebuilt, u)
        assert torch.count_nonzero(residual[indices]) == 0


def test_top_k_with_error_feedback_matches_the_reference_over_rounds() -> None:
    # Prepare
    generator = torch.Generator().manual_seed(4)
    num_clients, num_params, k = 5, 40, 6
    counts = torch.tensor([2.0, 7.0, 1.0, 3.0, 5.0])
    codec = make("topk:0.15", [(num_params,)], num_local_clients=num_clients)
    memory = [torch.zeros(num_params, dtype=torch.float64) for _ in range(num_clients)]
    for round_idx in range(3):
        updates = torch.randn(num_clients, num_params, generator=generator, dtype=torch.float64)
        # Reference (Stich et al. 2018): u = Delta + e; send top_k(u); e <- u - sent
        reference = torch.zeros(num_params, dtype=torch.float64)
        for i in range(num_clients):
            u = updates[i] + memory[i]
            keep = sorted(range(num_params), key=lambda j, u=u: -abs(float(u[j])))[:k]
            sent = torch.zeros(num_params, dtype=torch.float64)
            sent[keep] = u[keep]
            memory[i] = u - sent
            reference += float(counts[i]) / float(counts.sum()) * sent
        # Execute
        got = run_ranks([codec], updates, counts, round_idx=round_idx)[0]
        # Assert
        assert torch.allclose(got, reference, rtol=1e-13, atol=1e-15)
        assert torch.equal(codec.client_state()["codec_residual"], torch.stack(memory))
    assert codec.message_bytes() == k * (8 + 4)


# --- rand-k ------------------------------------------------------------------------------------


def test_rand_k_sends_the_same_shared_coordinates_for_every_client_with_error_feedback() -> None:
    generator = torch.Generator().manual_seed(5)
    updates = torch.randn(4, 30, generator=generator, dtype=torch.float64)
    counts = torch.tensor([1.0, 2.0, 3.0, 4.0])
    codecs = [make("randk:0.2", [(30,)], num_local_clients=2) for _ in range(2)]
    chosen = codecs[0].compressor.coordinates(7)  # type: ignore[attr-defined]
    assert len(chosen) == 6 and torch.equal(chosen, codecs[1].compressor.coordinates(7))  # type: ignore[attr-defined]
    assert not torch.equal(chosen, codecs[0].compressor.coordinates(8))  # type: ignore[attr-defined]
    got = run_ranks(codecs, updates, counts, round_idx=7)
    reference = torch.zeros(30, dtype=torch.float64)
    reference[chosen] = weighted_mean(updates, counts)[chosen]
    assert torch.allclose(got[0], reference, rtol=1e-13, atol=1e-15) and torch.equal(got[0], got[1])
    residual = torch.cat([c.client_state()["codec_residual"] for c in codecs])
    assert torch.equal(residual[:, chosen], torch.zeros(4, 6, dtype=torch.float64))
    mask = torch.ones(30, dtype=torch.bool)
    mask[chosen] = False
    assert torch.equal(residual[:, mask], updates[:, mask])
    assert codecs[0].message_bytes() == 6 * 8


# --- PowerSGD ----------------------------------------------------------------------------------


def test_powersgd_is_exact_on_rank_r_matrices_and_sends_vectors_dense() -> None:
    # Prepare: each client's matrix lies in the same rank-2 space, so their mean has rank 2
    generator = torch.Generator().manual_seed(6)
    left, right = (torch.randn(n, 2, generator=generator, dtype=torch.float64) for n in (30, 20))
    shapes = [(30, 20), (20,), (4, 1, 1, 2)]  # a matrix, a bias, a conv kernel too small to compress at rank 2
    num_clients = 6
    updates = torch.randn(num_clients, 600 + 20 + 8, generator=generator, dtype=torch.float64)
    for i in range(num_clients):
        updates[i, :600] = (left @ torch.randn(2, 2, generator=generator, dtype=torch.float64) @ right.T).reshape(-1)
    counts = torch.tensor([5.0, 1.0, 2.0, 8.0, 3.0, 1.0])
    # Execute: 1 rank and 3 ranks
    single = make("powersgd:2", shapes, num_local_clients=num_clients)
    got = run_ranks([single], updates, counts)[0]
    several = run_ranks([make("powersgd:2", shapes, num_local_clients=2) for _ in range(3)], updates, counts)
    # Assert
    reference = weighted_mean(updates, counts)
    assert torch.allclose(got, reference, rtol=0, atol=1e-12)
    assert all(torch.allclose(r, reference, rtol=0, atol=1e-12) for r in several)
    assert float(single.client_state()["codec_residual"].abs().max()) < 1e-12  # nothing left to feed back
    assert single.message_bytes() == ((30 + 20) * 2 + 20 + 8) * 8


def test_powersgd_matches_the_papers_algorithm_on_full_rank_matrices_with_error_feedback() -> None:
    # Prepare
    generator = torch.Generator().manual_seed(7)
    num_clients, rows, cols, rank = 4, 12, 9, 2
    counts = torch.tensor([1.0, 2.0, 3.0, 4.0])
    weights = counts / counts.sum()
    codec = make(f"powersgd:{rank}", [(rows, cols)], num_local_clients=num_clients)
    q = make(f"powersgd:{rank}", [(rows, cols)], num_local_clients=1).compressor._qs()[0].clone()  # type: ignore[attr-defined]
    errors = [torch.zeros(rows, cols, dtype=torch.float64) for _ in range(num_clients)]
    for round_idx in range(3):
        updates = torch.randn(num_clients, rows * cols, generator=generator, dtype=torch.float64)
        # Reference (Vogels et al. 2019, Algorithms 1 and 2), one client at a time
        matrices = [updates[i].view(rows, cols) + errors[i] for i in range(num_clients)]
        p = sum(float(weights[i]) * matrices[i] @ q for i in range(num_clients))
        basis = torch.linalg.qr(p).Q
        q = sum(float(weights[i]) * matrices[i].T @ basis for i in range(num_clients))
        reference = basis @ q.T
        errors = [m - basis @ (m.T @ basis).T for m in matrices]
        # Execute
        got = codec.aggregate(RoundInput(round_idx=round_idx, updates=updates, weights=weights.double(),
                                         rows=torch.arange(num_clients), client_ids=torch.arange(num_clients),
                                         control=torch.zeros(0), weight_total=float(counts.sum()),
                                         layout=GatherLayout((num_clients,))), ThreadGroup(1).wire(0))
        # Assert
        assert torch.allclose(got.view(rows, cols), reference, rtol=0, atol=1e-12)
        assert torch.allclose(codec.client_state()["codec_residual"],
                              torch.stack([e.reshape(-1) for e in errors]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("text", ["fp16", "bf16", "qsgd:3", "topk:0.3", "randk:0.3", "powersgd:1"])
def test_a_rank_without_sampled_clients_still_joins_and_the_result_is_the_one_rank_result(text: str) -> None:
    # Prepare: 3 clients on 4 ranks, so the last rank sends an empty share
    updates = torch.randn(3, 24, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    counts = torch.tensor([2.0, 1.0, 3.0])
    shapes = [(6, 4)]
    # Execute
    one_codec = make(text, shapes, num_local_clients=3)
    one = run_ranks([one_codec], updates, counts)[0]
    four = run_ranks([make(text, shapes, num_local_clients=1) for _ in range(4)], updates, counts)
    # Assert: equal up to the rounding of the wire's dtype. Half precision: 1 rank rounds the
    # scaled sum once; W ranks round each rank's partial sum and each of the W - 1 additions of the
    # ring. Every one of these half-precision summands and partial sums is bounded by 2^e B (B =
    # sum_i w_i max|Delta_i|, the control word), so each rounding errs by at most u 2^e B + eta (u =
    # eps / 2, eta = half the smallest subnormal), and after dividing by 2^e the two results differ
    # by at most (W + 1) (u B + eta / 2^e): epsilon x the number of half-precision summands x B.
    compressor = one_codec.compressor
    if isinstance(compressor, HalfPrecision):
        info = torch.finfo(compressor.half)
        weights = counts.double() / counts.sum()
        bound = float(weights @ updates.abs().amax(dim=1))
        world_size = len(four)
        tolerance = (world_size + 1) * (info.eps / 2 * bound + info.tiny * info.eps / 2 / compressor.scale(bound))
    else:
        tolerance = 1e-12
    for got in four:
        assert float((got - one).abs().max()) <= tolerance
