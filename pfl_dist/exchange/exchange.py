"""The Exchange owns a round's wire format: what each participating client sends, the
collectives that carry it, and the decoded aggregate handed back to the algorithm.

What is sent is an update Delta_i = sent_i - w_g with weight n_i (the algorithm's
`aggregation_weights`: n_i, or 1 for plain means); the algorithm says what it is (`message`: a
fresh increment or the difference of kept state, pfl_dist/methods.py), which decides whether a
compressing codec keeps error-feedback residuals (`feedback_rule` in
pfl_dist/exchange/base.py). The control words, the round's weight total N = sum_i n_i, the
number of ranks asking to stop and (with a codec) the number of clients whose update is not
finite, travel in a float64 control lane that no codec rounds, clips or sparsifies; a codec may
add words of its own (a scale bound).

- `none`: one all-reduce of [sum_i n_i sent_i, N, stops] in the model dtype, as before codecs
  existed. It keeps that arithmetic (the weighted sum of what was sent, divided by N) rather
  than summing deltas, so float64 runs stay bitwise what they were. The control words ride in
  the same buffer because they are integers, which float64 holds exactly and float32 holds
  exactly up to 2^24 (16.7 million samples per round).
- any other codec: the control lane is its own float64 all-reduce, first; then, unless a stop
  was agreed, the codec's collectives (an all_gather, or one or two all-reduces) run on the
  updates weighted by w_i = n_i / N, so every sum is a weighted mean and cannot grow with the
  number of clients.

`run_round` returns the weighted mean of what was sent, w_g + sum_i w_i decode(Delta_i), or
None when some rank asked to stop (the round is then discarded everywhere); NaN everywhere when
a client diverged, so every rank stops on a non-finite w_g, whatever the codec would have made of
the NaN. The ledger records
each collective through the Communicator and, per round, the FL-equivalent uplink: each
participating client's encoded message, exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from pfl_dist.comm import Communicator, Traffic
from pfl_dist.errors import ConfigError
from pfl_dist.exchange.base import Codec, GatherLayout, RoundInput
from pfl_dist.exchange.downlink import Downlink
from pfl_dist.exchange.spec import parse_codec
from pfl_dist.sampling import client_block
from pfl_dist.store import ClientStore


class TrainingWire:
    """The Communicator's collectives as training traffic, for codecs."""

    def __init__(self, comm: Communicator) -> None:
        self.comm = comm
        self.world_size = comm.runtime.world_size

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.comm.all_reduce(tensor, traffic=Traffic.TRAIN)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.comm.all_gather(tensor, traffic=Traffic.TRAIN)


