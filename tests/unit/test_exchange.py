"""The Exchange on one process: the dense path's arithmetic and control words, the control
lane of a codec (stop, divergence), and the FL-equivalent bytes it records."""

from __future__ import annotations

import math

import numpy as np
import torch

from pfl_dist.comm import COLLECTIVES, ByteLedger, Communicator, Traffic
from pfl_dist.exchange.exchange import Exchange
from pfl_dist.exchange.spec import CODEC_NAMES
from pfl_dist.runtime import Runtime

SHAPES = [torch.Size((6, 4)), torch.Size((4,))]  # P = 28


def make(codec: str, *, num_clients: int = 3) -> tuple[Exchange, ByteLedger]:
    ledger = ByteLedger()
    runtime = Runtime(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"), backend=None)
    exchange = Exchange(codec, comm=Communicator(runtime, ledger), shapes=SHAPES, client_ids=range(num_clients),
                        num_clients=num_clients, dtype=torch.float64, device=torch.device("cpu"), seed=0)
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


def test_each_codec_uses_exactly_the_collectives_its_spec_declares() -> None:
    """TensorBoard leaves out the counters of collective types a codec never uses
    (`CodecSpec.collectives`): that declaration must match what a round really issues."""
    for name in CODEC_NAMES:
        exchange, ledger = make(name)  # the codec's default parameter
        global_model, sent, counts = inputs()
        exchange.run_round(0, global_model=global_model, sent=sent, rows=torch.arange(3), counts=counts,
                           sampled=np.arange(3), stop=False)
        train = ledger.round[Traffic.TRAIN]
        used = tuple(kind for kind in COLLECTIVES if getattr(train, f"{kind}_num_collectives") > 0)
        assert used == exchange.spec.collectives, name
