"""`docker-compose up` for real: the image built offline (debootstrap base, wheelhouse), the
compose file's master + 2 workers, results read back from the volume.

Checks: the compose run's global model is bitwise the 3-process local run's; eth0's measured
bytes are within 10% of the byte model for an 800 KB model; TensorBoard answers on 127.0.0.1
and on no other host address; `docker-compose stop` ends every training container with exit 75
and the next `up` ends bitwise equal to an uninterrupted run; `docker-compose down -v` leaves no
container, network or volume, also when the test fails.

Starts dockerd when none runs (and stops it by its PID afterwards); skips with the reason when
it cannot. Compose projects are named `pfltest<pid><test>`; what a killed test process (SIGKILL,
a CI timeout) left behind is removed at the next start, and only when that pid no longer runs.

Measured on a machine shared by 8 jobs (load 20-30 on 2 cores): 25 min with nothing cached
(18 min of it the base image, the wheelhouse and the build), 6-11 min with the image cached.
`make docker-test` runs only this file.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pfl_dist.launch import TORCHRUN_ENV
from tests.faults import descendants, freeze, rank_of, signal_pending, thaw, wait_for
from tests.integration.docker_compose import (
    NODES,
    REPO,
    Compose,
    build_image,
    compose_project,
    image_size_bytes,
    node_command,
    project_name,
    remove_stale_projects,
    start_engine,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

IMAGE = "pfl_dist-test:cpu"  # not the user's pfl_dist:cpu
RUN_TIMEOUT_S = 600.0
# The netns emulation's job (tests/integration/test_compose_cluster.py): an 800 KB model, so
# that per-frame headers stay a few percent of the bytes, and three short rounds.
WIRE_JOB = ("train.num_rounds=3", "train.eval_every=3", "data.dim=20000", "data.num_classes=10",
            "data.samples_per_client=50", "algorithm.num_local_steps=2", "algorithm.smoothness=1.0")
TOLERANCE = 0.10
# Rounds of about 1 s (more on a loaded machine). The stop test holds the job once round 2 is
# logged (worker2's rank SIGSTOPped), so `docker-compose stop` lands in the middle however long
# compose takes to start and signal; the rounds after 2 are a margin for the moment between
# seeing round 2 logged and holding the job.
STOP_ROUNDS = 12
STOP_JOB = ("data.num_clients=3", "algorithm.num_local_steps=15000", f"train.num_rounds={STOP_ROUNDS}",
            "train.eval_every=1")


def _say(message: str) -> None:
    """Measurements for the log (`make docker-test` shows them)."""
    print(f"docker-test: {message}", file=sys.stderr, flush=True)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A docker engine and the offline-built image; the engine is stopped afterwards if this
    module started it."""
    engine, reason = start_engine(tmp_path_factory.mktemp("dockerd") / "dockerd.log")
    if engine is None:
        pytest.skip(f"cannot run docker: {reason}")
    try:
        stale = remove_stale_projects()
        if stale:
            _say(f"removed what killed test runs left behind: {', '.join(stale)}")
        seconds = build_image(IMAGE)
        _say(f"image {IMAGE} built in {seconds:.0f} s (base image, wheelhouse and build), "
             f"{image_size_bytes(IMAGE) / 1e6:.0f} MB")
        yield IMAGE
    finally:
        engine.stop()


def _local_run(out_dir: Path, *overrides: str) -> dict:
    """The same job as 3 local processes (`python -m pfl_dist.launch --nproc-per-node=3`)."""
    env = {**os.environ, **TORCHRUN_ENV, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "pfl_dist.launch", "--nproc-per-node=3", "--config",
                           "configs/default.yaml", f"run.out_dir={out_dir}", "run.name=local", *overrides],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out_dir / "local" / "summary.json").read_text())


def _free_port(preferred: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])


