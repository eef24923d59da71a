"""docker/docker-compose.yml: valid for docker-compose, and the cluster contract holds."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker" / "docker-compose.yml"
RDZV_ENDPOINT = "master:29400"


def _services() -> dict[str, Any]:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    assert isinstance(services, dict)
    return services


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    assert isinstance(command, list), "keep commands as lists: tests run them outside docker"
    return [str(a) for a in command]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _nodes() -> dict[str, dict[str, Any]]:
    """The training services: `python -m pfl_dist.launch` (which forwards `docker stop` to torchrun)."""
    return {n: s for n, s in _services().items() if _command(s)[:3] == ["python", "-m", "pfl_dist.launch"]}


@pytest.mark.integration
def test_docker_compose_accepts_the_file() -> None:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not on PATH (apt-get install docker-compose)")
    done = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_cluster_has_a_master_and_at_least_two_workers() -> None:
    nodes = _nodes()
    workers = [n for n in nodes if n.startswith("worker")]
    assert "master" in nodes
    assert len(workers) >= 2
    for name, service in nodes.items():
        nnodes = [a for a in _command(service) if a.startswith("--nnodes=")]
        assert nnodes == [f"--nnodes={len(nodes)}"], f"{name}: --nnodes must count every node service"


def test_every_node_sets_the_required_environment() -> None:
    for name, service in _nodes().items():
        env = _environment(service)
        assert env.get("TORCH_DISABLE_SHARE_RDZV_TCP_STORE") == "1", name
        assert env.get("GLOO_SOCKET_IFNAME"), name
        assert env.get("OMP_NUM_THREADS"), name


def test_every_node_joins_the_c10d_rendezvous_on_master() -> None:
    for name, service in _nodes().items():
        command = _command(service)
        assert "--rdzv-backend=c10d" in command, name
        assert f"--rdzv-endpoint={RDZV_ENDPOINT}" in command, name
        assert any(a.startswith("--max-restarts=") for a in command), name
        assert "run.out_dir=/runs" in command, name
        rdzv_conf = [a for a in command if a.startswith("--rdzv-conf=")]
        is_host = "is_host=true" in rdzv_conf[0] if rdzv_conf else False
        assert is_host == (name == "master"), f"{name}: only master hosts the rendezvous store"


def test_nodes_share_the_runs_volume() -> None:
    for name, service in _nodes().items():
        # `${PFL_RUNS:-runs}:/runs`: the named volume unless PFL_RUNS names a host directory.
        assert "${PFL_RUNS:-runs}:/runs" in [str(v) for v in service["volumes"]], name


def test_tensorboard_is_published_on_loopback_only() -> None:
    ports = [str(p) for p in _services()["tensorboard"]["ports"]]
    assert ports, "tensorboard should publish its port"
    assert all(p.startswith("127.0.0.1:") for p in ports), ports
