"""The launcher's network endpoints: busy ports found before torchrun starts, and stores that
listen on loopback only.

- `check_ports(torchrun_args)`: a `--master-port` or a local `--rdzv-endpoint` port that another
  process holds is one line and exit 2 at once (torchrun itself hangs until its join timeout or
  prints a traceback).
- `LoopbackRendezvous`: replaces `--standalone`. torchrun's standalone mode hosts the c10d
  rendezvous store in the agent, listening on every interface, unauthenticated. The launcher
  instead hosts the store itself on 127.0.0.1 (a socket it binds, handed to TCPStore as its
  listening fd) and runs torchrun as a client of it (`--rdzv-backend=c10d
  --rdzv-endpoint=127.0.0.1:PORT --rdzv-conf=is_host=false --local-addr=127.0.0.1`). The store
  lives as long as the launcher, so elastic restarts keep working.
- `loopback_store(...)` (in the workers, pfl_dist.runtime): rank 0's process-group store binds
  127.0.0.1 when every rank runs on this machine and MASTER_ADDR is loopback.
"""

from __future__ import annotations

import ipaddress
import socket
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from pfl_dist.errors import ConfigError

_DEFAULT_RDZV_PORT = 29400
_LISTEN_SOCKETS: list[socket.socket] = []


def option_value(args: Sequence[str], *names: str) -> str | None:
    """The value of a torchrun option given as `--name=V` or `--name V`; None when absent."""
    for i, arg in enumerate(args):
        for name in names:
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
            if arg == name and i + 1 < len(args):
                return args[i + 1]
    return None


def is_local(host: str) -> bool:
    """True when `host` resolves to loopback or to an address of this machine."""
    try:
        address = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, ValueError):
        return False
    if address.is_loopback or address.is_unspecified:
        return True
    try:
        with socket.socket() as sock:
            sock.bind((str(address), 0))
        return True
    except OSError:
        return False


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def port_in_use(port: int) -> bool:
    """Whether binding `port` on all interfaces fails because something holds it."""
    with socket.socket() as sock:
        try:
            sock.bind(("", port))
        except OSError:
            return True
    return False


def check_ports(torchrun_args: Sequence[str]) -> None:
    """One line (ConfigError, exit 2) for a busy port this node would have to listen on."""
    master_port = option_value(torchrun_args, "--master-port", "--master_port")
    master_addr = option_value(torchrun_args, "--master-addr", "--master_addr") or "127.0.0.1"
    node_rank = option_value(torchrun_args, "--node-rank", "--node_rank") or "0"
    if master_port is not None and node_rank == "0" and is_local(master_addr):
        if not master_port.isdigit() or not 0 < int(master_port) < 65536:
            raise ConfigError(f"--master-port must be a port number, got '{master_port}'")
        if port_in_use(int(master_port)):
            raise ConfigError(f"--master-port {master_port} is in use by another process; choose a free port "
                              "(or drop --master-port)")
    endpoint = option_value(torchrun_args, "--rdzv-endpoint", "--rdzv_endpoint")
    conf = option_value(torchrun_args, "--rdzv-conf", "--rdzv_conf") or ""
    backend = option_value(torchrun_args, "--rdzv-backend", "--rdzv_backend") or "static"
    if endpoint is None or backend != "c10d" or "is_host=false" in conf.replace(" ", "").lower():
        return
    host, _, port_text = endpoint.rpartition(":") if ":" in endpoint else (endpoint, "", str(_DEFAULT_RDZV_PORT))
    if not port_text.isdigit():
        raise ConfigError(f"--rdzv-endpoint must be HOST:PORT, got '{endpoint}'")
    if is_local(host) and port_in_use(int(port_text)):
        raise ConfigError(f"--rdzv-endpoint {endpoint}: port {port_text} is in use by another process; choose a "
                          "free port (another job may be using it)")


def _loopback_socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(512)
    return sock


class LoopbackRendezvous:
    """The c10d rendezvous store of a one-node job, hosted by the launcher on 127.0.0.1."""

    def __init__(self) -> None:
        import torch.distributed as dist  # only the launcher's standalone path pays torch's import

        self.socket = _loopback_socket()
        self.port = int(self.socket.getsockname()[1])
        self.store = dist.TCPStore("127.0.0.1", self.port, None, True, timedelta(hours=24), wait_for_workers=False,
                                   multi_tenant=True, master_listen_fd=self.socket.fileno())

    def torchrun_args(self) -> list[str]:
        return ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{self.port}", f"--rdzv-id={uuid.uuid4()}",
                "--rdzv-conf=is_host=false", "--local-addr=127.0.0.1"]

    def close(self) -> None:
        self.socket.close()


def replace_standalone(torchrun_args: Sequence[str]) -> tuple[list[str], LoopbackRendezvous | None]:
    """`--standalone` (added by torchrun_command when no rendezvous is named) -> a loopback c10d
    rendezvous hosted here; other arguments unchanged."""
    args = list(torchrun_args)
    if "--standalone" not in args:
        return args, None
    rendezvous = LoopbackRendezvous()
    args.remove("--standalone")
    if option_value(args, "--nnodes") is None:
        args.insert(0, "--nnodes=1")
    return [*rendezvous.torchrun_args(), *args], rendezvous


def loopback_store(*, rank: int, world_size: int, timeout: timedelta, environ: dict[str, str]) -> Any:
    """The process group's TCPStore with rank 0 listening on 127.0.0.1 only, or None to let
    torch's env:// rendezvous create it (nodes elsewhere, the agent's store, no MASTER_ADDR)."""
    host, port = environ.get("MASTER_ADDR"), environ.get("MASTER_PORT", "")
    single_node = environ.get("LOCAL_WORLD_SIZE") == str(world_size)
    if (not host or not port.isdigit() or not single_node or not is_loopback(host)
            or environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"):
        return None
    import torch.distributed as dist

    if rank != 0:
        return dist.TCPStore(host, int(port), world_size, False, timeout)
    sock = _loopback_socket(int(port))
    store = dist.TCPStore("127.0.0.1", int(port), world_size, True, timeout, multi_tenant=True,
                          master_listen_fd=sock.fileno())
    _LISTEN_SOCKETS.append(sock)  # kept open as long as the process (the store serves on it)
    return store
