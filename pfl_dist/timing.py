"""Where each round's time goes: local compute, communication, and waiting for slower ranks.

Every rank measures, per training round (pfl_dist/comm.py takes the collective's timestamps):
- its arrival: the wall-clock time (``time.time()``) when it entered the round's training
  all-reduce;
- in_collective_s: how long it spent inside that all-reduce;
- compute_s: the rest of the round (sampling, local updates, packing, the global step).

No collective is added for this. The rows of the rounds since the previous evaluation ride on the
evaluation's metric all-reduce (a sum: each rank fills its own slot of a (world size, rounds, 3)
block, the others add zeros, so the sum is every rank's exact values). Then, per round,

    wait_s(r) = max over ranks of arrival - arrival(r)      time spent for the slowest rank to arrive
    comm_s(r) = in_collective_s(r) - wait_s(r)              the collective itself, once all were in

Arrivals are compared across ranks, so their clocks must agree: exact for nodes on one machine
(pfl_dist.netem), as good as NTP across machines. A round with no measurement (rounds before a
resume that were not yet evaluated) is skipped. A single process has no collective: its comm_s and
wait_s are 0 and its compute_s is the round.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

import torch

TIMING_KEY = "round_timing"
_COLUMNS = 3  # arrival, in_collective_s, compute_s


@dataclass
class RoundTimes:
    """One round's decomposition on every rank."""

    round: int
    compute_s: list[float]
    comm_s: list[float]
    wait_s: list[float]

    def mean(self, name: str) -> float:
        return statistics.fmean(getattr(self, name))


@dataclass
class RoundTimer:
    """Per-rank rows until the next evaluation; replicated decompositions and totals after it."""

    rank: int
    world_size: int
    last_eval_round: int = 0
    rows: dict[int, tuple[float, float, float]] = field(default_factory=dict)  # round -> own row
    totals: dict[str, float] = field(default_factory=lambda: {"compute_s": 0.0, "comm_s": 0.0, "wait_s": 0.0,
                                                               "train_s": 0.0})
    per_rank: dict[str, list[float]] = field(default_factory=dict)  # summed over measured rounds
    measured_rounds: int = 0

    def __post_init__(self) -> None:
        if not self.per_rank:
            self.per_rank = {k: [0.0] * self.world_size for k in ("compute_s", "comm_s", "wait_s")}

    def record(self, round_num: int, *, round_s: float, arrival: float | None, in_collective_s: float) -> None:
        """This rank's measurement of a completed round (arrival None: no collective this round)."""
        self.rows[round_num] = (arrival if arrival is not None else 0.0, in_collective_s, round_s - in_collective_s)
        self.totals["train_s"] += round_s

    def eval_block(self, round_num: int, device: torch.device) -> torch.Tensor:
        """(world size, rounds since the last evaluation, 3), this rank's slot filled: a sum over
        ranks carries everyone's rows. The size depends only on round numbers, so it is the same on
        every rank and in a resumed run."""
        block = torch.zeros(self.world_size, round_num - self.last_eval_round, _COLUMNS, dtype=torch.float64)
        for offset, round_idx in enumerate(range(self.last_eval_round + 1, round_num + 1)):
            if round_idx in self.rows:
                block[self.rank, offset] = torch.tensor(self.rows[round_idx], dtype=torch.float64)
        return block.to(device)

    def absorb(self, round_num: int, block: torch.Tensor | None) -> list[RoundTimes]:
        """The reduced block (None on one process: only this rank's rows) -> every measured round's
        decomposition since the last evaluation, added to the totals."""
        rounds = range(self.last_eval_round + 1, round_num + 1)
        if block is None:
            block = self.eval_block(round_num, torch.device("cpu"))
        done = []
        for offset, round_idx in enumerate(rounds):
            rows = block[:, offset].tolist()
            if any(row == [0.0, 0.0, 0.0] for row in rows):
                continue  # some rank did not measure this round (it ran before a resume)
            done.append(_decompose(round_idx, rows))
        for times in done:
            for name in ("compute_s", "comm_s", "wait_s"):
                values = getattr(times, name)
                self.totals[name] += statistics.fmean(values)
                self.per_rank[name] = [a + b for a, b in zip(self.per_rank[name], values, strict=True)]
        self.measured_rounds += len(done)
        self.rows = {r: row for r, row in self.rows.items() if r > round_num}
        self.last_eval_round = round_num
        return done

    def record_fields(self) -> dict[str, float]:
        """Cumulative times for metrics.jsonl: train_s (this rank's rounds, wall clock) and the
        mean over ranks of compute, comm and wait, summed over the measured rounds."""
        return dict(self.totals)

    def summary(self) -> dict[str, Any]:
        n = max(1, self.measured_rounds)
        return {"measured_rounds": self.measured_rounds,
                "train_s": self.totals["train_s"],
                **{f"{name}_per_round": self.totals[name] / n for name in ("compute_s", "comm_s", "wait_s")},
                "per_rank_per_round": {name: [v / n for v in values] for name, values in self.per_rank.items()}}

    def state_dict(self) -> dict[str, Any]:
        """Totals, and this rank's rows not yet evaluated (a resume then measures the same rounds)."""
        return {"totals": dict(self.totals), "per_rank": {k: list(v) for k, v in self.per_rank.items()},
                "measured_rounds": self.measured_rounds, "rows": {str(r): list(v) for r, v in self.rows.items()}}

    def load_state_dict(self, state: dict[str, Any] | None, *, round_num: int, eval_every: int) -> None:
        """Resume after round_num (state None: a checkpoint from before timings were kept; the rounds
        since the last evaluation before round_num are then unmeasured)."""
        self.last_eval_round = round_num - round_num % eval_every
        if state is None:
            return
        self.totals = dict(state["totals"])
        if all(len(v) == self.world_size for v in state["per_rank"].values()):  # else re-sharded
            self.per_rank = {k: list(v) for k, v in state["per_rank"].items()}
        self.measured_rounds = int(state["measured_rounds"])
        rows = {int(r): (float(v[0]), float(v[1]), float(v[2])) for r, v in state.get("rows", {}).items()}
        self.rows = {r: v for r, v in rows.items() if self.last_eval_round < r <= round_num}


def _decompose(round_num: int, rows: list[list[float]]) -> RoundTimes:
    arrivals = [row[0] for row in rows]
    latest = max(arrivals)
    wait = [latest - a for a in arrivals]
    comm = [max(0.0, row[1] - w) for row, w in zip(rows, wait, strict=True)]
    return RoundTimes(round=round_num, compute_s=[row[2] for row in rows], comm_s=comm, wait_s=wait)
