"""`python -m pfl_dist.netem` end to end: a shaped run against the model, and clean-up on every
exit path (SIGTERM, SIGINT, a failed node, and a SIGKILL whose leftovers the next start removes).

Needs root (network namespaces, tc); skips with the reason otherwise. Each test is bounded by
its timeouts (about 10-40 s each on 2 cores).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pfl_dist.netem import state
from pfl_dist.netem.namespaces import NETNS_ETC, list_namespaces, netns_available, pids_in_namespace
from pfl_dist.netem.shaping import qdisc_available
from tests.helpers import REPO

pytestmark = pytest.mark.integration
AVAILABLE, REASON = netns_available()
needs_netns = pytest.mark.skipif(not AVAILABLE, reason=f"cannot build network namespaces: {REASON}")
# The synthetic task with an 800 KB model: large against a frame, cheap to compute.
BIG_MODEL = ("data.dim=20000", "data.num_classes=10", "data.samples_per_client=50", "algorithm.num_local_steps=2",
             "algorithm.smoothness=1.0")


def netem_command(tmp_path: Path, *args: str, rounds: int = 3) -> list[str]:
    return [sys.executable, "-m", "pfl_dist.netem", *args, "--config", str(REPO / "configs/default.yaml"),
            f"run.out_dir={tmp_path}", "run.name=run", f"train.num_rounds={rounds}", f"train.eval_every={rounds}",
            *BIG_MODEL]


def start_tool(tmp_path: Path, *args: str, sigint_ignored: bool = False) -> subprocess.Popen[str]:
    """A long job on slow links, so it is still running when a test stops it. `sigint_ignored`:
    started as from a script's `&` (the shell hands background jobs SIGINT ignored)."""
    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def default_sigint() -> None:  # whatever the suite itself inherited (it may run in the background)
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    return subprocess.Popen(netem_command(tmp_path, "--nodes", "3", "--rate", "1mbit", *args, rounds=1000),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ignore_sigint if sigint_ignored else default_sigint)


