"""Link shaping with Linux tc: a rate per node (tbf or htb), and delay/jitter/loss with netem.

A node's link is shaped in both directions: its uplink on ``eth0`` inside the node's namespace,
its downlink on the hub-side end of its veth (the bridge port that sends to it). Delay, jitter
and loss are added on the uplink only, so one hop between two nodes has the one-way latency
``delay`` (the sender's netem) and the rate of the slower of the two links.

tbf's queue is sized to half a second at the link's rate: TCP senders on this machine then see
backpressure from the queue (TCP small queues) rather than drops, and the link stays busy.
Kernels without sch_netem (like the one these tools were built on) can still shape rates; a
request for delay or loss there fails up front with one line naming the missing qdisc.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, replace

from pfl_dist.errors import ConfigError
from pfl_dist.netem import state
from pfl_dist.netem.namespaces import INTERFACE_NAME, NetnsCluster, Node, run_command

_RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9,
               "bps": 8, "kbps": 8 * 10**3, "mbps": 8 * 10**6, "gbps": 8 * 10**9}
_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
QUEUE_SECONDS = 0.5
MIN_BURST_BYTES = 3200  # at least two full frames: tbf cannot send a frame larger than its burst
SHAPERS = ("tbf", "htb")


@dataclass(frozen=True)
class LinkSpec:
    """One node's link: rate in bit/s (None = unshaped), one-way delay and jitter in seconds,
    loss as a fraction."""

    rate_bps: int | None = None
    delay_s: float = 0.0
    jitter_s: float = 0.0
    loss: float = 0.0

    @property
    def needs_netem(self) -> bool:
        return self.delay_s > 0 or self.jitter_s > 0 or self.loss > 0

    def describe(self) -> str:
        parts = [format_rate(self.rate_bps) if self.rate_bps else "unshaped"]
        if self.delay_s or self.jitter_s:
            jitter = f" ± {self.jitter_s * 1e3:g} ms" if self.jitter_s else ""
            parts.append(f"delay {self.delay_s * 1e3:g} ms{jitter}")
        if self.loss:
            parts.append(f"loss {self.loss * 100:g}%")
        return ", ".join(parts)


def parse_rate(text: str, *, what: str = "--rate") -> int:
    """'10mbit' -> 10_000_000 bit/s (tc's units: bit, kbit, mbit, gbit; bps, kbps, mbps, gbps are bytes/s)."""
    match = re.fullmatch(_NUMBER + r"\s*([a-z]+)", text.strip().lower())
    if not match or match.group(2) not in _RATE_UNITS:
        raise ConfigError(f"{what} must be a number with a unit ({', '.join(_RATE_UNITS)}), e.g. 10mbit; got '{text}'")
    rate = round(float(match.group(1)) * _RATE_UNITS[match.group(2)])
    if rate < 8000:
        raise ConfigError(f"{what} must be at least 8kbit, got '{text}'")
    return rate


def parse_time(text: str, *, what: str) -> float:
    """'20ms' -> 0.02 (units s, ms, us)."""
    match = re.fullmatch(_NUMBER + r"\s*(s|ms|us)", text.strip().lower())
    if not match:
        raise ConfigError(f"{what} must be a number with a unit (s, ms, us), e.g. 20ms; got '{text}'")
    return float(match.group(1)) * _TIME_UNITS[match.group(2)]


def parse_loss(text: str, *, what: str = "--loss") -> float:
    """'0.1%' -> 0.001."""
    match = re.fullmatch(_NUMBER + r"\s*%", text.strip())
    if not match or float(match.group(1)) > 100:
        raise ConfigError(f"{what} must be a percentage between 0% and 100%, e.g. 0.1%; got '{text}'")
    return float(match.group(1)) / 100


def parse_node_override(text: str, *, num_nodes: int, what: str) -> tuple[int, str]:
    """'3=1mbit' -> (3, '1mbit'), checking the node index."""
    index, sep, value = text.partition("=")
    if not sep or not index.strip().isdigit():
        raise ConfigError(f"{what} must be NODE=VALUE with a node index, e.g. 3=1mbit; got '{text}'")
    node = int(index)
    if node >= num_nodes:
        raise ConfigError(f"{what} names node {node}, but there are only {num_nodes} nodes (0..{num_nodes - 1})")
    return node, value


def node_links(base: LinkSpec, *, num_nodes: int, rates: list[str], delays: list[str]) -> list[LinkSpec]:
    """Every node's link: the base spec with per-node rate/delay overrides ('3=1mbit', '1=50ms')."""
    links = [base] * num_nodes
    for text in rates:
        node, value = parse_node_override(text, num_nodes=num_nodes, what="--node-rate")
        links[node] = replace(links[node], rate_bps=parse_rate(value, what=f"--node-rate {node}"))
    for text in delays:
        node, value = parse_node_override(text, num_nodes=num_nodes, what="--node-delay")
        links[node] = replace(links[node], delay_s=parse_time(value, what=f"--node-delay {node}"))
    return links


def format_rate(rate_bps: float) -> str:
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if rate_bps >= scale:
            return f"{rate_bps / scale:g} {unit}"
    return f"{rate_bps:g} bit/s"


def qdisc_available(kind: str) -> tuple[bool, str]:
    """Whether this kernel has the qdisc: add it to a throwaway namespace's loopback."""
    probe = f"{state.PROBE_PREFIX}{uuid.uuid4().hex[:8]}"
    args = {"netem": ["delay", "1ms"], "tbf": ["rate", "1mbit", "burst", "3200", "limit", "10000"],
            "htb": []}[kind]
    try:
        made = run_command(["ip", "netns", "add", probe], check=False)
        if made.returncode != 0:
            return False, f"cannot make a namespace to probe for {kind}: {made.stderr.strip()}"
        done = run_command(["tc", "-n", probe, "qdisc", "add", "dev", "lo", "root", kind, *args], check=False)
    finally:
        run_command(["ip", "netns", "delete", probe], check=False)
    if done.returncode != 0:
        said = done.stderr.strip().splitlines()[0] if done.stderr.strip() else f"exit {done.returncode}"
        return False, f"this kernel has no {kind} qdisc (tc: {said})"
    return True, f"{kind} is available"


def _burst_bytes(rate_bps: int) -> int:
    return max(MIN_BURST_BYTES, rate_bps // 8 // 500)  # 2 ms at the rate, at least two frames


def _rate_commands(device: str, rate_bps: int, *, shaper: str, parent: str) -> list[list[str]]:
    burst = _burst_bytes(rate_bps)
    limit = max(64_000, int(rate_bps / 8 * QUEUE_SECONDS)) + burst
    where = ["root"] if parent == "root" else ["parent", parent]
    if shaper == "tbf":
        return [["qdisc", "add", "dev", device, *where, "handle", "10:", "tbf", "rate", f"{rate_bps}bit",
                 "burst", str(burst), "limit", str(limit)]]
    return [["qdisc", "add", "dev", device, *where, "handle", "10:", "htb", "default", "1"],
            ["class", "add", "dev", device, "parent", "10:", "classid", "10:1", "htb", "rate", f"{rate_bps}bit",
             "ceil", f"{rate_bps}bit", "burst", str(burst), "cburst", str(burst)]]


def _netem_command(device: str, link: LinkSpec) -> list[str]:
    args = ["qdisc", "add", "dev", device, "root", "handle", "1:", "netem"]
    if link.delay_s or link.jitter_s:
        args += ["delay", f"{link.delay_s * 1e6:.0f}us"] + ([f"{link.jitter_s * 1e6:.0f}us"] if link.jitter_s else [])
    if link.loss:
        args += ["loss", f"{link.loss * 100:g}%"]
    return args


def shape_node(cluster: NetnsCluster, node: Node, link: LinkSpec, *, shaper: str = "tbf") -> None:
    """Uplink (eth0 in the node): netem for delay/loss if asked, the rate below it; downlink (the
    hub's port to the node): the rate only."""
    assert shaper in SHAPERS
    uplink: list[list[str]] = []
    if link.needs_netem:
        uplink.append(_netem_command(INTERFACE_NAME, link))
    if link.rate_bps:
        uplink += _rate_commands(INTERFACE_NAME, link.rate_bps, shaper=shaper,
                                 parent="1:1" if link.needs_netem else "root")
        for args in _rate_commands(node.hub_port, link.rate_bps, shaper=shaper, parent="root"):
            run_command(["tc", "-n", cluster.hub_namespace, *args])
    for args in uplink:
        run_command(["tc", "-n", node.namespace, *args])


def qdisc_report(cluster: NetnsCluster, node: Node) -> str:
    """`tc -s qdisc show` of both ends of a node's link (for logs and tests)."""
    up = run_command(["tc", "-s", "-n", node.namespace, "qdisc", "show", "dev", INTERFACE_NAME], check=False)
    down = run_command(["tc", "-s", "-n", cluster.hub_namespace, "qdisc", "show", "dev", node.hub_port], check=False)
    return f"uplink {INTERFACE_NAME}:\n{up.stdout}downlink {node.hub_port}:\n{down.stdout}"
