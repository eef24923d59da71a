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
from pfl_dist.exchange.exchange import CODECS, Exchange
from pfl_dist.exchange.spec import CODEC_NAMES
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
    for codec in CODECS:
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
