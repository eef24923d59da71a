"""Several hosts on one machine: one Linux network namespace per node, joined by a bridge.

Each node is a network namespace whose ``eth0`` (a veth pair, 10.77.0.x/24, 1500-byte MTU) is
plugged into a Linux bridge. The bridge lives in a hub namespace of its own, so nothing is added
to the machine's root namespace and no traffic can leave the emulated cluster; the /24 exists
only inside these namespaces, so concurrent clusters never see each other. ``/etc/netns/<ns>/hosts``
maps the node names to their addresses (``ip netns exec`` bind-mounts it), so ``master``
resolves inside a node as it does on a compose network.

Everything made here (namespaces, bridge, veths, qdiscs on them, /etc/netns dirs, processes) is
removed by ``close()``, which ``netns_cluster()`` always calls: on normal exit, errors,
KeyboardInterrupt and SIGTERM. A run killed with SIGKILL cannot clean up; its namespaces carry
the prefix ``pflnet-`` and are listed in a state file written *before* they are made
(pfl_dist/netem/state.py), so the next start finds and removes them (``remove_leftovers``).

    with netns_cluster(["master", "worker1"]) as cluster:
        cluster.start("master", argv, env=env, log_dir=logs)
        codes = cluster.wait(timeout=300)

Needs root (CAP_NET_ADMIN plus write access to /etc/netns); ``netns_available()`` says why not.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from pfl_dist.netem import state

SUBNET_PREFIX = "10.77.0"
PREFIX_LENGTH = 24
FIRST_HOST_OCTET = 2  # .1 is left unused, like a gateway address would be
NETNS_ETC = Path("/etc/netns")
BRIDGE_NAME = "br0"
INTERFACE_NAME = "eth0"
MAX_NODES = 250  # addresses .2 .. .251 of the /24
NETNS_RUN = Path("/run/netns")  # where `ip netns add` keeps its namespaces
PROBE_MAX_AGE_S = 60.0  # a privilege probe lives milliseconds; an older one was killed mid-probe


class NetnsError(RuntimeError):
    """A namespace, link or process operation failed."""


@dataclass(frozen=True)
class Node:
    """One emulated host: its name, namespace, address, and the hub-side end of its veth."""

    name: str
    namespace: str
    address: str
    hub_port: str


@dataclass
class NodeProcess:
    """A command running in a node's namespace; output goes to ``log_path``."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def run_command(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise NetnsError(f"{shlex.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def netns_available() -> tuple[bool, str]:
    """Whether this process can build an emulated cluster, and why not if it cannot.

    Tries the real operations on a throwaway namespace: create it, add a bridge and a veth pair
    inside it, delete it. Also checks that /etc/netns is writable.
    """
    if shutil.which("ip") is None:
        return False, "iproute2 `ip` is not on PATH"
    if shutil.which("tc") is None:
        return False, "iproute2 `tc` is not on PATH"
    etc_parent = NETNS_ETC if NETNS_ETC.exists() else NETNS_ETC.parent
    if not os.access(etc_parent, os.W_OK):
        return False, f"{etc_parent} is not writable (needs root), so per-namespace hosts files cannot be made"
    probe = f"{state.PROBE_PREFIX}{uuid.uuid4().hex[:8]}"
    steps = [
        ["ip", "netns", "add", probe],
        ["ip", "-n", probe, "link", "add", "probebr", "type", "bridge"],
        ["ip", "-n", probe, "link", "add", "probea", "type", "veth", "peer", "name", "probeb"],
    ]
    try:
        for step in steps:
            done = run_command(step, check=False)
            if done.returncode != 0:
                return False, f"`{shlex.join(step)}` failed (CAP_NET_ADMIN missing?): {done.stderr.strip()}"
    finally:
        run_command(["ip", "netns", "delete", probe], check=False)
    return True, "network namespaces, bridges and veth pairs are available"


def pids_in_namespace(namespace: str) -> set[int]:
    done = run_command(["ip", "netns", "pids", namespace], check=False)
    return {int(p) for p in done.stdout.split() if p.isdigit()}


