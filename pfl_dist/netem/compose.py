"""A docker-compose cluster without docker: the compose file's own service commands, one network
namespace per service (pfl_dist/netem/namespaces.py), container paths mapped to host paths.

    services = load_compose_services("docker/docker-compose.yml")
    with netns_cluster(["master", "worker1"]) as cluster:
        start_service(cluster, services["master"], path_map={"/app": repo, "/runs": tmp},
                      executables={"torchrun": venv_torchrun}, log_dir=logs)
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pfl_dist.netem.namespaces import NetnsCluster, NodeProcess


@dataclass(frozen=True)
class ComposeService:
    """The parts of a compose service that the emulation needs."""

    name: str
    command: tuple[str, ...]
    environment: Mapping[str, str]
    working_dir: str | None


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
    """Read the services of a compose file. Only `command`, `environment`, `working_dir` are used;
    services without a command are skipped (the image default is unknown here)."""
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


def translate_path(value: str, path_map: Mapping[str, str | os.PathLike[str]]) -> str:
    """Replace container paths by host paths where a path starts: at the start of the string, or
    after ``=`` or ``:`` (``run.out_dir=/runs``, ``--logdir=/runs/x``)."""
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


def translate_command(argv: Sequence[str], *, path_map: Mapping[str, str | os.PathLike[str]],
                      executables: Mapping[str, str | os.PathLike[str]]) -> list[str]:
    """Map the program (``torchrun`` -> a venv's torchrun) and container paths."""
    program, *args = argv
    program = os.fspath(executables.get(program, program))
    return [program, *(translate_path(a, path_map) for a in args)]


def start_service(cluster: NetnsCluster, service: ComposeService, *, path_map: Mapping[str, str | os.PathLike[str]],
                  executables: Mapping[str, str | os.PathLike[str]] | None = None, overrides: Sequence[str] = (),
                  log_dir: str | os.PathLike[str]) -> NodeProcess:
    """Start a service's command in the node of the same name. ``path_map`` maps container paths
    (``/app``, ``/runs``) to host paths; the service's working dir must be one of them. The
    environment is this process's, updated by the service's environment."""
    argv = translate_command(apply_overrides(service.command, overrides), path_map=path_map,
                             executables=executables or {})
    env = dict(os.environ)
    env.update({k: translate_path(v, path_map) for k, v in service.environment.items()})
    cwd = translate_path(service.working_dir, path_map) if service.working_dir else os.getcwd()
    return cluster.start(service.name, argv, env=env, log_dir=log_dir, cwd=cwd)
