"""A model of the communication time of a training round, to print next to the measured one.

A ring all-reduce over W ranks takes 2(W-1) steps (reduce-scatter, then all-gather); in each,
every rank sends one chunk of payload/W bytes to its successor and receives one from its
predecessor. With one-way latency d per hop and links of rate r (bit/s), the steps pipeline
over the slowest link, so

    T_comm = 2(W-1) d + 8 B / r_min,      B = 2(W-1)/W x payload (wire bytes per rank)

(d is about 0 on veth links without netem). B is pfl_dist.comm's modelled wire bytes; on
1500-byte frames TCP/IP and Ethernet headers add about 4.5%, which the measured wire bytes show.
With a codec (comm.codec) a round may hold other collectives (a ring all-gather is W-1 steps);
`round_seconds` takes the round's wire bytes and steps from the byte ledger.

A straggler: one node s with rate r_s < r. Every rank's collective then ends at T_comm(r_s),
but not at the same moment: the ring's all-gather delivers the chunks that crossed s's slow link
late to the ranks downstream of it, one chunk time later per hop closer to s. Rank s+j (j = 1 ..
W-1 hops after s in ring order) leaves the collective about (j - 1) chunk times of the slow link
earlier than rank s+1, minus what the fast links need, and arrives at the next round's
collective that much earlier (the same compute after it): the time it then waits is

    wait(s+j) = (j - 1) x 8 (payload/W) x (1/r_s - 1/r),   wait(s) ~ wait(s+1) ~ 0

(`straggler_wait_seconds`). This pipeline picture ignores TCP's ramp-up and the queues in front of
the shaper; the measured values say how far that goes.
"""

from __future__ import annotations

from pfl_dist.comm import ring_all_reduce_wire_bytes


def ring_steps(world_size: int) -> int:
    return 2 * (world_size - 1)


def collective_seconds(payload_bytes: int, world_size: int, *, rates_bps: list[int], latency_s: float = 0.0) -> float:
    """Modelled time of one ring all-reduce of payload_bytes over links of these rates (one per
    rank, in ring order)."""
    if world_size < 2:
        return 0.0
    wire = ring_all_reduce_wire_bytes(payload_bytes, world_size)
    return round_seconds(wire, steps=ring_steps(world_size), rates_bps=rates_bps, latency_s=latency_s)


def round_seconds(wire_bytes_per_rank: float, *, steps: int, rates_bps: list[int], latency_s: float = 0.0) -> float:
    """Modelled communication time of a round: `steps` ring steps of latency, and the wire bytes
    each rank sends, over the slowest link."""
    return steps * latency_s + 8 * wire_bytes_per_rank / min(rates_bps)


def straggler_wait_seconds(payload_bytes: int, rates_bps: list[int]) -> list[float]:
    """Modelled wait of every rank (in ring order) at the next collective when one rank's link is
    slower than the others' (see the module doc); zeros when all rates are equal."""
    world_size = len(rates_bps)
    slow = min(range(world_size), key=lambda r: rates_bps[r])
    fast = max(rates_bps)
    if rates_bps[slow] == fast or world_size < 3:
        return [0.0] * world_size
    chunk_bits = 8 * payload_bytes / world_size
    per_hop = chunk_bits * (1 / rates_bps[slow] - 1 / fast)
    waits = [0.0] * world_size
    for j in range(1, world_size):
        waits[(slow - j) % world_size] = (j - 1) * per_hop  # gloo's ring sends from rank r to r - 1
    return waits