def kill_namespace_processes(namespaces: Sequence[str], *, extra: Sequence[subprocess.Popen[bytes]] = (),
                             grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, every process in the namespaces (torchrun puts its workers in
    sessions of their own, so process groups are not enough)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = set().union(*(pids_in_namespace(n) for n in namespaces)) if namespaces else set()
        pids |= {p.pid for p in extra if p.poll() is None}
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            for p in extra:
                p.poll()
            if not any(pids_in_namespace(n) for n in namespaces) and all(p.returncode is not None for p in extra):
                return
            time.sleep(0.1)


def delete_namespaces(namespaces: Sequence[str]) -> None:
    """Delete namespaces (their veths and qdiscs go with them) and their /etc/netns dirs."""
    for namespace in namespaces:
        run_command(["ip", "netns", "delete", namespace], check=False)
        shutil.rmtree(NETNS_ETC / namespace, ignore_errors=True)


def _age_s(namespace: str) -> float:
    """Seconds since `ip netns add` made the namespace's file under /run/netns."""
    try:
        return time.time() - (NETNS_RUN / namespace).stat().st_mtime
    except OSError:
        return 0.0


def list_namespaces() -> list[str]:
    done = run_command(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def remove_leftovers() -> list[str]:
    """Remove what earlier clusters left behind when their owner died without cleaning up
    (SIGKILL, power cut of the process): namespaces named ``pflnet-*`` whose state file is
    missing or names a dead owner, their processes, qdiscs and /etc/netns dirs. Live clusters
    (of this or another user's concurrent run) are left alone. -> the namespaces removed."""
    live = state.live_namespaces()
    stale = [n for n in list_namespaces() if n.startswith(state.NAMESPACE_PREFIX) and n not in live]
    stale += [n for n in state.dead_namespaces() if n not in stale]
    stale += [n for n in list_namespaces() if n.startswith(state.PROBE_PREFIX) and _age_s(n) > PROBE_MAX_AGE_S]
    if stale:
        kill_namespace_processes([n for n in stale if n in list_namespaces()], grace=3.0)
        delete_namespaces(stale)
    state.remove_dead_files()
    return stale


def _set_parent_death_signal() -> None:
    """In the child before exec: SIGTERM when the tool dies (also by SIGKILL), so a torchrun agent
    ends its workers instead of training on; its namespaces are removed by the next start."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class NetnsCluster:
    """Namespaces for named nodes, and the processes started in them. Build it with
    ``netns_cluster()``, which guarantees ``close()``."""

    names: Sequence[str]
    disable_offloads: bool = True
    disable_ipv6: bool = True
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    nodes: dict[str, Node] = field(default_factory=dict, init=False)
    processes: dict[str, NodeProcess] = field(default_factory=dict, init=False)
    offloads_disabled: bool = field(default=False, init=False)
    _namespaces: list[str] = field(default_factory=list, init=False)
    _made_netns_etc: bool = field(default=False, init=False)

    @property
    def hub_namespace(self) -> str:
        return f"{state.NAMESPACE_PREFIX}{self.suffix}"

    def namespace_of(self, name: str) -> str:
        return f"{state.NAMESPACE_PREFIX}{self.suffix}-{name}"

    @property
    def namespaces(self) -> list[str]:
        return list(self._namespaces)

    # ----------------------------------------------------------------- build

    def setup(self) -> None:
        if len(self.names) > MAX_NODES:
            raise ValueError(f"at most {MAX_NODES} nodes fit in a /24")
        planned = [self.hub_namespace, *(self.namespace_of(n) for n in self.names)]
        state.write(self.suffix, planned)  # before anything exists: a SIGKILL from here on is found later
        self._add_namespace(self.hub_namespace)
        self._ip_n(self.hub_namespace, "link", "add", BRIDGE_NAME, "type", "bridge")
        self._ip_n(self.hub_namespace, "link", "set", BRIDGE_NAME, "up")
        for index, name in enumerate(self.names):
            self.nodes[name] = self._add_node(index, name)
        for node in self.nodes.values():
            self._write_etc(node)
        if self.disable_offloads and shutil.which("ethtool") is not None:
            # Real 1500-byte frames: the interface counters and the shaper then see what a wire would.
            for node in self.nodes.values():
                self.exec(node.name, ["ethtool", "-K", INTERFACE_NAME, "tso", "off", "gso", "off"])
                run_command(["ip", "netns", "exec", self.hub_namespace,
                             "ethtool", "-K", node.hub_port, "tso", "off", "gso", "off"])
            self.offloads_disabled = True

    def _add_namespace(self, namespace: str) -> None:
        run_command(["ip", "netns", "add", namespace])
        self._namespaces.append(namespace)

    def _ip_n(self, namespace: str, *args: str) -> None:
        run_command(["ip", "-n", namespace, *args])

    def _add_node(self, index: int, name: str) -> Node:
        namespace = self.namespace_of(name)
        address = f"{SUBNET_PREFIX}.{FIRST_HOST_OCTET + index}"
        hub_port = f"v{index}"
        self._add_namespace(namespace)
        if self.disable_ipv6:
            # No IPv6 router solicitations or MLD reports on eth0: its counters then carry only
            # the traffic of the job (and a little ARP). A kernel without IPv6 has nothing to disable.
            script = "for k in all default; do echo 1 > /proc/sys/net/ipv6/conf/$k/disable_ipv6; done"
            run_command(["ip", "netns", "exec", namespace, "sh", "-c", script], check=False)
        self._ip_n(namespace, "link", "add", INTERFACE_NAME, "type", "veth",
                   "peer", "name", hub_port, "netns", self.hub_namespace)
        self._ip_n(namespace, "addr", "add", f"{address}/{PREFIX_LENGTH}", "dev", INTERFACE_NAME)
        self._ip_n(namespace, "link", "set", "lo", "up")
        self._ip_n(namespace, "link", "set", INTERFACE_NAME, "up")
        self._ip_n(self.hub_namespace, "link", "set", hub_port, "master", BRIDGE_NAME)
        self._ip_n(self.hub_namespace, "link", "set", hub_port, "up")
        return Node(name=name, namespace=namespace, address=address, hub_port=hub_port)

    def _write_etc(self, node: Node) -> None:
        """/etc/netns/<ns>/{hosts,resolv.conf} are bind-mounted by `ip netns exec`."""
        if not NETNS_ETC.exists():
            NETNS_ETC.mkdir()
            self._made_netns_etc = True
        directory = NETNS_ETC / node.namespace
        directory.mkdir()
        lines = ["127.0.0.1 localhost"]
        if not self.disable_ipv6:
            lines.append("::1 localhost ip6-localhost ip6-loopback")
        # The machine's hostname names "this host" in every namespace, as in a container.
        lines.append(f"{node.address} {node.name} {socket.gethostname()}")
        lines += [f"{n.address} {n.name}" for n in self.nodes.values() if n is not node]
        # Dual-stack listeners (c10d's TCPStore) see IPv4 peers as ::ffff:a.b.c.d; these lines
        # let their reverse lookups succeed from the file instead of failing over to DNS.
        lines += [f"::ffff:{n.address} {n.name}" for n in self.nodes.values()]
        (directory / "hosts").write_text("\n".join(lines) + "\n")
        # No nameserver: lookups of unknown names fail locally instead of leaving the host.
        (directory / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")

    # ----------------------------------------------------------------- run

    def exec(self, name: str, argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a short command in a node's namespace and return its output."""
        return run_command(["ip", "netns", "exec", self.nodes[name].namespace, *argv], check=check)

    def start(self, name: str, argv: Sequence[str], *, env: Mapping[str, str], log_dir: str | os.PathLike[str],
              cwd: str | os.PathLike[str] | None = None) -> NodeProcess:
        """Start a command in a node's namespace, in a session of its own, output to log_dir/<name>.log."""
        log_path = Path(log_dir) / f"{name}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", self.nodes[name].namespace, *argv],
                cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_set_parent_death_signal,
            )
        process = NodeProcess(name=name, popen=popen, log_path=log_path)
        self.processes[name] = process
        return process

    def wait(self, timeout: float | None, *, fail_fast_grace: float | None = 20.0) -> dict[str, int]:
        """Wait for every started process; return exit codes by node name.

        With ``fail_fast_grace``, once one process fails the others get that many seconds before
        they are killed (a lost peer would otherwise hold them until the rendezvous timeout).
        Raises TimeoutError, naming the stragglers, after ``timeout`` seconds (None: no limit).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        failed_at: float | None = None
        while True:
            codes = {n: p.popen.poll() for n, p in self.processes.items()}
            if all(c is not None for c in codes.values()):
                return {n: int(c) for n, c in codes.items() if c is not None}
            now = time.monotonic()
            if failed_at is None and any(c not in (None, 0) for c in codes.values()):
                failed_at = now
            if fail_fast_grace is not None and failed_at is not None and now - failed_at > fail_fast_grace:
                self.stop_processes()
                continue
            if deadline is not None and now > deadline:
                running = sorted(n for n, c in codes.items() if c is None)
                raise TimeoutError(f"nodes still running after {timeout:.0f} s: {running}")
            time.sleep(0.2)

    # ----------------------------------------------------------------- teardown

    def stop_processes(self, grace: float = 5.0) -> None:
        kill_namespace_processes(self._namespaces, extra=[p.popen for p in self.processes.values()], grace=grace)

    def close(self) -> None:
        """Remove everything that setup() and start() made. Safe to call twice."""
        try:
            self.stop_processes()
        finally:
            for p in self.processes.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.popen.wait(timeout=1)
            # Node namespaces first (their veths and qdiscs go with them), then the hub and bridge.
            delete_namespaces(list(reversed(self._namespaces)))
            self._namespaces.clear()
            if self._made_netns_etc:
                with contextlib.suppress(OSError):
                    NETNS_ETC.rmdir()  # only if empty: another cluster may be using it
            state.remove(self.suffix)


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def netns_cluster(names: Sequence[str], *, disable_offloads: bool = True,
                  disable_ipv6: bool = True) -> Iterator[NetnsCluster]:
    """Build one namespace per name and always tear them down.

    On the main thread SIGTERM and SIGINT are turned into KeyboardInterrupt("SIGTERM" | "SIGINT")
    meanwhile, so a stopped run also cleans up. SIGINT explicitly too: a tool started in the
    background of a script inherits SIGINT ignored, and Python then never raises KeyboardInterrupt.
    Leftovers of SIGKILLed earlier runs are removed first.
    """
    cluster = NetnsCluster(list(names), disable_offloads=disable_offloads, disable_ipv6=disable_ipv6)
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = ({sig: signal.signal(sig, _raise_keyboard_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
                if on_main_thread else {})
    try:
        remove_leftovers()
        cluster.setup()
        yield cluster
    finally:
        # A second Ctrl-C or SIGTERM must not cut the clean-up short.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        try:
            cluster.close()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
