"""Run a docker-compose cluster without docker: one Linux network namespace per service.

Each compose service becomes a "host": a network namespace whose ``eth0`` (a veth pair,
10.77.0.x/24, 1500-byte MTU) is plugged into a Linux bridge. The bridge lives in a hub
namespace of its own, so nothing is added to the machine's root namespace and no traffic
can leave the emulated cluster. ``/etc/netns/<ns>/hosts`` maps the service names to their
addresses, so ``master`` resolves inside ``ip netns exec`` exactly as it does on a compose
network. The service's command then runs in its namespace with the service's environment,
with container paths (``/runs``, the working dir) translated to host paths.

Everything made here (namespaces, bridge, veths, /etc/netns dirs, processes) is removed
when the context manager exits, also on errors, KeyboardInterrupt and SIGTERM.

    with netns_cluster(load_compose_services(compose_file), names=["master", "worker1"]) as c:
        c.start("master", path_map={"/app": repo, "/runs": tmp}, executables={...})
        ...
        codes = c.wait(timeout=300)

Needs root (CAP_NET_ADMIN plus write access to /etc/netns); use ``netns_available()`` to
skip where that is missing.
"""

from __future__ import annotations

import contextlib
import os
import re
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
from typing import Any

import yaml

SUBNET_PREFIX = "10.77.0"
PREFIX_LENGTH = 24
FIRST_HOST_OCTET = 2  # .1 is left unused, like a gateway address would be
NAMESPACE_PREFIX = "pfl-"
NETNS_ETC = Path("/etc/netns")
BRIDGE_NAME = "br0"
INTERFACE_NAME = "eth0"


class NetnsError(RuntimeError):
    """A namespace, link or process operation failed."""


@dataclass(frozen=True)
class ComposeService:
    """The parts of a compose service that the emulation needs."""

    name: str
    command: tuple[str, ...]
    environment: Mapping[str, str]
    working_dir: str | None


@dataclass(frozen=True)
class ServiceNode:
    """One emulated host: a service, its namespace and its address."""

    service: ComposeService
    namespace: str
    address: str