def wait_running(process: subprocess.Popen[str], timeout: float = 600.0) -> dict[str, Any]:
    """The tool's state record once every node's torchrun has started (`timeout`: a hang guard
    only; three torchrun agents start slowly on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        for record in state.records().values():
            if record["pid"] == process.pid and record.get("phase") == "running":
                node_namespaces = record["namespaces"][1:]
                if all(pids_in_namespace(n) for n in node_namespaces):
                    return record
        time.sleep(0.2)
    process.kill()
    pytest.fail(f"the tool did not start its nodes within {timeout:.0f} s: {process.communicate()}")


def assert_removed(record: dict[str, Any]) -> None:
    existing = set(list_namespaces())
    assert not existing & set(record["namespaces"]), f"namespaces left: {existing & set(record['namespaces'])}"
    assert not any((NETNS_ETC / n).exists() for n in record["namespaces"])
    assert not any(path for path, r in state.records().items() if r["pid"] == record["pid"])


@pytest.fixture
def tool(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[subprocess.Popen[str]]:
    process = start_tool(tmp_path, sigint_ignored=getattr(request, "param", False))
    yield process
    if process.poll() is None:
        process.kill()
        process.communicate()
    subprocess.run([sys.executable, "-m", "pfl_dist.netem", "--cleanup"], cwd=REPO, capture_output=True, timeout=60)


@needs_netns
def test_shaped_run_measures_the_modelled_wire_bytes_and_takes_at_least_the_link_time(tmp_path: Path) -> None:
    done = subprocess.run(netem_command(tmp_path, "--nodes", "3", "--rate", "20mbit"), cwd=REPO,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "netem.json").read_text())
    assert result["training_collectives"] == 3 and result["measured_rounds"] == 3
    assert abs(result["wire_ratio"] - 1) <= 0.10, result
    # The shaper sets the pace: never faster than the link. (No upper bound: on shared cores the
    # CPU adds to each round whatever the machine's load is.)
    assert result["comm_ratio"] >= 0.95, result
    assert "comm time per round measured" in done.stdout and "wire bytes measured" in done.stdout
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rounds = metrics[-1]["time"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3] and all(len(r["wait_s"]) == 3 for r in rounds)
    assert min(min(r["wait_s"]) for r in rounds) == 0.0  # the last rank to arrive waits for nobody


@needs_netns
@pytest.mark.parametrize(("sig", "code", "tool"),
                         [(signal.SIGTERM, 143, False), (signal.SIGINT, 130, False), (signal.SIGINT, 130, True)],
                         ids=["SIGTERM", "SIGINT", "SIGINT-inherited-ignored"], indirect=["tool"])
def test_a_signal_removes_namespaces_qdiscs_and_processes(tool: subprocess.Popen[str], sig: int, code: int) -> None:
    record = wait_running(tool)
    tool.send_signal(sig)
    _, stderr = tool.communicate(timeout=180)  # a round on the 1 Mbit link is seconds; slower on a loaded box
    assert tool.returncode == code, stderr
    assert f"stopped by {signal.Signals(sig).name}" in stderr
    assert_removed(record)


@needs_netns
def test_a_failed_node_ends_the_run_and_everything_is_removed(tool: subprocess.Popen[str]) -> None:
    record = wait_running(tool)
    for pid in pids_in_namespace(record["namespaces"][2]):  # every process of node 1
        os.kill(pid, signal.SIGKILL)
    _, stderr = tool.communicate(timeout=120)
    assert tool.returncode not in (0, None)
    assert "nodes failed" in stderr
    assert_removed(record)


@needs_netns
def test_cleanup_alone_removes_leftovers(tool: subprocess.Popen[str]) -> None:
    record = wait_running(tool)
    tool.kill()
    tool.communicate(timeout=30)
    done = subprocess.run([sys.executable, "-m", "pfl_dist.netem", "--cleanup"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert all(n in done.stdout for n in record["namespaces"])
    assert_removed(record)


@needs_netns
def test_after_a_sigkill_the_next_start_removes_the_leftovers(tool: subprocess.Popen[str], tmp_path: Path) -> None:
    record = wait_running(tool)
    node = record["namespaces"][1]
    assert "tbf" in subprocess.run(["tc", "-n", node, "qdisc", "show", "dev", "eth0"], capture_output=True,
                                   text=True).stdout
    tool.kill()
    tool.communicate(timeout=30)
    # SIGKILL ran no clean-up: the namespaces (and the qdiscs on their links) are still there.
    assert set(record["namespaces"]) <= set(list_namespaces())
    # The next start (an unshaped one-round job) removes them before it builds its own cluster.
    done = subprocess.run(netem_command(tmp_path / "next", "--nodes", "2", rounds=1), cwd=REPO, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_removed(record)
    shown = subprocess.run(["tc", "-n", node, "qdisc", "show"], capture_output=True, text=True)
    assert shown.returncode != 0  # the namespace, and with it every qdisc of the node, is gone


@needs_netns
def test_delay_and_loss_need_netem_one_line_and_exit_2(tmp_path: Path) -> None:
    has_netem, why = qdisc_available("netem")
    if has_netem:
        pytest.skip("this kernel has sch_netem: --delay and --loss run instead of failing")
    for flag, value in (("--delay", "20ms"), ("--loss", "0.1%")):
        done = subprocess.run(netem_command(tmp_path, "--nodes", "2", "--rate", "10mbit", flag, value), cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert lines[0].startswith("pfl_dist: error: ") and flag in lines[0] and "netem" in lines[0], why


def test_without_cap_net_admin_one_line_and_exit_2(tmp_path: Path) -> None:
    command = netem_command(tmp_path, "--nodes", "2", "--rate", "10mbit")
    if os.geteuid() == 0:
        if subprocess.run(["which", "setpriv"], capture_output=True).returncode != 0:
            pytest.skip("setpriv (util-linux) is needed to drop root's capabilities")
        command = ["setpriv", "--bounding-set=-net_admin,-sys_admin", "--inh-caps=-net_admin,-sys_admin", *command]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("pfl_dist: error: ") and "CAP_NET_ADMIN" in lines[0]