class Exchange:
    def __init__(self, codec: str, *, comm: Communicator, shapes: Sequence[torch.Size], client_ids: range,
                 num_clients: int, dtype: torch.dtype, device: torch.device, seed: int, message: str,
                 store: ClientStore | None = None, downlink_codec: str = "none",
                 reference: torch.Tensor | None = None) -> None:
        """`downlink_codec` other than none needs `reference`: what every client holds at the start
        (the algorithm's wire reference of the initial w_g, pfl_dist/exchange/downlink.py)."""
        self.spec = parse_codec(codec)
        self.downlink_spec = parse_codec(downlink_codec, key="comm.downlink_codec")
        self.message = message
        self.comm = comm
        self.wire = TrainingWire(comm)
        self.client_ids = client_ids
        self.num_clients = num_clients
        self.dtype = dtype
        self.device = device
        self.num_params = sum(int(np.prod(s)) for s in shapes)
        self.model_bytes = self.num_params * torch.empty((), dtype=dtype).element_size()
        self.codec: Codec | None = None
        if self.spec.name != "none":
            self.codec = Codec(self.spec, shapes=shapes, num_local_clients=len(client_ids), dtype=dtype,
                               device=device, seed=seed, message=message, store=store)
        self.downlink: Downlink | None = None
        if self.downlink_spec.name != "none":
            assert reference is not None, "a downlink codec needs the clients' initial reference"
            self.downlink = Downlink(self.downlink_spec, shapes=shapes, reference=reference, seed=seed)

    def downlink_message_bytes(self) -> int:
        """The exact size of one client's downlink message (the dense model without a downlink codec)."""
        return self.downlink.message_bytes() if self.downlink is not None else self.model_bytes

    def receive(self, round_idx: int, reference: torch.Tensor) -> torch.Tensor:
        """What every client receives of the server's `reference` this round: itself without a
        downlink codec, otherwise the same decoded broadcast on every rank (no collective)."""
        return reference if self.downlink is None else self.downlink.receive(round_idx, reference)

    def commit_received(self, received: torch.Tensor) -> None:
        """The round completed: what the clients received is the next round's reference."""
        if self.downlink is not None:
            self.downlink.commit(received)

    def message_bytes(self) -> int:
        """The exact encoded size of one client's message."""
        return self.codec.message_bytes() if self.codec is not None else self.model_bytes

    def run_round(self, round_idx: int, *, global_model: torch.Tensor, sent: torch.Tensor, rows: torch.Tensor,
                  counts: torch.Tensor, sampled: np.ndarray, stop: bool,
                  received: torch.Tensor | None = None) -> torch.Tensor | None:
        """`sent` (k, P): what this rank's sampled clients send (rows `rows`, weights `counts`,
        sorted by client id); `sampled`: every sampled client id; `received`: what the clients
        received of `global_model` (`receive`; None: `global_model` itself). -> `global_model` plus
        the weighted mean of sent_i - received (what was sent, with a dense downlink), or None when
        some rank asked to stop: the uplink deltas are taken against what the clients received and
        the server's step is applied to the true model (EF21-P's rule)."""
        reference = global_model if received is None else received
        if self.codec is None:
            average = self._dense_round(sent, counts, stop=stop)
        else:
            average = self._codec_round(self.codec, round_idx, reference, sent, rows, counts, sampled, stop=stop)
        if average is not None and received is not None:
            average = average + (global_model - received)  # the clients' mean change, on the true model
        if average is not None:
            num_sampled = len(sampled)
            self.comm.record_client_traffic(uplink_bytes=num_sampled * self.message_bytes(),
                                            uplink_bytes_dense=num_sampled * self.model_bytes,
                                            downlink_bytes=num_sampled * self.downlink_message_bytes(),
                                            downlink_bytes_dense=num_sampled * self.model_bytes)
        return average

    def _dense_round(self, sent: torch.Tensor, counts: torch.Tensor, *, stop: bool) -> torch.Tensor | None:
        p = self.num_params
        buffer = torch.zeros(p + 2, dtype=sent.dtype, device=sent.device)
        if sent.shape[0]:
            buffer[:p] = counts.to(sent.dtype) @ sent
            buffer[p] = counts.sum()
        buffer[p + 1] = float(stop)
        self.comm.all_reduce(buffer, traffic=Traffic.TRAIN)
        if float(buffer[p + 1]) > 0:
            return None
        return buffer[:p] / buffer[p]

    def _codec_round(self, codec: Codec, round_idx: int, global_model: torch.Tensor, sent: torch.Tensor,
                     rows: torch.Tensor, counts: torch.Tensor, sampled: np.ndarray, *,
                     stop: bool) -> torch.Tensor | None:
        updates = sent - global_model
        diverged = float((~torch.isfinite(updates).all(dim=1)).sum())
        lane = torch.cat([torch.tensor([float(counts.double().sum()), float(stop), diverged], dtype=torch.float64),
                          codec.control_words(updates, counts).cpu()]).to(self.device)
        self.comm.all_reduce(lane, traffic=Traffic.TRAIN)
        if float(lane[1]) > 0:
            return None
        if float(lane[2]) > 0:
            # A client diverged somewhere: every rank gets a non-finite w_g and stops in this round,
            # as with `none`, whatever the codec would have made of the NaN (a sparsifier may drop it).
            return torch.full_like(global_model, math.nan)
        weight_total = float(lane[0])
        round_input = RoundInput(
            round_idx=round_idx, updates=updates, weights=counts.double() / weight_total, rows=rows,
            client_ids=rows.cpu() + self.client_ids.start, control=lane[3:], weight_total=weight_total,
            layout=self.layout(sampled))
        return global_model + codec.aggregate(round_input, self.wire)

    def layout(self, sampled: np.ndarray) -> GatherLayout:
        world_size = self.comm.runtime.world_size
        counts = []
        for rank in range(world_size):
            block = client_block(rank, world_size=world_size, num_clients=self.num_clients)
            counts.append(int(np.count_nonzero((sampled >= block.start) & (sampled < block.stop))))
        return GatherLayout(tuple(counts))

    # --- state (per-client rows keyed by client id; replicated words) ----------------------

    def client_state(self) -> dict[str, torch.Tensor]:
        return self.codec.client_state() if self.codec is not None else {}

    def check_client_rows(self, unexpected: Sequence[str]) -> None:
        """Refuse (one line) a checkpoint's per-client rows that no part of this run declares (the
        run's ClientStore loads the declared ones, this codec's residual among them)."""
        if unexpected:
            # Written before error feedback followed the message (a residual was kept for kept state):
            # resuming it would mix two rules in one run.
            raise ConfigError(f"cannot resume: the checkpoint holds {', '.join(unexpected)}, which comm.codec="
                              f"{self.spec} does not keep for this method's message (an older pfl_dist kept "
                              "error-feedback residuals for kept state too); use another run.name or --overwrite")

    def replicated_state(self) -> dict[str, torch.Tensor]:
        return self.codec.replicated_state() if self.codec is not None else {}

    def load_replicated_state(self, state: dict[str, torch.Tensor]) -> None:
        if self.codec is not None:
            self.codec.load_replicated_state(state)

    def downlink_state(self) -> dict[str, object]:
        """The downlink's replicated state (the clients' reference h, its compressor's state); {} without."""
        return self.downlink.state() if self.downlink is not None else {}

    def load_downlink_state(self, state: dict[str, object]) -> None:
        if self.downlink is not None:
            self.downlink.load_state(state)
