"""`python -m pfl_dist.netem --nodes N --rate 10mbit [--delay 20ms --loss 0.1%] [--node-rate 3=1mbit]
--config X.yaml [section.key=value ...]`: run a config over an emulated network.

One network namespace per node on this machine (the compose topology: a bridge, one veth per
node, addresses 10.77.0.x/24 that exist only inside the namespaces), links shaped with tc, one
torchrun agent with one rank per node (static rendezvous: node i is rank i, so --node-rate 3=...
slows rank 3). Needs CAP_NET_ADMIN (root). At the end it prints the measured communication time,
wait time and wire bytes next to the model (pfl_dist/netem/model.py) and writes them to
<run dir>/netem.json. Node logs: <run dir>/netem/node<i>.log.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pfl_dist.config import Config, load_config
from pfl_dist.errors import ConfigError, OneLineParser, PflError
from pfl_dist.launch import TORCHRUN_ENV, preflight, torchrun_command
from pfl_dist.netem import model, state
from pfl_dist.netem.namespaces import (
    FIRST_HOST_OCTET,
    MAX_NODES,
    SUBNET_PREFIX,
    NetnsCluster,
    NetnsError,
    netns_available,
    netns_cluster,
    remove_leftovers,
)
from pfl_dist.netem.shaping import (
    SHAPERS,
    LinkSpec,
    node_links,
    parse_loss,
    parse_rate,
    parse_time,
    qdisc_available,
    shape_node,
)
from pfl_dist.outputs import format_bytes, write_json_atomic

MASTER_PORT = 29500


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="python -m pfl_dist.netem", description=__doc__.split("\n\n")[1])
    parser.add_argument("--nodes", type=int, help="number of nodes (namespaces), one rank each")
    parser.add_argument("--rate", help="every link's rate, e.g. 10mbit (default: unshaped)")
    parser.add_argument("--delay", help="one-way delay per hop, e.g. 20ms (needs the netem qdisc)")
    parser.add_argument("--jitter", help="delay jitter, e.g. 5ms (needs the netem qdisc)")
    parser.add_argument("--loss", help="packet loss, e.g. 0.1%% (needs the netem qdisc)")
    parser.add_argument("--node-rate", action="append", default=[], metavar="I=RATE",
                        help="node I's rate instead of --rate, e.g. 3=1mbit (a straggler); repeatable")
    parser.add_argument("--node-delay", action="append", default=[], metavar="I=DELAY",
                        help="node I's delay instead of --delay; repeatable")
    parser.add_argument("--shaper", choices=SHAPERS, default="tbf", help="qdisc for the rate (default tbf)")
    parser.add_argument("--congestion-control", metavar="NAME", default="reno",
                        help="TCP congestion control in the nodes (default reno: built into every kernel and always "
                             "allowed in a namespace; 'kernel' keeps the kernel's default, e.g. bbr)")
    parser.add_argument("--timeout", type=float, default=None, help="end the job after this many seconds")
    parser.add_argument("--cleanup", action="store_true",
                        help="only remove leftovers of killed earlier runs, then exit")
    parser.add_argument("--config", help="YAML experiment config")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    return parser.parse_args(argv)


def check_node_count(nodes: int | None) -> None:
    """2..MAX_NODES: one rank per node, each node an address of the emulated /24."""
    if nodes is None or nodes < 2:
        raise ConfigError("--nodes must be at least 2 (one rank per node)")
    if nodes > MAX_NODES:
        raise ConfigError(f"--nodes {nodes}: at most {MAX_NODES} nodes fit in the emulated network's /24 "
                          f"({SUBNET_PREFIX}.{FIRST_HOST_OCTET}-{FIRST_HOST_OCTET + MAX_NODES - 1})")


def build_links(args: argparse.Namespace) -> list[LinkSpec]:
    check_node_count(args.nodes)
    base = LinkSpec(rate_bps=parse_rate(args.rate) if args.rate else None,
                    delay_s=parse_time(args.delay, what="--delay") if args.delay else 0.0,
                    jitter_s=parse_time(args.jitter, what="--jitter") if args.jitter else 0.0,
                    loss=parse_loss(args.loss) if args.loss else 0.0)
    return node_links(base, num_nodes=args.nodes, rates=args.node_rate, delays=args.node_delay)


def check_host(links: list[LinkSpec], args: argparse.Namespace) -> None:
    """Privileges and qdiscs, before anything is made: one line and exit 2 when missing."""
    available, reason = netns_available()
    if not available:
        raise ConfigError(f"an emulated network needs CAP_NET_ADMIN (run as root): {reason}")
    if any(link.needs_netem for link in links):
        ok, reason = qdisc_available("netem")
        if not ok:
            asked = [flag for flag, value in (("--delay", args.delay or args.node_delay), ("--jitter", args.jitter),
                                              ("--loss", args.loss)) if value]
            raise ConfigError(f"{'/'.join(asked)} need the netem qdisc: {reason}; only rates (--rate, tbf/htb) "
                              "can be emulated here")
    allowed_file = Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control")
    allowed = allowed_file.read_text().split() if allowed_file.exists() else []
    if args.congestion_control != "kernel" and allowed and args.congestion_control not in allowed:
        raise ConfigError(f"--congestion-control {args.congestion_control} is not allowed in a namespace here "
                          f"(allowed: {' '.join(allowed)}; or 'kernel' for the kernel's default)")
    if any(link.rate_bps for link in links):
        ok, reason = qdisc_available(args.shaper)
        if not ok:
            raise ConfigError(f"--rate needs the {args.shaper} qdisc: {reason}")


def node_command(cfg_path: str | None, overrides: list[str], *, node: int, num_nodes: int, master: str) -> list[str]:
    torchrun = torchrun_command([f"--nnodes={num_nodes}", "--nproc-per-node=1", f"--node-rank={node}",
                                 f"--master-addr={master}", f"--master-port={MASTER_PORT}", "--max-restarts=0"])
    config = ["--config", str(Path(cfg_path).resolve())] if cfg_path else []
    cpus = sorted(os.sched_getaffinity(0))
    # Each node on a core of its own where there are enough, else round robin: a node's threads
    # then never outnumber its cores (pfl_dist.runtime.set_num_threads follows the affinity).
    return ["taskset", "-c", str(cpus[node % len(cpus)]), *torchrun, "-m", "pfl_dist.train", *config, *overrides]


def _follow(path: Path, stop: threading.Event) -> None:
    """Print node 0's output as it comes (its rank-0 progress lines)."""
    position = 0
    while True:
        finished = stop.wait(0.5)
        if path.exists():
            with open(path, errors="replace") as f:
                f.seek(position)
                sys.stdout.write(f.read())
                position = f.tell()
            sys.stdout.flush()
        if finished:
            return


