"""Process-group lifecycle: the only module that touches init_process_group.

Works the same under `torchrun` (RANK/WORLD_SIZE set) and as a plain single process (no
process group at all; collectives become local no-ops in the Communicator). A process group that
already exists (its caller's: Lightning, Ray Train or a Slurm wrapper made it before calling
`pfl_dist.run`) is joined as it is, and left to its owner at the end (`Runtime.owns_group`).

Timeouts: `comm.timeout_s` bounds init_process_group (gloo's full-mesh connect) and every
collective, so a hung peer ends the job after it. A dead peer ends a collective at once
(connection reset). Waiting for missing nodes is torchrun's rendezvous, bounded by
`--rdzv-conf=join_timeout=S` (default 600 s; also PET_RDZV_CONF). `collective_failure` tells
these failures apart from bugs, so `pfl_dist.train` reports them in one line.
"""

from __future__ import annotations

import itertools
import os
import sys
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import NoReturn

import torch
import torch.distributed as dist

from pfl_dist.config import Config
from pfl_dist.endpoints import loopback_store
from pfl_dist.errors import ConfigError


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str | None  # None when running as a single process without a process group
    owns_group: bool = True  # False: the caller's group, which shutdown_runtime leaves alone

    @property
    def is_logging_rank(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def env_world_size() -> int:
    """The world size torchrun announced, 1 for a plain process. Read without any set-up."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def existing_group() -> tuple[int, int] | None:
    """(rank, world size) of a default process group made before pfl_dist was called, else None."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def planned_rank_and_size() -> tuple[int, int]:
    """This process's rank and the world size, before any set-up: the existing group's, else
    torchrun's environment (0 and 1 for a plain process)."""
    return existing_group() or (env_rank(), env_world_size())


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "MASTER_ADDR" in os.environ


def select_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device is 'cuda' but no CUDA device is available")
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def select_backend(requested: str, device: torch.device) -> str:
    """nccl for CUDA tensors, gloo for CPU tensors; an explicit choice must fit the device."""
    if requested == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if requested == "nccl" and device.type != "cuda":
        raise ConfigError("comm.backend 'nccl' needs run.device 'cuda' (nccl cannot reduce CPU tensors)")
    return requested


def set_num_threads(local_world_size: int, *, cap: int | None = None) -> int:
    """The thread rule: intra-op threads per rank = max(1, usable cores // ranks on this node),
    at most `cap` (a task's own limit, `Task.max_threads`).

    - usable cores: this process's CPU affinity, so taskset, cgroup cpusets and a sweep's
      per-job CPU pinning are respected (not the machine's core count);
    - ranks on this node: torchrun's LOCAL_WORLD_SIZE (1 for a plain process), so W ranks
      never run more than `cores` busy threads together;
    - OMP_NUM_THREADS is overridden: torchrun sets it to 1 for nproc > 1 unasked, so a worker
      cannot tell it from a user's choice. On these 2-core machines: 1 thread per rank with
      2+ ranks, 2 for a plain process.
    The Trainer applies it per run with its task's cap (the synthetic task's is 1: its kernels are
    too small to split), so the points of an in-job sweep each get their own task's count.
    """
    cores = len(os.sched_getaffinity(0))
    threads = max(1, cores // max(1, local_world_size))
    if cap is not None:
        threads = min(threads, cap)
    torch.set_num_threads(threads)
    return threads


def join_existing_group(cfg: Config, rank: int, world_size: int) -> Runtime:
    """The caller's process group, as it is: its rank, size, backend and timeout (comm.timeout_s is
    the owner's choice there); an explicit comm.backend must be the group's."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(cfg.run.device, local_rank)
    backend = str(dist.get_backend())
    if cfg.comm.backend not in ("auto", backend):
        raise ConfigError(f"comm.backend is '{cfg.comm.backend}' but the existing process group uses {backend}; "
                          "leave comm.backend auto to use the group as it is")
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError("the existing process group uses nccl, which needs run.device 'cuda' (nccl cannot "
                          "reduce CPU tensors)")
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    set_num_threads(local_world_size)
    return Runtime(rank=rank, world_size=world_size, local_rank=local_rank, local_world_size=local_world_size,
                   device=device, backend=backend, owns_group=False)


_STORES: dict[tuple[str, str, int], dist.Store] = {}  # the job's store, one per (MASTER_ADDR, MASTER_PORT, rank)
_GROUPS = itertools.count()  # process groups this process has formed; every rank forms the same ones


def group_store(*, rank: int, world_size: int, timeout: timedelta) -> dist.Store:
    """The rendezvous store for a new process group: the job's store, made once per process and
    kept, under a key prefix of the group's own.

    A job that calls `pfl_dist.run` twice forms a group, destroys it and forms another. Both must
    meet on one store: were rank 0 to make a new server for the second group, a rank that re-forms
    first would have joined the old server as it shut down ("Failed to recv"). And the old group's
    keys outlive it: the new group's gloo ranks publish their addresses under the same keys, so
    without a fresh prefix a rank that re-forms first reads a peer's old address and connects to
    the group that peer has not yet destroyed ("Connection reset by peer").
    """
    key = (os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", ""), rank)
    store = _STORES.get(key)
    if store is None:
        # rank 0's store on 127.0.0.1 only when every rank is on this machine (pfl_dist/endpoints.py)
        store = loopback_store(rank=rank, world_size=world_size, timeout=timeout, environ=dict(os.environ))
        if store is None:
            store, _, _ = next(dist.rendezvous("env://", rank, world_size, timeout=timeout))
        _STORES[key] = store
    store.set_timeout(timeout)
    return dist.PrefixStore(f"pfl_dist/group{next(_GROUPS)}/", store)


def init_runtime(cfg: Config) -> Runtime:
    existing = existing_group()
    if existing is not None:
        return join_existing_group(cfg, *existing)
    world_size = env_world_size()
    rank, local_rank = env_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    device = select_device(cfg.run.device, local_rank)
    backend = select_backend(cfg.comm.backend, device) if launched_by_torchrun() else None
    set_num_threads(local_world_size)
    if backend is not None:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        timeout = timedelta(seconds=cfg.comm.timeout_s)
        store = group_store(rank=rank, world_size=world_size, timeout=timeout)
        dist.init_process_group(backend=backend, timeout=timeout, store=store, rank=rank, world_size=world_size)
    return Runtime(rank=rank, world_size=world_size, local_rank=local_rank,
                   local_world_size=local_world_size, device=device, backend=backend)


def shutdown_runtime(runtime: Runtime) -> None:
    if runtime.distributed and runtime.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """End a torchrun worker with `code` without the interpreter's teardown.

    Everything a run writes is closed and flushed by then (run dir files are written atomically,
    the TensorBoard writer is closed, the process group destroyed), but tearing down torch's
    modules still took ~1.5 s per job here (docs/PERFORMANCE.md), paid once per torchrun job.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def collective_failure(err: RuntimeError) -> bool:
    """Raised inside a torch.distributed call; gloo raises a plain RuntimeError on a timeout."""
    if isinstance(err, dist.DistError):
        return True
    return any(Path(frame.f_code.co_filename).match("torch/distributed/*.py")
               for frame, _ in traceback.walk_tb(err.__traceback__))


def failure_reason(err: RuntimeError) -> str:
    """The first sentence of gloo's message, without its source location: 'Timed out waiting
    10000ms for recv operation to complete', 'Read error [10.0.0.2]:5000: Connection reset by peer'."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if text.startswith("[") and "] " in text:
        text = text.split("] ", 1)[1]
    return text.split(". ", 1)[0]
