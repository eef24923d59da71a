"""`python -m pfl_dist.torchrun_loopback [torchrun options] ...`: torchrun, except that a c10d
rendezvous store this agent hosts on a loopback endpoint (`--standalone` uses localhost:0)
listens on 127.0.0.1 only. torch's TCPStore server otherwise binds every interface, so a
one-node job would accept unauthenticated store clients from the network.

The sweep's jobs run through this (pfl_dist.sweep.jobs); `pfl_dist.launch` hosts its one-node
rendezvous itself (pfl_dist/endpoints.py). Everything else, signals and exit codes included, is
torchrun's own `main()` in this process.
"""

from __future__ import annotations

import socket
from typing import Any

from pfl_dist.endpoints import is_loopback

_SOCKETS: list[socket.socket] = []  # the listening sockets handed to TCPStore, kept open


def patch_rendezvous_store() -> None:
    from torch.distributed.elastic.rendezvous import c10d_rendezvous_backend as backend

    original: Any = backend.TCPStore

    def loopback_tcp_store(host: str, port: int, **kwargs: Any) -> Any:
        """_create_tcp_store's call: TCPStore(host, port, is_master=..., multi_tenant=..., timeout=...)."""
        if not kwargs.get("is_master") or not is_loopback(host) or "master_listen_fd" in kwargs:
            return original(host, port, **kwargs)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(512)
        except OSError as err:
            sock.close()
            raise RuntimeError(f"cannot listen on 127.0.0.1:{port}: {err.strerror}") from err  # torchrun's retry
        _SOCKETS.append(sock)
        return original("127.0.0.1", int(sock.getsockname()[1]), master_listen_fd=sock.fileno(), **kwargs)

    setattr(backend, "TCPStore", loopback_tcp_store)  # noqa: B010 - replaces the class name the backend calls


def main() -> None:
    patch_rendezvous_store()
    from torch.distributed.run import main as torchrun_main

    torchrun_main()


if __name__ == "__main__":
    main()
