"""The Exchange on one process: the dense path's arithmetic and control words, the control
lane of a codec (stop, divergence), the FL-equivalent bytes it records, and the error-feedback
rule of each (algorithm, codec) pair."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pfl_dist.algorithms import ALGORITHMS
from pfl_dist.algorithms.classic import ProxLocalUpdate
from pfl_dist.checkpoint import StopRequest
from pfl_dist.comm import COLLECTIVES, ByteLedger, Communicator, Traffic
from pfl_dist.config import load_config
from pfl_dist.errors import ConfigError
from pfl_dist.exchange.base import GatherCompressor, GatherLayout, RoundInput, SummingCompressor, compressor_class
from pfl_dist.exchange.exchange import Exchange
from pfl_dist.exchange.spec import ALL_REDUCE, CODEC_NAMES, CODECS, parse_codec
from pfl_dist.methods import INCREMENT, METHODS, STATE
from pfl_dist.runtime import Runtime, init_runtime
from pfl_dist.train import Trainer, run_session

SHAPES = [torch.Size((6, 4)), torch.Size((4,))]  # P = 28


def make(codec: str, *, num_clients: int = 3, message: str = INCREMENT) -> tuple[Exchange, ByteLedger]:
    ledger = ByteLedger()
    runtime = Runtime(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"), backend=None)
    exchange = Exchange(codec, comm=Communicator(runtime, ledger), shapes=SHAPES, client_ids=range(num_clients),
                        num_clients=num_clients, dtype=torch.float64, device=torch.device("cpu"), seed=0,
                        message=message)
    return exchange, ledger


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    global_model = torch.randn(28, generator=generator, dtype=torch.float64)
    sent = global_model + 0.1 * torch.randn(3, 28, generator=generator, dtype=torch.float64)
    return global_model, sent, torch.tensor([2.0, 5.0, 3.0], dtype=torch.float64)


def test_dense_round_is_the_weighted_average_with_control_words_in_the_buffer() -> None:
    # Prepare
    exchange, ledger = make("none")
    global_model, sent, counts = inputs()
    # Execute
    average = exchange.run_round(0, global_model=global_model, sent=sent, rows=torch.arange(3), counts=counts,
                                 sampled=np.arange(3), stop=False)
    # Assert: one all-reduce of P + 2 numbers; the arithmetic is sum n_i w_i / sum n_i
    assert average is not None
    assert torch.equal(average, (counts @ sent) / counts.sum())
    train = ledger.round[Traffic.TRAIN]
    assert train.num_collectives == 1 and train.payload_bytes == (28 + 2) * 8
    assert train.uplink_bytes == train.uplink_bytes_dense == train.downlink_bytes == 3 * 28 * 8


def test_a_stop_request_ends_the_round_before_any_payload() -> None:
    for codec, collectives in (("none", 1), ("topk:0.25", 1), ("powersgd:1", 1)):
        exchange, ledger = make(codec)
        global_model, sent, counts = inputs()
        assert exchange.run_round(0, global_model=global_model, sent=sent, rows=torch.arange(3), counts=counts,
                                  sampled=np.arange(3), stop=True) is None
        train = ledger.round[Traffic.TRAIN]
        assert train.num_collectives == collectives  # the control lane only
        assert train.uplink_bytes == 0  # nothing was sent
        assert float(exchange.client_state().get("codec_residual", torch.zeros(1)).abs().sum()) == 0


def test_a_diverged_client_makes_every_codec_return_nan_without_touching_its_state() -> None:
    for codec in ("fp16", "qsgd:2", "topk:0.1", "randk:0.1", "powersgd:1"):
        exchange, _ = make(codec)
        global_model, sent, counts = inputs()
        sent[1, 5] = math.nan  # rand-k would usually not even send this coordinate
        average = exchange.run_round(0, global_model=global_model, sent=sent, rows=torch.arange(3), counts=counts,
                                     sampled=np.arange(3), stop=False)
        assert average is not None and torch.isnan(average).all(), codec
        assert float(exchange.client_state().get("codec_residual", torch.zeros(1)).abs().sum()) == 0


def test_codec_round_records_the_encoded_messages_as_uplink() -> None:
    # Prepare
    exchange, ledger = make("topk:0.25")  # k = 7 of 28
    global_model, sent, counts = inputs()
    # Execute
    average = exchange.run_round(0, global_model=global_model, sent=sent, rows=torch.arange(3), counts=counts,
                                 sampled=np.arange(3), stop=False)
    # Assert
    assert average is not None and torch.isfinite(average).all()
    train = ledger.round[Traffic.TRAIN]
    assert train.uplink_bytes == 3 * 7 * (8 + 4) and train.uplink_bytes_dense == 3 * 28 * 8
    assert train.all_reduce_num_collectives == 1 and train.all_gather_num_collectives == 1
    assert train.all_reduce_payload_bytes == 3 * 8  # the control lane: weight total, stops, diverged
    assert train.all_gather_payload_bytes == 3 * 7 * (8 + 4)
    assert train.compression_ratio == (28 * 8) / (7 * 12)


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_each_registry_entry_agrees_with_its_compressor_and_transport(name: str) -> None:
    """One registry (pfl_dist/exchange/spec.py `CODECS`) states each codec's string, compressor,
    transport and error feedback; the Exchange, TensorBoard (`collectives`) and the feedback rule
    read it. Its claims must hold for what a round really does."""
    entry = CODECS[name]
    spec = parse_codec(name)  # the default parameters
    assert parse_codec(str(spec)) == spec and spec.entry is entry
    exchange, ledger = make(name)
    global_model, sent, counts = inputs()
    average = exchange.run_round(0, global_model=global_model, sent=sent, rows=torch.arange(3), counts=counts,
                                 sampled=np.arange(3), stop=False)
    # TensorBoard leaves out the counters of collective types a codec never uses
    train = ledger.round[Traffic.TRAIN]
    assert tuple(kind for kind in COLLECTIVES if getattr(train, f"{kind}_num_collectives") > 0) == entry.collectives
    if exchange.codec is None:
        assert not entry.compressor and entry.transport == ALL_REDUCE
        return
    compressor = exchange.codec.compressor
    # the compressor is the kind its transport carries, loaded through the plug-in path
    assert type(compressor) is compressor_class(entry)
    assert isinstance(compressor, SummingCompressor if entry.transport == ALL_REDUCE else GatherCompressor)
    # a residual exactly where the entry says the codec feeds back
    assert (set(exchange.client_state()) == {"codec_residual"}) == entry.error_feedback
    # the standalone encode/decode is what the transport computes: one client of weight 1 on one rank
    fresh, _ = make(name, num_clients=1)
    codec = fresh.codec
    assert codec is not None
    update = sent[1:2] - global_model
    ones = torch.ones(1, dtype=torch.float64)
    control = codec.compressor.control_words(update, ones)
    messages = codec.compressor.encode(update, round_idx=4, clients=torch.tensor([0]), control=control)
    assert messages.shape[0] == 1 and messages[0].numel() * messages.element_size() == codec.message_bytes()
    decoded = codec.compressor.decode(messages, round_idx=4, control=control)
    through_transport = codec.aggregate(RoundInput(
        round_idx=4, updates=update, weights=ones, rows=torch.arange(1), client_ids=torch.tensor([0]),
        control=control, weight_total=1.0, layout=GatherLayout((1,))), fresh.wire)
    assert torch.equal(decoded[0].to(torch.float64), through_transport.double()), name
    assert average is not None and torch.isfinite(average).all()


@pytest.mark.parametrize("name", ["fp16", "bf16", "randk:0.5"])
def test_the_messages_of_a_summing_compressor_sum(name: str) -> None:
    """What lets the all-reduce transport send one message per rank: the sum of the clients'
    weighted messages decodes to the message of their weighted sum (to the message dtype's
    rounding). PowerSGD sums in two linear steps around a shared basis, so its per-client
    messages (each its own basis) do not; its reduce is checked against the paper's algorithm
    (tests/unit/test_codecs.py)."""
    exchange, _ = make(name)
    assert exchange.codec is not None
    compressor = exchange.codec.compressor
    assert isinstance(compressor, SummingCompressor)
    global_model, sent, counts = inputs()
    updates, weights = sent - global_model, counts / counts.sum()
    control = compressor.control_words(updates, weights)
    each = compressor.encode(updates, round_idx=2, clients=torch.arange(3), weights=weights, control=control)
    at_once = compressor.encode_sum(updates, weights=weights, round_idx=2, control=control)
    summed = compressor.decode(each.double().sum(dim=0, keepdim=True), round_idx=2, control=control)[0]
    expected = compressor.decode(at_once[None], round_idx=2, control=control)[0]
    half = getattr(compressor, "half", torch.float64)
    tolerance = 3 * torch.finfo(half).eps * float(expected.abs().max())
    assert float((summed - expected).abs().max()) <= tolerance
    assert float(expected.abs().max()) > 0


# --- error feedback per (algorithm, codec) pair ----------------------------------------------------

# Issue 21's run: FedCLUP on the 4 synthetic clients of configs/default.yaml, float64, 40 rounds.
REPRO = ("algorithm.lam=0.1", "algorithm.global_lr=1/lam", "algorithm.num_local_steps=5", "algorithm.local_lr=0.1",
         "train.num_rounds=40", "train.eval_every=40", "train.dtype=float64")
KEPT_STATE = sorted(name for name, info in METHODS.items() if info.communicates and info.message == STATE)
# codec -> extra overrides. With 2 classes every update of the linear softmax model is a rank-1
# (10, 2) matrix (the two columns' gradients are opposite), which PowerSGD at rank 1 sends exactly;
# 5 classes make it lossy.
ERROR_FEEDBACK_CODECS = {"randk:0.25": (), "topk": (), "powersgd:1": ("data.num_classes=5",)}


def train(tmp_path: Path, *overrides: str) -> Trainer:
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "run.name=run", *REPRO, *overrides])
    return run_session(cfg, init_runtime(cfg), StopRequest())


@pytest.mark.parametrize("codec", sorted(ERROR_FEEDBACK_CODECS))
@pytest.mark.parametrize("method", KEPT_STATE)
def test_kept_state_sent_through_an_error_feedback_codec_ends_near_the_dense_run(tmp_path: Path, method: str,
                                                                                codec: str) -> None:
    # Prepare: with a residual as well, what rand-k left out of w_i - w_g was sent twice and w_g
    # ended 220 from the dense run's (||w_g|| = 3.2); top-k 0.97 away, biased.
    extra = (f"algorithm.name={method}", *ERROR_FEEDBACK_CODECS[codec])
    dense = train(tmp_path / "dense", *extra)
    # Execute
    coded = train(tmp_path / "coded", *extra, f"comm.codec={codec}")
    # Assert: near the dense run, and no residual rows kept (nothing to checkpoint per client)
    distance = float((coded.global_model - dense.global_model).abs().max())
    assert distance <= 0.25 * float(torch.linalg.vector_norm(dense.global_model))
    assert coded.exchange.client_state() == {}


def test_a_residual_is_kept_exactly_for_a_fresh_increment_through_an_error_feedback_codec() -> None:
    for codec in CODEC_NAMES:
        for message in (INCREMENT, STATE):
            exchange, _ = make(f"{codec}", message=message)
            global_model, sent, counts = inputs()
            exchange.run_round(1, global_model=global_model, sent=sent, rows=torch.arange(3), counts=counts,
                               sampled=np.arange(3), stop=False)
            state = exchange.client_state()
            if codec in ("topk", "randk", "powersgd") and message == INCREMENT:
                assert set(state) == {"codec_residual"} and float(state["codec_residual"].abs().sum()) > 0, codec
            else:
                assert state == {}, (codec, message)


def test_a_method_whose_clients_keep_their_model_declares_its_message_kept_state() -> None:
    # The paper's four methods send their local model; it is kept state exactly when a client does
    # not restart from w_g (FedCLUP; LocalTrain sends nothing).
    for cls in ALGORITHMS.values():
        if issubclass(cls, ProxLocalUpdate) and cls.info.communicates:
            assert (cls.info.message == STATE) == (not cls.resets_local_models), cls.name


def test_resuming_a_checkpoint_with_residuals_for_kept_state_is_one_line_naming_them() -> None:
    # A checkpoint written when FedCLUP's w_i - w_g was also fed back: resuming it would mix rules.
    exchange, _ = make("topk:0.25", message=STATE)
    with pytest.raises(ConfigError, match=r"cannot resume: the checkpoint holds codec_residual, which "
                                          r"comm.codec=topk:0.25 does not keep"):
        exchange.check_client_rows(["codec_residual"])  # what the run's ClientStore did not declare