@dataclass
class ServiceProcess:
    """A service command running in its namespace; output goes to ``log_path``."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# --------------------------------------------------------------------------- compose file


def _as_command(name: str, raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):
        return tuple(shlex.split(raw))
    if isinstance(raw, list) and all(isinstance(a, (str, int, float)) for a in raw):
        return tuple(str(a) for a in raw)
    raise ValueError(f"service {name!r}: command must be a string or a list of strings")


def _as_environment(name: str, raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if isinstance(raw, dict):
        return {str(k): "" if v is None else str(v) for k, v in raw.items()}
    if isinstance(raw, list):
        pairs = (str(item).split("=", 1) for item in raw)
        return {p[0]: (p[1] if len(p) == 2 else "") for p in pairs}
    raise ValueError(f"service {name!r}: environment must be a mapping or a list")


def load_compose_services(compose_file: str | os.PathLike[str]) -> dict[str, ComposeService]:
    """Read the services of a compose file. Only `command`, `environment`, `working_dir`
    are used; services without a command are skipped (the image default is unknown here)."""
    document = yaml.safe_load(Path(compose_file).read_text())
    services: dict[str, ComposeService] = {}
    for name, spec in (document.get("services") or {}).items():
        if "command" not in spec:
            continue
        services[name] = ComposeService(
            name=name,
            command=_as_command(name, spec["command"]),
            environment=_as_environment(name, spec.get("environment")),
            working_dir=spec.get("working_dir"),
        )
    return services


# --------------------------------------------------------------------------- command rewriting


def translate_path(value: str, path_map: Mapping[str, str | os.PathLike[str]]) -> str:
    """Replace container paths by host paths where a path starts: at the start of the
    string, or after ``=`` or ``:`` (``run.out_dir=/runs``, ``--logdir=/runs/x``)."""
    for container in sorted(path_map, key=len, reverse=True):
        host = os.fspath(path_map[container])
        pattern = re.compile(rf"(^|[=:]){re.escape(container.rstrip('/'))}(?=/|$|:)")
        value = pattern.sub(r"\g<1>" + host.replace("\\", "\\\\"), value)
    return value


def apply_overrides(argv: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """Apply ``key=value`` overrides: replace an existing ``key=...`` argument, else append."""
    result = list(argv)
    for override in overrides:
        key = override.split("=", 1)[0] + "="
        hits = [i for i, a in enumerate(result) if not a.startswith("-") and a.startswith(key)]
        if hits:
            result[hits[-1]] = override
        else:
            result.append(override)
    return result


def translate_command(
    argv: Sequence[str],
    *,
    path_map: Mapping[str, str | os.PathLike[str]],
    executables: Mapping[str, str | os.PathLike[str]],
) -> list[str]:
    """Map the program (``torchrun`` -> a venv's torchrun) and container paths."""
    program, *args = argv
    program = os.fspath(executables.get(program, program))
    return [program, *(translate_path(a, path_map) for a in args)]


# --------------------------------------------------------------------------- privileges


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise NetnsError(f"{shlex.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def netns_available() -> tuple[bool, str]:
    """Whether this process can build the emulated cluster, and why not if it cannot.

    Tries the real operations on a throwaway namespace: create it, add a bridge and a veth
    pair inside it, delete it. Also checks that /etc/netns is writable.
    """
    if shutil.which("ip") is None:
        return False, "iproute2 `ip` is not on PATH"
    if os.geteuid() != 0:
        return False, "network namespaces need root (CAP_NET_ADMIN and write access to /etc/netns)"
    etc_parent = NETNS_ETC if NETNS_ETC.exists() else NETNS_ETC.parent
    if not os.access(etc_parent, os.W_OK):
        return False, f"{etc_parent} is not writable, so per-namespace hosts files cannot be made"
    probe = f"{NAMESPACE_PREFIX}probe-{uuid.uuid4().hex[:8]}"
    steps = [
        ["ip", "netns", "add", probe],
        ["ip", "-n", probe, "link", "add", "probebr", "type", "bridge"],
        ["ip", "-n", probe, "link", "add", "probea", "type", "veth", "peer", "name", "probeb"],
    ]
    try:
        for step in steps:
            done = _run(step, check=False)
            if done.returncode != 0:
                return False, f"`{shlex.join(step)}` failed: {done.stderr.strip()}"
    finally:
        _run(["ip", "netns", "delete", probe], check=False)
    return True, "network namespaces, bridges and veth pairs are available"


# --------------------------------------------------------------------------- the cluster


@dataclass
class NetnsCluster:
    """Namespaces for some compose services, and the processes started in them.

    Build it with ``netns_cluster()``, which guarantees ``close()``.
    """

    services: Mapping[str, ComposeService]
    disable_offloads: bool = True
    disable_ipv6: bool = True
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    nodes: dict[str, ServiceNode] = field(default_factory=dict, init=False)
    processes: dict[str, ServiceProcess] = field(default_factory=dict, init=False)
    offloads_disabled: bool = field(default=False, init=False)
    _namespaces: list[str] = field(default_factory=list, init=False)
    _made_netns_etc: bool = field(default=False, init=False)

    @property
    def hub_namespace(self) -> str:
        return f"{NAMESPACE_PREFIX}{self.suffix}"

    def namespace_of(self, name: str) -> str:
        return f"{NAMESPACE_PREFIX}{self.suffix}-{name}"

    # ----------------------------------------------------------------- build

    def setup(self) -> None:
        if len(self.services) > 250:
            raise ValueError("at most 250 services fit in a /24")
        self._add_namespace(self.hub_namespace)
        self._ip_n(self.hub_namespace, "link", "add", BRIDGE_NAME, "type", "bridge")
        self._ip_n(self.hub_namespace, "link", "set", BRIDGE_NAME, "up")
        for index, name in enumerate(self.services):
            self.nodes[name] = self._add_node(index, self.services[name])
        for node in self.nodes.values():
            self._write_etc(node)
        if self.disable_offloads and shutil.which("ethtool") is not None:
            for node in self.nodes.values():
                self.exec(node.service.name, ["ethtool", "-K", INTERFACE_NAME, "tso", "off", "gso", "off"])
            self.offloads_disabled = True

    def _add_namespace(self, namespace: str) -> None:
        _run(["ip", "netns", "add", namespace])
        self._namespaces.append(namespace)

    def _ip_n(self, namespace: str, *args: str) -> None:
        _run(["ip", "-n", namespace, *args])

    def _add_node(self, index: int, service: ComposeService) -> ServiceNode:
        namespace = self.namespace_of(service.name)
        address = f"{SUBNET_PREFIX}.{FIRST_HOST_OCTET + index}"
        hub_port = f"v{index}"
        self._add_namespace(namespace)
        if self.disable_ipv6:
            # No IPv6 router solicitations or MLD reports on eth0: its counters then carry
            # only the traffic of the job (and a little ARP).
            # Not checked: a kernel without IPv6 has nothing to disable.
            script = "for k in all default; do echo 1 > /proc/sys/net/ipv6/conf/$k/disable_ipv6; done"
            _run(["ip", "netns", "exec", namespace, "sh", "-c", script], check=False)
        self._ip_n(namespace, "link", "add", INTERFACE_NAME, "type", "veth",
                   "peer", "name", hub_port, "netns", self.hub_namespace)
        self._ip_n(namespace, "addr", "add", f"{address}/{PREFIX_LENGTH}", "dev", INTERFACE_NAME)
        self._ip_n(namespace, "link", "set", "lo", "up")
        self._ip_n(namespace, "link", "set", INTERFACE_NAME, "up")
        self._ip_n(self.hub_namespace, "link", "set", hub_port, "master", BRIDGE_NAME)
        self._ip_n(self.hub_namespace, "link", "set", hub_port, "up")
        return ServiceNode(service=service, namespace=namespace, address=address)

    def _write_etc(self, node: ServiceNode) -> None:
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
        lines.append(f"{node.address} {node.service.name} {socket.gethostname()}")
        lines += [f"{n.address} {n.service.name}" for n in self.nodes.values() if n is not node]
        # Dual-stack listeners (c10d's TCPStore) see IPv4 peers as ::ffff:a.b.c.d; these lines
        # let their reverse lookups succeed from the file instead of failing over to DNS.
        lines += [f"::ffff:{n.address} {n.service.name}" for n in self.nodes.values()]
        (directory / "hosts").write_text("\n".join(lines) + "\n")
        # No nameserver: lookups of unknown names fail locally instead of leaving the host.
        (directory / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")

    # ----------------------------------------------------------------- run

    def exec(self, name: str, argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a short command in a service's namespace and return its output."""
        return _run(["ip", "netns", "exec", self.nodes[name].namespace, *argv], check=check)

    def start(
        self,
        name: str,
        *,
        path_map: Mapping[str, str | os.PathLike[str]],
        executables: Mapping[str, str | os.PathLike[str]] | None = None,
        overrides: Sequence[str] = (),
        log_dir: str | os.PathLike[str],
    ) -> ServiceProcess:
        """Start a service's command in its namespace.

        ``path_map`` maps container paths (``/app``, ``/runs``) to host paths; the service's
        working dir must be one of them. The environment is this process's, updated by the
        service's environment.
        """
        node = self.nodes[name]
        service = node.service
        argv = translate_command(
            apply_overrides(service.command, overrides),
            path_map=path_map,
            executables=executables or {},
        )
        env = dict(os.environ)
        env.update({k: translate_path(v, path_map) for k, v in service.environment.items()})
        cwd = translate_path(service.working_dir, path_map) if service.working_dir else os.getcwd()
        log_path = Path(log_dir) / f"{name}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", node.namespace, *argv],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = ServiceProcess(name=name, popen=popen, log_path=log_path)
        self.processes[name] = process
        return process

    def wait(self, timeout: float, *, fail_fast_grace: float | None = 20.0) -> dict[str, int]:
        """Wait for every started process; return exit codes by service name.

        With ``fail_fast_grace``, once one process fails the others get that many seconds
        before they are killed (a lost peer would otherwise hold them until the rendezvous
        timeout). Raises TimeoutError, naming the stragglers, after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
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
            if now > deadline:
                running = sorted(n for n, c in codes.items() if c is None)
                raise TimeoutError(f"services still running after {timeout:.0f} s: {running}")
            time.sleep(0.2)

    # ----------------------------------------------------------------- teardown

    def stop_processes(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL, every process in our namespaces (torchrun puts its
        workers in sessions of their own, so process groups are not enough)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self._pids_in_namespaces() | {
                p.popen.pid for p in self.processes.values() if p.popen.poll() is None
            }
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                for p in self.processes.values():
                    p.popen.poll()
                if not self._pids_in_namespaces() and all(
                    p.popen.returncode is not None for p in self.processes.values()
                ):
                    return
                time.sleep(0.1)

    def _pids_in_namespaces(self) -> set[int]:
        pids: set[int] = set()
        for namespace in self._namespaces:
            done = _run(["ip", "netns", "pids", namespace], check=False)
            pids.update(int(p) for p in done.stdout.split() if p.isdigit())
        return pids

    def close(self) -> None:
        """Remove everything that setup() and start() made. Safe to call twice."""
        try:
            self.stop_processes()
        finally:
            for p in self.processes.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.popen.wait(timeout=1)
            # Service namespaces first (their veths go with them), then the hub and bridge.
            for namespace in reversed(self._namespaces):
                _run(["ip", "netns", "delete", namespace], check=False)
                shutil.rmtree(NETNS_ETC / namespace, ignore_errors=True)
            self._namespaces.clear()
            if self._made_netns_etc:
                with contextlib.suppress(OSError):
                    NETNS_ETC.rmdir()  # only if empty: another cluster may be using it


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def netns_cluster(
    services: Mapping[str, ComposeService],
    *,
    names: Sequence[str] | None = None,
    disable_offloads: bool = True,
    disable_ipv6: bool = True,
) -> Iterator[NetnsCluster]:
    """Build namespaces for ``names`` (default: all services) and always tear them down.

    On the main thread SIGTERM is turned into KeyboardInterrupt meanwhile, so that a
    terminated test run also cleans up.
    """
    selected = {n: services[n] for n in (names if names is not None else list(services))}
    cluster = NetnsCluster(selected, disable_offloads=disable_offloads, disable_ipv6=disable_ipv6)
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt) if on_main_thread else None
    try:
        cluster.setup()
        yield cluster
    finally:
        try:
            cluster.close()
        finally:
            if on_main_thread and previous is not None:
                signal.signal(signal.SIGTERM, previous)