def run_cluster(cfg: Config, args: argparse.Namespace, links: list[LinkSpec]) -> tuple[dict[str, int], NetnsCluster]:
    names = [f"node{i}" for i in range(args.nodes)]
    log_dir = cfg.run_dir / "netem"
    log_dir.mkdir(parents=True, exist_ok=True)
    overrides = [*args.overrides, f"run.out_dir={Path(cfg.run.out_dir).resolve()}"]
    env = {**os.environ, **TORCHRUN_ENV, "GLOO_SOCKET_IFNAME": "eth0", "PYTHONUNBUFFERED": "1"}
    with netns_cluster(names) as cluster:
        for name, link in zip(names, links, strict=True):
            if link.rate_bps or link.needs_netem:
                shape_node(cluster, cluster.nodes[name], link, shaper=args.shaper)
        for name in names if args.congestion_control != "kernel" else ():
            # /proc/sys/net is the namespace's own (no dependency on procps' sysctl).
            cluster.exec(name, ["sh", "-c", f"echo {shlex.quote(args.congestion_control)} "
                                "> /proc/sys/net/ipv4/tcp_congestion_control"])
        master = cluster.nodes[names[0]].address
        for i, name in enumerate(names):
            command = node_command(args.config, overrides, node=i, num_nodes=args.nodes, master=master)
            cluster.start(name, command, env=env, log_dir=log_dir)
        state.update(cluster.suffix, phase="running", run_dir=str(cfg.run_dir))
        stop = threading.Event()
        follower = threading.Thread(target=_follow, args=(log_dir / "node0.log", stop), daemon=True)
        follower.start()
        try:
            codes = cluster.wait(timeout=args.timeout)
        finally:
            stop.set()
            follower.join(timeout=2)
    return codes, cluster


