"""The Communicator (the only path to torch.distributed collectives) and its byte ledger.

Byte accounting, in one place, per collective type (all_reduce, all_gather):
- payload_bytes: numel * element_size of each tensor handed to a collective, per rank (for an
  all_gather, the tensor this rank contributes, not the gathered result).
- wire_bytes_model: what the collective algorithm puts on the network, per rank, from the
  formulas in `WIRE_BYTES_PER_RANK` (each function derives its formula; gloo's CPU all-reduce
  was measured to move exactly the ring amount).
- uplink_bytes / downlink_bytes: FL-equivalent traffic, the exact encoded size of each
  participating client's message to a server (the model, or the codec's encoding with its
  indices and scales) and of the model sent back (comm.downlink_codec's message, with its control
  words). Comparable with papers that count rounds x model size. uplink_bytes_dense and
  downlink_bytes_dense are the same without a codec, so uplink_bytes_dense / uplink_bytes is the
  codec's compression ratio (downlink_bytes_dense / downlink_bytes the downlink codec's).
- wire_bytes_measured: the interface's tx_bytes counter around each collective, read on local
  rank 0 of every node when GLOO_SOCKET_IFNAME names an interface; None otherwise.

Collectives are SPMD: every rank issues the same collectives with the same sizes, so the job
total of payload and modelled wire bytes is world_size x the per-rank amount, computed on every
rank without any communication. Only the measured counters differ by node; they are summed
across ranks in the evaluation reduction (`measured_local`).
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist

from pfl_dist.runtime import Runtime


class Traffic(enum.Enum):
    TRAIN = "train"  # the model exchange of a training round: what the trade-off curves count
    TELEMETRY = "telemetry"  # metric reductions, set-up agreement (smoothness, resume round)


def ring_all_reduce_wire_bytes(payload_bytes: int, world_size: int) -> int:
    """Ring all-reduce of a B-byte buffer: the buffer is cut into W chunks of B/W. Reduce-scatter
    takes W-1 steps, in each a rank sends one chunk to its neighbour (it ends owning one fully
    reduced chunk); all-gather takes W-1 more steps passing the reduced chunks on. So each rank
    sends 2(W-1) chunks = 2(W-1)/W * B."""
    return 2 * (world_size - 1) * payload_bytes // world_size


def ring_all_gather_wire_bytes(payload_bytes: int, world_size: int) -> int:
    """Ring all-gather of B bytes from each rank (W*B gathered): in each of W-1 steps a rank
    forwards one B-byte block it has not yet passed on, so each rank sends (W-1) * B, which is
    (W-1)/W of the gathered total."""
    return (world_size - 1) * payload_bytes


WIRE_BYTES_PER_RANK: dict[str, Callable[[int, int], int]] = {
    "all_reduce": ring_all_reduce_wire_bytes,
    "all_gather": ring_all_gather_wire_bytes,
}
COLLECTIVES = tuple(WIRE_BYTES_PER_RANK)

_REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


@dataclass
class Counters:
    """Job-level byte counters of one traffic class (summed over all ranks)."""

    payload_bytes: int = 0
    wire_bytes_model: int = 0
    uplink_bytes: int = 0
    uplink_bytes_dense: int = 0  # the uplink had every client sent its dense model
    downlink_bytes: int = 0
    downlink_bytes_dense: int = 0  # the downlink had every client received the dense model
    num_collectives: int = 0
    # The same three numbers per collective type (they add up to the totals above).
    all_reduce_payload_bytes: int = 0
    all_reduce_wire_bytes_model: int = 0
    all_reduce_num_collectives: int = 0
    all_gather_payload_bytes: int = 0
    all_gather_wire_bytes_model: int = 0
    all_gather_num_collectives: int = 0
    wire_bytes_measured: int | None = None

    @classmethod
    def collective(cls, kind: str, *, payload_bytes: int, wire_bytes_model: int) -> Counters:
        """One collective of type `kind` (job totals), counted in the totals and under its type."""
        return cls(payload_bytes=payload_bytes, wire_bytes_model=wire_bytes_model, num_collectives=1,
                   **{f"{kind}_payload_bytes": payload_bytes, f"{kind}_wire_bytes_model": wire_bytes_model,
                      f"{kind}_num_collectives": 1})

    @property
    def compression_ratio(self) -> float | None:
        """Dense uplink / encoded uplink; None when nothing was sent."""
        return self.uplink_bytes_dense / self.uplink_bytes if self.uplink_bytes else None

    def add(self, other: Counters) -> None:
        for name in _ADDITIVE_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_dict(self) -> dict[str, int | None]:
        return asdict(self)


# wire_bytes_measured is not additive per rank: it is summed over nodes at evaluation.
# (Computed once: `fields()` per call showed in the profile of 500-round runs.)
_ADDITIVE_FIELDS = tuple(f.name for f in fields(Counters) if f.name != "wire_bytes_measured")


class InterfaceCounter:
    """tx_bytes of the interface named by GLOO_SOCKET_IFNAME, or None when there is none."""

    def __init__(self, ifname: str | None) -> None:
        path = Path(f"/sys/class/net/{ifname}/statistics/tx_bytes") if ifname else None
        self.path = path if path is not None and path.exists() else None

    def read(self) -> int | None:
        return int(self.path.read_text()) if self.path is not None else None


class ByteLedger:
    """Per-round and cumulative counters for each traffic class. Replicated on every rank."""

    def __init__(self) -> None:
        self.round = {t: Counters() for t in Traffic}
        self.total = {t: Counters() for t in Traffic}
        # This node's measured bytes (local rank 0 only), not yet summed over nodes.
        self.measured_local = {t: 0 for t in Traffic}
        self.measuring = False

    def record(self, traffic: Traffic, counters: Counters) -> None:
        self.round[traffic].add(counters)

    def close_round(self) -> dict[Traffic, Counters]:
        closed = self.round
        for traffic, counters in closed.items():
            self.total[traffic].add(counters)
        self.round = {t: Counters() for t in Traffic}
        return closed

    def set_measured_totals(self, train: int, telemetry: int) -> None:
        """Store the all-node sums of the measured counters (taken in an eval reduction)."""
        self.total[Traffic.TRAIN].wire_bytes_measured = train
        self.total[Traffic.TELEMETRY].wire_bytes_measured = telemetry

    def state_dict(self) -> dict[str, object]:
        return {
            "total": {t.value: self.total[t].to_dict() for t in Traffic},
            "measured_local": {t.value: self.measured_local[t] for t in Traffic},
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        totals = state["total"]
        measured = state["measured_local"]
        assert isinstance(totals, dict) and isinstance(measured, dict)
        self.total = {t: Counters(**totals[t.value]) for t in Traffic}
        self.measured_local = {t: int(measured[t.value]) for t in Traffic}


class Communicator:
    """Every collective of pfl_dist goes through here, so every byte is counted."""

    def __init__(self, runtime: Runtime, ledger: ByteLedger) -> None:
        self.runtime = runtime
        self.ledger = ledger
        ifname = os.environ.get("GLOO_SOCKET_IFNAME") if runtime.distributed else None
        # One reader per node: the interface is shared by the node's ranks.
        self.interface = InterfaceCounter(ifname if runtime.local_rank == 0 else None)
        ledger.measuring = ifname is not None
        # This round's training collectives: when this rank entered the first, and the time inside
        # all of them (pfl_dist/timing.py turns these into comm and wait time).
        self.round_arrival: float | None = None
        self.round_collective_s = 0.0
        self._started = 0.0

    def take_round_timing(self) -> tuple[float | None, float]:
        """(arrival wall-clock time, seconds inside training collectives) since the last call."""
        timing = (self.round_arrival, self.round_collective_s)
        self.round_arrival, self.round_collective_s = None, 0.0
        return timing

    def all_reduce(self, tensor: torch.Tensor, *, traffic: Traffic, op: str = "sum") -> torch.Tensor:
        """In-place all-reduce of one flat buffer; a no-op (but still counted) on one process."""
        before = self._begin(traffic)
        if self.runtime.distributed:
            dist.all_reduce(tensor, op=_REDUCE_OPS[op])
        self._count("all_reduce", tensor, traffic=traffic, before=before)
        return tensor

    def all_gather(self, tensor: torch.Tensor, *, traffic: Traffic) -> torch.Tensor:
        """(W * n,) holding every rank's flat (n,) `tensor` in rank order (every rank passes the
        same n); on one process, a copy of `tensor` (still counted)."""
        before = self._begin(traffic)
        if self.runtime.distributed:
            gathered = torch.empty(self.runtime.world_size * tensor.numel(), dtype=tensor.dtype, device=tensor.device)
            dist.all_gather_into_tensor(gathered, tensor)
        else:
            gathered = tensor.clone()
        self._count("all_gather", tensor, traffic=traffic, before=before)
        return gathered

    def _begin(self, traffic: Traffic) -> int | None:
        """Before a collective: the training round's arrival time and start, the interface counter."""
        if traffic is Traffic.TRAIN and self.round_arrival is None:
            self.round_arrival = time.time()  # wall clock: compared across ranks (same machine, or NTP)
        self._started = time.perf_counter()
        return self.interface.read()

    def _count(self, kind: str, tensor: torch.Tensor, *, traffic: Traffic, before: int | None) -> None:
        after = self.interface.read()
        if traffic is Traffic.TRAIN:
            self.round_collective_s += time.perf_counter() - self._started
        if before is not None and after is not None:
            self.ledger.measured_local[traffic] += after - before
        world_size = self.runtime.world_size
        payload = tensor.numel() * tensor.element_size()
        wire = WIRE_BYTES_PER_RANK[kind](payload, world_size)
        self.ledger.record(traffic, Counters.collective(kind, payload_bytes=payload * world_size,
                                                        wire_bytes_model=wire * world_size))

    def record_client_traffic(self, *, uplink_bytes: int, uplink_bytes_dense: int, downlink_bytes: int,
                              downlink_bytes_dense: int) -> None:
        """FL-equivalent bytes of a round: the participants' encoded messages to the server and the
        encoded models sent to them (comm.downlink_codec), each beside what it would have been dense."""
        self.ledger.record(Traffic.TRAIN, Counters(uplink_bytes=uplink_bytes, uplink_bytes_dense=uplink_bytes_dense,
                                                   downlink_bytes=downlink_bytes,
                                                   downlink_bytes_dense=downlink_bytes_dense))