def _host_addresses() -> list[str]:
    """Every address of this host except 127.0.0.1 (link-local IPv6 needs a scope: left out)."""
    done = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True, timeout=30, check=True)
    found = {info["local"] for link in json.loads(done.stdout) for info in link.get("addr_info", [])
             if not str(info.get("local", "")).startswith("fe80:")}
    return sorted((found | {"127.0.0.2"}) - {"127.0.0.1"})


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _tensorboard_runs(port: int, *, timeout: float) -> list[str]:
    """TensorBoard's run list over HTTP on 127.0.0.1, once it answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5) as response:
                runs = json.loads(response.read())
            if runs:
                return [str(r) for r in runs]
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"TensorBoard did not list a run on 127.0.0.1:{port} within {timeout:.0f} s")
        time.sleep(1)


def _nodes_with(overrides: tuple[str, ...]) -> dict[str, dict[str, list[str]]]:
    return {n: {"command": node_command(n, overrides)} for n in NODES}


def test_compose_run_matches_the_local_run_and_the_byte_model(image: str, tmp_path: Path) -> None:
    local = _local_run(tmp_path / "local", *WIRE_JOB)
    port = _free_port(6006)
    with compose_project(tmp_path, project_name("wire"), image=image, services=_nodes_with(WIRE_JOB),
                         env={"PFL_TENSORBOARD_PORT": str(port)}) as compose:
        started = time.monotonic()
        compose.up(*NODES, "tensorboard")
        codes = compose.wait(NODES, timeout=RUN_TIMEOUT_S)
        _say(f"compose run (up to all 3 nodes done) {time.monotonic() - started:.0f} s")
        assert codes == {n: 0 for n in NODES}, compose.logs()
        run_dir = compose.copy_out("master", "/runs/compose", tmp_path / "compose")

        # TensorBoard: on the host's loopback, reading the volume, and nowhere else
        runs = _tensorboard_runs(port, timeout=120)
        assert any(r.split("/")[0] == "compose" for r in runs), runs
        answering = [host for host in _host_addresses() if _answers(host, port)]
        assert not answering, f"TensorBoard's port {port} answers on {answering}"
        _say(f"TensorBoard answered on 127.0.0.1:{port}, not on {', '.join(_host_addresses())}")

    summary = json.loads((run_dir / "summary.json").read_text())
    comm = summary["comm"]
    assert summary["world_size"] == 3 and summary["num_rounds_completed"] == 3
    model_bytes = comm["payload_bytes"] // comm["num_collectives"] // summary["world_size"]
    assert model_bytes >= 800_000
    assert summary["global_model_sha256"] == local["global_model_sha256"]
    ratio = comm["wire_bytes_measured"] / comm["wire_bytes_model"]
    _say(f"wire bytes measured on eth0 {comm['wire_bytes_measured']} / model {comm['wire_bytes_model']} "
         f"= {ratio:.4f} ({model_bytes} B model); sha256 {summary['global_model_sha256'][:16]}... = local 3-process")
    assert abs(ratio - 1.0) <= TOLERANCE


def _wait_for_round(run_dir: Path, compose: Compose, *, at_least: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    metrics = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        lines = metrics.read_text().split("\n")[:-1] if metrics.exists() else []  # whole lines only
        if any(json.loads(line)["round"] >= at_least for line in lines):
            return
        time.sleep(0.1)
    raise AssertionError(f"round {at_least} not logged within {timeout:.0f} s:\n{compose.logs()}")


def test_compose_stop_exits_75_and_the_next_up_resumes_bitwise(image: str, tmp_path: Path) -> None:
    reference = _local_run(tmp_path / "local", *STOP_JOB)
    runs = tmp_path / "runs"  # a bind mount this time (PFL_RUNS), writable by the image's user
    runs.mkdir()
    runs.chmod(0o777)
    with compose_project(tmp_path, project_name("stop"), image=image, services=_nodes_with(STOP_JOB),
                         env={"PFL_RUNS": str(runs)}) as compose:
        compose.up(*NODES)
        worker2 = compose.init_pid("worker2")
        _wait_for_round(runs / "compose", compose, at_least=2, timeout=RUN_TIMEOUT_S)
        # Hold the job: worker2's rank stops (SIGSTOP), the other ranks wait for it in the round's
        # all-reduce. It continues only once docker-compose's SIGTERM has reached it (through
        # docker-init, pfl_dist.launch and torchrun's agent), so the stop lands mid-run.
        rank = next(pid for pid in descendants(worker2) if rank_of(pid) is not None)
        freeze(rank)
        started = time.monotonic()
        try:
            assert not (runs / "compose" / "summary.json").exists(), "the run completed before it could be held"
            stopping = compose.start("stop")
            assert wait_for(lambda: signal_pending(rank, signal.SIGTERM) or stopping.poll() is not None,
                            timeout=300), "docker-compose stop's SIGTERM never reached worker2's rank"
        finally:
            thaw(rank)
        output = stopping.communicate(timeout=300)[0]
        assert stopping.returncode == 0, output
        _say(f"docker-compose stop took {time.monotonic() - started:.1f} s")
        codes = compose.exit_codes(NODES)
        assert codes == {n: 75 for n in NODES}, compose.logs()
        # rank 0 (master) says where it checkpointed (its own SIGTERM, or the workers' one that
        # reached it first through the round's all-reduce); the other launchers say they stopped.
        assert re.search(rf"pfl_dist: stopped by .* after round \d+/{STOP_ROUNDS}; checkpoint ",
                         compose.logs("master", tail=300)), compose.logs()
        for node in NODES[1:]:
            assert "pfl_dist: stopped by SIGTERM" in compose.logs(node, tail=300), compose.logs()
        summary_path = runs / "compose" / "summary.json"
        assert not summary_path.exists()
        checkpoints = sorted(p.name for p in (runs / "compose" / "ckpt").iterdir())
        assert checkpoints, "the stop should have written a checkpoint"

        compose.up(*NODES)
        codes = compose.wait(NODES, timeout=RUN_TIMEOUT_S)
        assert codes == {n: 0 for n in NODES}, compose.logs()

    summary = json.loads(summary_path.read_text())
    stopped_after = int(checkpoints[-1].removeprefix("round_"))
    _say(f"stopped after round {stopped_after}/{STOP_ROUNDS} (exit codes {codes}); resumed sha256 "
         f"{summary['global_model_sha256'][:16]}... = uninterrupted")
    assert 2 <= stopped_after < STOP_ROUNDS
    assert summary["resumed_from"] == [stopped_after]
    assert summary["num_rounds_completed"] == STOP_ROUNDS
    assert summary["global_model_sha256"] == reference["global_model_sha256"]


class DeliberateFailure(Exception):
    pass


def test_down_leaves_nothing_behind_when_the_test_fails(image: str, tmp_path: Path) -> None:
    bad = ("train.num_roundz=3",)  # every node exits 2 with one error line
    project = compose_project(tmp_path, project_name("fail"), image=image, services=_nodes_with(bad))
    with pytest.raises(DeliberateFailure), project as compose:
        compose.up(*NODES)
        codes = compose.wait(NODES, timeout=RUN_TIMEOUT_S)
        logs = compose.logs()
        raise DeliberateFailure
    assert codes == {n: 2 for n in NODES}, logs
    assert "pfl_dist: error:" in logs and "Traceback" not in logs, logs
    assert compose.leftovers() == {}


def test_the_image_runs_the_fashion_mnist_experiment(image: str) -> None:
    """Debian's Fashion-MNIST is in the image: the paper's image experiment runs, scaled down."""
    name = project_name("fmnist")
    argv = ["docker", "run", "--rm", "--name", name, image, "python", "-m", "pfl_dist.launch", "--nproc-per-node=2",
            "--config", "configs/fmnist_logreg.yaml", "data.num_clients=2", "train.num_rounds=1",
            "algorithm.local_epochs=1", "run.out_dir=/tmp/runs"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    final = [line for line in done.stdout.splitlines() if line.startswith("final: ")]
    assert final and "acc_personal" in final[0], done.stdout[-2000:]
    _say(f"Fashion-MNIST in the image: {final[0]}")
