"""Validate a config, then start it under torchrun: `python -m pfl_dist.launch [torchrun options]
--config X.yaml [section.key=value ...]`.

Checking first means bad input costs one clear line and exit code 2 instead of W worker
failures and torchrun's error report. The launcher also sets TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1,
without which an elastic restart of a gloo group fails to reconnect (docs/RELIABILITY.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

from pfl_dist.config import SECTIONS, Config, load_config
from pfl_dist.errors import ConfigError, PflError

_RDZV_OPTIONS = ("--standalone", "--rdzv-endpoint", "--rdzv_endpoint", "--master-addr", "--master_addr")
# torch 2.13: an elastic restart of a gloo group cannot reconnect without it (docs/RELIABILITY.md).
TORCHRUN_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def torchrun_command(torchrun_args: Sequence[str]) -> list[str]:
    """`python -m torch.distributed.run ARGS`, with --standalone (a free port per job, so parallel
    jobs never collide) unless ARGS name a rendezvous."""
    args = list(torchrun_args)
    if not any(a.split("=")[0] in _RDZV_OPTIONS for a in args):
        args.insert(0, "--standalone")
    return [sys.executable, "-m", "torch.distributed.run", *args]


def is_override(arg: str) -> bool:
    """`section.key=value` with a known section; anything else belongs to torchrun."""
    key = arg.split("=", 1)[0]
    return "=" in arg and key.split(".")[0] in SECTIONS and key.count(".") == 1


def split_args(argv: Sequence[str]) -> tuple[list[str], str | None, list[str]]:
    """-> (torchrun options, config path, overrides)."""
    torchrun_args: list[str] = []
    config: str | None = None
    overrides: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--config" or arg.startswith("--config="):
            config = arg.split("=", 1)[1] if "=" in arg else (args.pop(0) if args else None)
            if config is None:
                raise ConfigError("--config needs a file path")
        elif is_override(arg):
            overrides.append(arg)
        else:
            torchrun_args.append(arg)
    return torchrun_args, config, overrides


def option_value(args: Sequence[str], *names: str) -> str | None:
    for i, arg in enumerate(args):
        for name in names:
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
            if arg == name and i + 1 < len(args):
                return args[i + 1]
    return None


def planned_world_size(torchrun_args: Sequence[str]) -> int:
    nproc = option_value(torchrun_args, "--nproc-per-node", "--nproc_per_node") or "1"
    nnodes = option_value(torchrun_args, "--nnodes") or "1"
    if not nproc.isdigit():
        raise ConfigError(f"--nproc-per-node must be a number here, got '{nproc}'")
    max_nodes = nnodes.split(":")[-1]
    if not max_nodes.isdigit():
        raise ConfigError(f"--nnodes must be N or MIN:MAX, got '{nnodes}'")
    return int(nproc) * int(max_nodes)


def preflight(cfg: Config, *, world_size: int) -> None:
    """Everything that can be checked before any process starts."""
    cfg.check_world_size(world_size)
    if cfg.data.kind != "synthetic":
        # Loads the data once (~1 s) so corrupt files and impossible partitions also fail here.
        from pfl_dist.tasks.images import preflight as images_preflight

        images_preflight(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        torchrun_args, config, overrides = split_args(sys.argv[1:] if argv is None else argv)
        cfg = load_config(config, overrides)
        preflight(cfg, world_size=planned_world_size(torchrun_args))
    except PflError as err:
        print(f"pfl_dist: error: {err}", file=sys.stderr)
        return err.exit_code
    command = [*torchrun_command(torchrun_args), "-m", "pfl_dist.train"]
    command += (["--config", config] if config else []) + overrides
    return run_torchrun(command, env={**os.environ, **TORCHRUN_ENV})


# torchrun failures that end in its own multi-page report; the launcher adds one line that says
# what happened and what to do.
_TORCHRUN_FAILURES = {
    "RendezvousTimeoutError": "rendezvous timed out: not every node joined within the join timeout "
    "(--rdzv-conf=join_timeout=S); check that every node runs the same command and reaches the endpoint",
    "RendezvousConnectionError": "cannot reach the rendezvous endpoint (--rdzv-endpoint); is node 0 up?",
}


def run_torchrun(command: list[str], *, env: dict[str, str]) -> int:
    """Run torchrun, passing its stderr through, and end a known failure with one clear line."""
    seen: set[str] = set()
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, bufsize=1)
    assert process.stderr is not None
    try:
        for line in process.stderr:
            sys.stderr.write(line)
            seen.update(marker for marker in _TORCHRUN_FAILURES if marker in line)
        code = process.wait()
    except KeyboardInterrupt:
        process.wait()
        return 130
    for marker in seen if code else ():
        print(f"pfl_dist: error: {_TORCHRUN_FAILURES[marker]}", file=sys.stderr)
    return code


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
