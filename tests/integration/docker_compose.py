"""Helpers for tests/integration/test_docker_compose.py: a docker engine (started here when none
runs, stopped by its PID afterwards), the offline image build, and one compose project whose
`down -v` is checked to leave nothing behind, also when the test fails."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker" / "docker-compose.yml"
NODES = ("master", "worker1", "worker2")
PROJECT_LABEL = "com.docker.compose.project"


def _run(argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL, cwd=REPO)
    if check and done.returncode != 0:
        output = f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}):\n{output}")
    return done


def engine_answers() -> bool:
    try:
        return _run(["docker", "info"], timeout=20, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@dataclass
class Engine:
    """The docker engine the tests use; `process` is set when the tests started dockerd."""

    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def stop(self) -> None:
        """Stop the dockerd this module started, by its PID (never one it did not start)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


def start_engine(log: Path) -> tuple[Engine | None, str]:
    """-> (engine, "") when `docker info` answers (started here if needed), else (None, reason)."""
    missing = [tool for tool in ("docker", "docker-compose") if shutil.which(tool) is None]
    if missing:
        return None, f"{' and '.join(missing)} not on PATH (apt-get install docker.io docker-compose)"
    if engine_answers():
        return Engine(), ""
    if os.geteuid() != 0 or shutil.which("dockerd") is None:
        return None, "no docker engine answers, and dockerd cannot be started here (needs root and dockerd)"
    with log.open("wb") as out:
        process = subprocess.Popen(["dockerd"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    engine = Engine(process, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if engine_answers():
            return engine, ""
        time.sleep(0.5)
    engine.stop()
    tail = log.read_text(errors="replace")[-1500:]
    return None, f"dockerd did not start within 60 s (exit code {process.poll()}):\n{tail}"


def build_image(image: str) -> float:
    """docker/build_image.sh (base image via debootstrap when missing, wheelhouse, offline
    build); -> seconds taken."""
    started = time.monotonic()
    _run(["bash", "docker/build_image.sh", image], timeout=1500, env={**os.environ, "PYTHON": sys.executable})
    return time.monotonic() - started


def image_size_bytes(image: str) -> int:
    return int(_run(["docker", "image", "inspect", "-f", "{{.Size}}", image], timeout=30).stdout)


def node_command(service: str, overrides: Sequence[str]) -> list[str]:
    """The compose file's own command of `service` with `section.key=value` overrides appended."""
    command = [str(a) for a in yaml.safe_load(COMPOSE_FILE.read_text())["services"][service]["command"]]
    return command + list(overrides)


PROJECT_PREFIX = "pfltest"


def project_name(suffix: str) -> str:
    """Unique to this test process: `pfltest<pid><suffix>`."""
    return f"{PROJECT_PREFIX}{os.getpid()}{suffix}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_projects() -> list[str]:
    """Remove what a test process killed before its clean-up (SIGKILL, a CI timeout) left behind:
    only projects named `pfltest<pid>...` whose pid no longer runs. -> the projects removed."""
    stale: set[str] = set()
    for argv in (["ps", "-a"], ["network", "ls"], ["volume", "ls"]):
        listed = _run(["docker", *argv, "--filter", f"label={PROJECT_LABEL}",
                       "--format", f'{{{{.Label "{PROJECT_LABEL}"}}}}'], timeout=60).stdout.split()
        for project in listed:
            digits = project.removeprefix(PROJECT_PREFIX)
            digits = digits[:len(digits) - len(digits.lstrip("0123456789"))]
            if project.startswith(PROJECT_PREFIX) and digits and not _pid_alive(int(digits)):
                stale.add(project)
    for project in sorted(stale):
        compose = Compose(project, COMPOSE_FILE, dict(os.environ))
        compose.remove_by_label(compose.leftovers())
    return sorted(stale)


@dataclass
class Compose:
    """One compose project: the repository's compose file plus an override file."""

    project: str
    override: Path
    env: dict[str, str]
    containers_seen: set[str] = field(default_factory=set)

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = ["docker-compose", "-p", self.project, "-f", str(COMPOSE_FILE), "-f", str(self.override), *args]
        return _run(argv, timeout=timeout, env=self.env, check=check)

    def start(self, *args: str) -> subprocess.Popen[str]:
        """`docker-compose ARGS` in the background (output captured)."""
        argv = ["docker-compose", "-p", self.project, "-f", str(COMPOSE_FILE), "-f", str(self.override), *args]
        return subprocess.Popen(argv, env=self.env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def init_pid(self, service: str) -> int:
        """The host pid of the service container's init (compose `init: true`: docker-init)."""
        return int(_run(["docker", "inspect", "-f", "{{.State.Pid}}", self.container(service)], timeout=60).stdout)

    def up(self, *services: str) -> None:
        self.run("up", "-d", "--no-build", *services)
        self.containers_seen.update(self.container(s) for s in services)

    def container(self, service: str) -> str:
        ids = _run(["docker", "ps", "-aq", "--filter", f"label={PROJECT_LABEL}={self.project}",
                    "--filter", f"label=com.docker.compose.service={service}"], timeout=30).stdout.split()
        assert len(ids) == 1, f"{service}: expected one container, found {ids}"
        return ids[0]

    def wait(self, services: Sequence[str], *, timeout: float) -> dict[str, int]:
        """Block until the services' containers exit; -> their exit codes."""
        ids = [self.container(s) for s in services]
        try:
            codes = _run(["docker", "wait", *ids], timeout=timeout).stdout.split()
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{services} still running after {timeout:.0f} s:\n{self.logs()}") from None
        return {s: int(c) for s, c in zip(services, codes, strict=True)}

    def exit_codes(self, services: Sequence[str]) -> dict[str, int]:
        return {s: int(_run(["docker", "inspect", "-f", "{{.State.ExitCode}}", self.container(s)], timeout=30).stdout)
                for s in services}

    def logs(self, *services: str, tail: int = 40) -> str:
        return self.run("logs", "--no-color", f"--tail={tail}", *services, check=False).stdout

    def copy_out(self, service: str, source: str, target: Path) -> Path:
        """`docker cp` from a (stopped) container: how results leave the named volume."""
        _run(["docker", "cp", f"{self.container(service)}:{source}", str(target)], timeout=120)
        return target

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, networks and volumes that still carry this project's label."""
        label = f"label={PROJECT_LABEL}={self.project}"
        found = {kind: _run(["docker", *argv, "--filter", label], timeout=30).stdout.split()
                 for kind, argv in (("containers", ["ps", "-aq"]), ("networks", ["network", "ls", "-q"]),
                                    ("volumes", ["volume", "ls", "-q"]))}
        return {kind: ids for kind, ids in found.items() if ids}

    def remove_by_label(self, leftovers: dict[str, list[str]]) -> None:
        commands = {"containers": ["rm", "-f", "-v"], "networks": ["network", "rm"], "volumes": ["volume", "rm", "-f"]}
        for kind in ("containers", "networks", "volumes"):
            if leftovers.get(kind):
                _run(["docker", *commands[kind], *leftovers[kind]], timeout=120, check=False)


@contextlib.contextmanager
def compose_project(tmp: Path, name: str, *, image: str, services: Mapping[str, Any],
                    env: Mapping[str, str] | None = None) -> Iterator[Compose]:
    """A compose project named `name` (unique to the test, so that cleanup touches nothing else),
    with `services` as the override file's services. On the way out, whatever happened inside,
    `docker-compose down -v` runs and must leave no container, network or volume behind; anything
    it left is removed by label and the test fails."""
    override = tmp / f"{name}.override.yml"
    override.write_text(yaml.safe_dump({"version": "3.8", "services": dict(services)}, sort_keys=False))
    compose = Compose(name, override, {**os.environ, "PFL_IMAGE": image, **(env or {})})
    leftovers: dict[str, list[str]] = {}
    try:
        yield compose
    finally:
        compose.run("down", "-v", "--remove-orphans", "--timeout", "20", check=False)
        leftovers = compose.leftovers()
        compose.remove_by_label(leftovers)
    assert not leftovers, f"docker-compose down -v left {leftovers}"
