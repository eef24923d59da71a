"""`docker compose up`, emulated: the compose file's own node commands, one network
namespace per service, and the bytes the network interfaces counted vs the byte model.

Needs root (network namespaces); skips with the reason otherwise. About 30 s on 2 cores.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pfl_dist.netem.compose import load_compose_services, start_service
from pfl_dist.netem.namespaces import NetnsCluster, netns_available, netns_cluster

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker" / "docker-compose.yml"
TIMEOUT_S = 300.0
# The measured/model ratio holds for messages much larger than a frame: gloo splits a ring
# all-reduce into W chunks, and per-frame headers plus ACKs then add ~5% (1500-byte MTU,
# offloads off). The default demo model (84 bytes) would measure ~40x its size in headers,
# so the job keeps the cluster's commands but uses an 800 KB model and three short rounds.
CLUSTER_OVERRIDES = (
    "train.num_rounds=3",
    "train.eval_every=3",
    "data.dim=20000",
    "data.num_classes=10",
    "data.samples_per_client=50",
    "algorithm.num_local_steps=2",
    "algorithm.smoothness=1.0",  # 'auto' would eigendecompose a 20000 x 20000 Gram matrix
)
TOLERANCE = 0.10
# Codecs whose measured bytes must match the model too, with their collectives per round (a
# codec adds a 24-32 byte control all-reduce; PowerSGD all-reduces P and then Q). Their payloads
# stay far above a frame: fp16 400 KB, top-k 10% of 200,000 weights with indices 160 KB per
# client, PowerSGD rank 4 of the 20000 x 10 weight matrix 320 KB (P) + 160 B (Q).
CODECS = {"none": 1, "fp16": 2, "topk:0.1": 2, "powersgd:4": 3}


def _node_services(compose_file: Path) -> list[str]:
    """The training services (`python -m pfl_dist.launch`), `master` first: it hosts the c10d
    rendezvous."""
    services = load_compose_services(compose_file)
    nodes = [n for n, s in services.items() if s.command[:3] == ("python", "-m", "pfl_dist.launch")]
    return sorted(nodes, key=lambda n: n != "master")


def _run_name(command: tuple[str, ...]) -> str:
    names = [a.split("=", 1)[1] for a in command if a.startswith("run.name=")]
    assert names, "the compose command should set run.name so the run dir is known"
    return names[-1]


def _log_tails(cluster: NetnsCluster, num_chars: int = 3000) -> str:
    return "\n".join(f"----- {n}\n{p.log_text()[-num_chars:]}" for n, p in cluster.processes.items())


@pytest.mark.integration
@pytest.mark.parametrize("codec", list(CODECS))
def test_compose_cluster_measured_wire_bytes_match_model(tmp_path: Path, codec: str) -> None:
    available, reason = netns_available()
    if not available:
        pytest.skip(f"cannot emulate the compose cluster: {reason}")
    if not (REPO / "pfl_dist" / "train.py").exists():
        pytest.skip("pfl_dist/train.py is not there yet")

    # Prepare
    services = load_compose_services(COMPOSE_FILE)
    nodes = _node_services(COMPOSE_FILE)
    runs, logs = tmp_path / "runs", tmp_path / "logs"
    runs.mkdir()
    logs.mkdir()

    # Execute
    with netns_cluster(nodes) as cluster:
        for name in nodes:
            start_service(
                cluster,
                services[name],
                path_map={"/app": REPO, "/runs": runs},
                executables={"python": sys.executable},
                overrides=(*CLUSTER_OVERRIDES, f"comm.codec={codec}"),
                log_dir=logs,
            )
        try:
            exit_codes = cluster.wait(timeout=TIMEOUT_S)
        except TimeoutError as error:
            pytest.fail(f"{error}\n{_log_tails(cluster)}")
        assert all(code == 0 for code in exit_codes.values()), f"{exit_codes}\n{_log_tails(cluster)}"
        offloads_disabled = cluster.offloads_disabled

    # Assert
    summary = json.loads((runs / _run_name(services["master"].command) / "summary.json").read_text())
    comm = summary["comm"]
    assert summary["world_size"] == len(nodes)
    assert summary["num_rounds_completed"] == 3
    assert comm["num_collectives"] == 3 * CODECS[codec]
    assert comm["wire_bytes_measured"] is not None, "GLOO_SOCKET_IFNAME=eth0 should enable measuring"
    ratio = comm["wire_bytes_measured"] / comm["wire_bytes_model"]
    print(f"{codec}: measured {comm['wire_bytes_measured']} B, model {comm['wire_bytes_model']} B, ratio {ratio:.4f}")
    assert abs(ratio - 1.0) <= TOLERANCE, (
        f"measured {comm['wire_bytes_measured']} B vs model {comm['wire_bytes_model']} B: "
        f"ratio {ratio:.3f} (offloads disabled: {offloads_disabled})"
    )