def steady_rounds(summary: dict[str, Any], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The measured rounds that follow a training round: the round after an evaluation (or the
    first) starts with every rank leaving the same collective together, so it has no stagger."""
    every = summary["config"]["train"]["eval_every"]
    rounds = [r for record in records for r in record.get("time", {}).get("rounds", [])]
    return [r for r in rounds if r["round"] > 1 and (r["round"] - 1) % every != 0]


def compare(summary: dict[str, Any], links: list[LinkSpec], records: list[dict[str, Any]]) -> dict[str, Any]:
    """Measured communication time, wait and wire bytes per round vs the model."""
    world_size = summary["world_size"]
    comm, timing = summary["comm"], summary["time"]
    rounds = max(1, summary["num_rounds_completed"])
    payload = comm.get("all_reduce_payload_bytes", comm["payload_bytes"]) // world_size // rounds
    steps = (comm.get("all_reduce_num_collectives", comm["num_collectives"]) * model.ring_steps(world_size)
             + comm.get("all_gather_num_collectives", 0) * (world_size - 1)) // rounds
    rates = [link.rate_bps for link in links]
    result: dict[str, Any] = {"links": [link.describe() for link in links], "payload_bytes_per_round": payload,
                              "training_collectives": comm["num_collectives"]}
    measured_wire = comm.get("wire_bytes_measured")
    result["wire_bytes_model"] = comm["wire_bytes_model"]
    result["wire_bytes_measured"] = measured_wire
    if measured_wire:
        result["wire_ratio"] = measured_wire / comm["wire_bytes_model"]
    if comm["num_collectives"] and all(rates):
        shaped = [int(r) for r in rates if r]
        latency = max(link.delay_s for link in links)
        wire_per_rank_round = comm["wire_bytes_model"] / world_size / rounds
        result["comm_s_model"] = model.round_seconds(wire_per_rank_round, steps=steps, rates_bps=shaped,
                                                     latency_s=latency)
        result["comm_s_measured"] = timing["comm_s_per_round"]
        result["comm_ratio"] = timing["comm_s_per_round"] / result["comm_s_model"]
        steady_model = model.straggler_wait_seconds(payload, shaped)
        steady = steady_rounds(summary, records)
        measured_rounds = max(1, timing["measured_rounds"])
        result["wait_s_model"] = [w * len(steady) / measured_rounds for w in steady_model]
        result["wait_s_model_steady"] = steady_model
        result["steady_rounds"] = [r["round"] for r in steady]
        result["wait_s_measured_steady"] = [statistics.fmean(r["wait_s"][rank] for r in steady)
                                            for rank in range(world_size)] if steady else None
    result["wait_s_measured"] = timing["per_rank_per_round"]["wait_s"]
    slowest = min(range(world_size), key=lambda r: rates[r] or 0) if all(rates) else None
    if slowest is not None and len(set(rates)) > 1:  # a straggler: the others' mean wait, measured vs model
        others = [r for r in range(world_size) if r != slowest]
        result["straggler_rank"] = slowest
        for suffix in ("", "_steady"):
            measured, modelled = result[f"wait_s_measured{suffix}"], result[f"wait_s_model{suffix}"]
            if measured is not None:
                result[f"others_wait_s_measured{suffix}"] = statistics.fmean(measured[r] for r in others)
                result[f"others_wait_s_model{suffix}"] = statistics.fmean(modelled[r] for r in others)
    result["comm_s_measured_per_rank"] = timing["per_rank_per_round"]["comm_s"]
    result["compute_s_measured_per_rank"] = timing["per_rank_per_round"]["compute_s"]
    result["measured_rounds"] = timing["measured_rounds"]
    return result


def print_comparison(result: dict[str, Any]) -> None:
    print(f"netem: links {'; '.join(f'node{i} {d}' for i, d in enumerate(result['links']))}")
    if result.get("wire_bytes_measured"):
        print(f"netem: training wire bytes measured {format_bytes(result['wire_bytes_measured'])} vs model "
              f"{format_bytes(result['wire_bytes_model'])} (ratio {result['wire_ratio']:.3f})")
    if "comm_s_model" in result:
        print(f"netem: comm time per round measured {result['comm_s_measured']:.3f} s vs model "
              f"{result['comm_s_model']:.3f} s (ratio {result['comm_ratio']:.3f}; mean over "
              f"{result['measured_rounds']} rounds and all ranks)")
        waits = ", ".join(f"{m:.3f}/{p:.3f}" for m, p in zip(result["wait_s_measured"], result["wait_s_model"],
                                                              strict=True))
        print(f"netem: wait per round by rank, measured/model (s): {waits}")
        if result["wait_s_measured_steady"] is not None:
            steady = ", ".join(f"{m:.3f}/{p:.3f}" for m, p in zip(result["wait_s_measured_steady"],
                                                                  result["wait_s_model_steady"], strict=True))
            print(f"netem: ... in the {len(result['steady_rounds'])} rounds after a training round: {steady}")
    for suffix, which in (("", "all rounds"), ("_steady", "rounds after a training round")):
        if f"others_wait_s_measured{suffix}" in result:
            measured, modelled = result[f"others_wait_s_measured{suffix}"], result[f"others_wait_s_model{suffix}"]
            print(f"netem: mean wait of the ranks other than the slowest link's (rank {result['straggler_rank']}), "
                  f"{which}: measured {measured:.3f} s vs model {modelled:.3f} s (ratio {measured / modelled:.3f})")
    comp = statistics.fmean(result["compute_s_measured_per_rank"]) if result["compute_s_measured_per_rank"] else 0
    print(f"netem: compute per round (mean over ranks) {comp:.3f} s")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.cleanup:
            available, reason = netns_available()
            if not available:
                raise ConfigError(f"removing leftovers needs CAP_NET_ADMIN (run as root): {reason}")
            removed = remove_leftovers()
            print(f"netem: removed {len(removed)} leftover namespaces" + (f": {' '.join(removed)}" if removed else ""))
            return 0
        links = build_links(args)
        cfg = load_config(args.config, args.overrides)
        preflight(cfg, world_size=args.nodes)
        check_host(links, args)
    except PflError as err:
        print(f"pfl_dist: error: {err}", file=sys.stderr)
        return err.exit_code
    print(f"netem: {args.nodes} nodes, " + "; ".join(f"node{i} {link.describe()}" for i, link in enumerate(links)),
          flush=True)
    try:
        codes, _ = run_cluster(cfg, args, links)
    except KeyboardInterrupt as interrupt:
        name = str(interrupt) or "SIGINT"  # a bare KeyboardInterrupt: Ctrl-C outside netns_cluster
        print(f"pfl_dist: netem: stopped by {name}; namespaces and qdiscs removed", file=sys.stderr)
        return 128 + signal.Signals[name].value if name in ("SIGINT", "SIGTERM") else 130
    except NetnsError as err:
        print(f"pfl_dist: error: netem: {err}; namespaces and qdiscs removed", file=sys.stderr)
        return 1
    except TimeoutError as err:
        print(f"pfl_dist: error: netem: {err} (--timeout); namespaces and qdiscs removed", file=sys.stderr)
        return 1
    failed = {name: code for name, code in codes.items() if code != 0}
    if failed:
        logs = cfg.run_dir / "netem"
        print(f"pfl_dist: error: netem: nodes failed {failed}; logs in {logs}", file=sys.stderr)
        return max(failed.values())
    summary = json.loads((cfg.run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    result = compare(summary, links, records)
    write_json_atomic(cfg.run_dir / "netem.json", result)
    print_comparison(result)
    return 0
