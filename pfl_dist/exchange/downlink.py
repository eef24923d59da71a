"""The downlink: what the clients receive of the server's model (`comm.downlink_codec`).

What is compressed is the change since the last broadcast model, as in DoubleSqueeze (Tang et
al. 2019) and EF21-P (Gruntkowska, Tyurin, Richtarik 2023): the server and every client hold the
same reference h, the model received in the previous round (h_0 = the initial model, which every
client holds). In round t the server sends C(w_t - h) and everyone computes

    w_recv = h + decode(encode(w_t - h)),     h <- w_recv  (once the round completes)

The vector is what the algorithm's clients are sent, `Algorithm.wire_reference(w_g)` (the model;
FedRep's and FedPer's body; SCAFFOLD's [x, c]), with the same shapes as the uplink codec's. Every
draw comes from a generator seeded by (the run seed's downlink stream, round): a broadcast is the
same message for every client, so every rank derives the same w_recv with no collective.

Error feedback. w_t - h is what the clients have not received yet: whatever a biased compressor
(top-k, rand-k, PowerSGD) leaves out of this round's message is still in next round's w_{t+1} - h.
So the server-side error-feedback memory is h itself, replicated on every rank and checkpointed
(`state`): the residual of round t is w_t - w_recv (EF21-P's form; a separate residual added to
w_t - h would send the left-out part twice, the reason `feedback_rule` keeps none for kept state
on the uplink). A compressor's own replicated state (PowerSGD's Q) is checkpointed with it; the
standalone encode that the downlink uses does not advance PowerSGD's Q, so its downlink does one
power iteration per round from the same seeded Q.

Bytes. One message is the compressor's `message_bytes` plus 8 bytes per control word it decodes
with (fp16/bf16's scale bound: one float64), since a client has no control lane to read it from;
each sampled client receives one message a round.

Not built: a per-client delta downlink (w_g minus each client's own last received copy, in the
client store's rows). With partial participation a client that was not sampled in some round does
not hold h; the ledger counts only the sampled clients' messages, as if every client followed the
broadcasts (a deployment sends the same message to all, or a dense copy to a returning client).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pfl_dist.exchange.base import Compressor, compressor_class
from pfl_dist.exchange.spec import CodecSpec

_DOWNLINK_STREAM = 0x44_4C  # separates the downlink's draws from every client's uplink draws
CONTROL_WORD_BYTES = 8  # a control word is one float64


def downlink_seed(seed: int) -> int:
    """The downlink compressor's seed: a stream of the run seed that no client's (seed, ...) shares."""
    return int(np.random.SeedSequence([seed, _DOWNLINK_STREAM]).generate_state(1, dtype=np.uint32)[0])


class Downlink:
    """The server's broadcast through a compressor, and the reference h every client holds."""

    def __init__(self, spec: CodecSpec, *, shapes: Sequence[torch.Size], reference: torch.Tensor, seed: int) -> None:
        self.spec = spec
        self.compressor: Compressor = compressor_class(spec.entry, key="comm.downlink_codec")(
            spec, shapes=shapes, dtype=reference.dtype, device=reference.device, seed=downlink_seed(seed))
        self.reference = reference.clone()  # h: the last received model

    def message_bytes(self) -> int:
        """The exact size of one client's downlink message: the encoded change and its control words."""
        return self.compressor.message_bytes() + CONTROL_WORD_BYTES * self.compressor.num_control_words

    def receive(self, round_idx: int, model: torch.Tensor) -> torch.Tensor:
        """(P,) what every client receives of `model` in round `round_idx`: h + decode(encode(model - h)).
        Pure: h moves only at `commit`, once the round completed (a discarded round leaves it)."""
        return received_model(self.compressor, self.reference, model, round_idx=round_idx)

    def commit(self, received: torch.Tensor) -> None:
        self.reference = received

    def state(self) -> dict[str, object]:
        return {"reference": self.reference.cpu(), "compressor": self.compressor.replicated_state()}

    def load_state(self, state: dict[str, object]) -> None:
        reference, compressor = state["reference"], state["compressor"]
        assert isinstance(reference, torch.Tensor) and isinstance(compressor, dict)
        self.reference = reference.to(self.reference.device)
        self.compressor.load_replicated_state(compressor)


def received_model(compressor: Compressor, reference: torch.Tensor, model: torch.Tensor, *,
                   round_idx: int) -> torch.Tensor:
    """reference + decode(encode(model - reference)), the change decoded in float64 and added in the
    model dtype; one message of weight 1 from client stream 0 of the compressor's seed, its control
    words (fp16's scale bound) those of the change itself."""
    change = (model - reference).unsqueeze(0)
    control = compressor.control_words(change, torch.ones(1, dtype=torch.float64, device=change.device))
    message = compressor.encode(change, round_idx=round_idx, clients=torch.zeros(1, dtype=torch.long),
                                control=control)
    decoded = compressor.decode(message, round_idx=round_idx, control=control)[0]
    return reference + decoded.to(device=reference.device, dtype=reference.dtype)
