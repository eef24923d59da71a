"""pfl_dist.launch in-process: its own usage, and every config error caught before torchrun starts."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pfl_dist import inputs, launch
from pfl_dist.config import load_config
from tests.helpers import REPO

DEFAULT = str(REPO / "configs" / "default.yaml")


@pytest.fixture
def no_torchrun(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Records torchrun commands instead of running them."""
    started: list[list[str]] = []
    monkeypatch.setattr(launch, "run_torchrun", lambda command, env, **_: started.append(command) or 0)
    return started


def test_help_shows_pfl_dist_usage_then_torchrun_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert launch.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m pfl_dist.launch")
    assert out.index("pfl_dist options:") < out.index("torchrun options, passed through")
    assert "--nproc-per-node" in out and "algorithm.lam=0.1" in out


def test_help_torchrun_lists_every_torchrun_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert launch.main(["--help-torchrun"]) == 0
    out = capsys.readouterr().out
    assert "All torchrun options:" in out and "--rdzv-backend" in out and "--max-restarts" in out


def test_flag_list_matches_torchruns_parser() -> None:
    from torch.distributed.run import get_args_parser

    flags = {opt for action in get_args_parser()._actions if action.nargs == 0
             for opt in action.option_strings if opt not in ("-h", "--help")}
    assert flags == launch.TORCHRUN_FLAGS
    values = {opt for action in get_args_parser()._actions if action.nargs != 0 for opt in action.option_strings}
    assert values == launch.TORCHRUN_VALUE_OPTIONS


@pytest.mark.parametrize(("args", "message"), [
    (["algoritm.lam=0.1"], "unknown config section 'algoritm' in 'algoritm.lam=0.1' (did you mean 'algorithm'?)"),
    (["algorithm.lamda=0.1"], "unknown config key 'algorithm.lamda' (did you mean 'algorithm.lam'?)"),
    (["comm.backend=nccl"], "comm.backend=nccl needs CUDA"),
    (["run.device=cuda"], "run.device=cuda needs CUDA"),
    (["model.kind=cnn"], "model.kind 'cnn' does not apply to data.kind 'synthetic'"),
    (["algorithm.batch_size=32"], "data.kind 'synthetic' does not use algorithm.batch_size=32"),
    (["stray"], "unexpected argument 'stray'"),
    (["-m", "other.module"], "-m is not supported: pfl_dist.launch always runs pfl_dist.train"),
    (["data.num_clients=2", "--nnodes", "3"], "data.num_clients (2) must be >= the world size (6)"),
])
def test_config_errors_are_one_line_exit_2_and_start_no_torchrun(
    args: list[str], message: str, no_torchrun: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    code = launch.main(["--nproc-per-node=2", "--config", DEFAULT, *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("pfl_dist: error: "), err
    assert message in err
    assert no_torchrun == []


def test_a_bad_pfl_signal_every_process_is_one_line_exit_2_and_starts_no_torchrun(
    no_torchrun: list[list[str]], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PFL_SIGNAL_EVERY_PROCESS", "true")
    code = launch.main(["--nproc-per-node=2", "--config", DEFAULT])
    err = capsys.readouterr().err
    assert code == 2
    assert err == ("pfl_dist: error: PFL_SIGNAL_EVERY_PROCESS must be 1 (the scheduler signals every process of the "
                   "job) or 0, got 'true'\n")
    assert no_torchrun == []


def _pending(pid: int, signum: int) -> bool:
    """`signum` waits for the process (ShdPnd in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("ShdPnd:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


@pytest.mark.parametrize(("every_process", "forwarded"), [(False, True), (True, False)])
def test_the_launcher_forwards_a_stop_signal_unless_every_process_got_it(every_process: bool,
                                                                         forwarded: bool) -> None:
    """Where the scheduler signals every process (a Slurm step), the agent already has the signal:
    a second one from the launcher would end it while it waits for its workers. The stand-in agent
    catches SIGTERM and is held with SIGSTOP, so a forwarded signal stays pending where it can be
    seen."""
    agent = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                              "lambda *_: None); print('ready', flush=True); time.sleep(120)"],
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert agent.stdout is not None and agent.stdout.readline() == "ready\n"
        agent.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{agent.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
            assert time.monotonic() < deadline, "the stand-in agent did not stop"
            time.sleep(0.01)
        forwarder = launch._StopForwarder(every_process=every_process)
        forwarder.attach(agent)
        forwarder._handle(signal.SIGTERM, None)
        assert forwarder.signal_name == "SIGTERM"
        assert _pending(agent.pid, signal.SIGTERM) is forwarded
    finally:
        agent.kill()
        agent.wait()


def test_a_valid_command_reaches_torchrun_with_its_options_and_overrides(no_torchrun: list[list[str]],
                                                                         tmp_path: Path) -> None:
    code = launch.main(["--nproc-per-node", "2", "--max-restarts=1", "--config", DEFAULT, "algorithm.lam=0.1",
                        f"run.out_dir={tmp_path}"])
    assert code == 0
    [command] = no_torchrun
    assert command[-7:] == ["--max-restarts=1", "-m", "pfl_dist.train", "--config", DEFAULT, "algorithm.lam=0.1",
                            f"run.out_dir={tmp_path}"]
    # no --standalone: a c10d rendezvous the launcher hosts on 127.0.0.1 (pfl_dist/endpoints.py)
    assert "--standalone" not in command and command[3] == "--rdzv-backend=c10d"
    assert command[4].startswith("--rdzv-endpoint=127.0.0.1:")
    assert command[6:11] == ["--rdzv-conf=is_host=false", "--local-addr=127.0.0.1", "--nnodes=1",
                             "--nproc-per-node", "2"]


def test_another_configs_run_dir_is_refused_before_torchrun_and_overwrite_is_passed_on(
    tmp_path: Path, no_torchrun: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a completed run of lambda 0.5 under run.name=fixed (only its config matters here)
    run_dir = tmp_path / "fixed"
    run_dir.mkdir()
    saved = load_config(DEFAULT, [f"run.out_dir={tmp_path}", "run.name=fixed"]).to_dict()
    (run_dir / "summary.json").write_text(json.dumps({"config": saved}))
    args = ["--nproc-per-node=2", "--config", DEFAULT, f"run.out_dir={tmp_path}", "run.name=fixed", "algorithm.lam=0.1"]
    # Execute / Assert: refused with one line, nothing started
    assert launch.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a completed run of another config" in err and "--overwrite" in err
    assert no_torchrun == []
    # Execute / Assert: --overwrite reaches pfl_dist.train
    assert launch.main([*args, "--overwrite"]) == 0
    assert no_torchrun[0][-1] == "--overwrite"


def test_run_completion_counts_only_a_summary_of_this_config_and_not_one_an_overwrite_found(tmp_path: Path) -> None:
    # Prepare: the launched config (lambda 0.5, 2 processes) and its run dir
    cfg = load_config(DEFAULT, [f"run.out_dir={tmp_path}", "run.name=fixed"])
    cfg.set_world_size(2)
    summary = cfg.run_dir / "summary.json"
    plain = launch.RunCompletion.before_launch(cfg, overwrite=False)
    assert not plain.complete()  # no run dir on this node (another node of a multi-node job)
    cfg.run_dir.mkdir()
    assert not plain.complete()
    # A summary of another config (another lambda; checkpoint cadence does not count) is not this run
    other = load_config(DEFAULT, [f"run.out_dir={tmp_path}", "run.name=fixed", "algorithm.lam=0.1"]).to_dict()
    summary.write_text(json.dumps({"config": other, "world_size": 2}))
    assert not plain.complete()
    same = load_config(DEFAULT, [f"run.out_dir={tmp_path}", "run.name=fixed", "checkpoint.every=7"]).to_dict()
    summary.write_text(json.dumps({"config": same, "world_size": 1}))  # nor is one on another world size
    assert not plain.complete()
    summary.write_text(json.dumps({"config": same, "world_size": 2}))
    assert plain.complete()
    summary.write_text(json.dumps({"config": same, "world_size": 2})[:-5])  # torn: not complete
    assert not plain.complete()
    # --overwrite: the summary found at launch asked to be replaced; only a new one counts
    summary.write_text(json.dumps({"config": same, "world_size": 2}))
    overwrite = launch.RunCompletion.before_launch(cfg, overwrite=True)
    assert not overwrite.complete()
    replacement = cfg.run_dir / "summary.json.tmp"
    replacement.write_text(json.dumps({"config": same, "world_size": 2, "new": True}))
    replacement.replace(summary)  # as write_json_atomic does
    assert overwrite.complete()


def test_run_completion_counts_the_input_file_contents(tmp_path: Path) -> None:
    """A summary of the same config whose model.init_file had other contents is not this run."""
    init = tmp_path / "w.npy"
    np.save(init, np.zeros(3))
    overrides = [f"run.out_dir={tmp_path}", "run.name=fixed", f"model.init_file={init}"]
    cfg = load_config(DEFAULT, overrides)
    cfg.set_world_size(1)
    cfg.run_dir.mkdir()
    (cfg.run_dir / "summary.json").write_text(json.dumps({"config": cfg.to_dict(), "world_size": 1,
                                                          inputs.SECTION: inputs.digests(cfg.inputs)}))
    assert launch.RunCompletion.before_launch(cfg, overwrite=False).complete()
    np.save(init, np.ones(3))
    edited = load_config(DEFAULT, overrides)
    edited.set_world_size(1)
    assert not launch.RunCompletion.before_launch(edited, overwrite=False).complete()


# --- the launcher's signal forwarding, in this process ----------------------------------------------


def _pending_set(pid: int) -> set[signal.Signals]:
    """Signals sent to `pid` that wait for it (it blocks them all: nothing is ever taken)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("ShdPnd:")), 16)
    return {signal.Signals(number) for number in (signal.SIGINT, signal.SIGTERM) if mask >> (number - 1) & 1}


@contextlib.contextmanager
def _forwarder_and_agent() -> Iterator[tuple[launch._StopForwarder, subprocess.Popen[bytes]]]:
    """A _StopForwarder installed in this process and a stand-in agent in a session of its own that
    blocks SIGTERM and SIGINT (inherited mask), so every signal it gets stays pending, visible."""
    forwarder = launch._StopForwarder()
    forwarder.install()
    with forwarder.held():
        agent = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        yield forwarder, agent
    finally:
        forwarder.uninstall()
        agent.kill()
        agent.wait()


def test_the_forwarder_passes_on_a_signal_that_came_before_torchrun_started() -> None:
    with _forwarder_and_agent() as (forwarder, agent):
        signal.raise_signal(signal.SIGTERM)
        assert _pending_set(agent.pid) == set()
        forwarder.attach(agent)
        assert _pending_set(agent.pid) == {signal.SIGTERM}
        assert forwarder.forwarded and forwarder.signal_name == "SIGTERM"


def test_after_the_launchers_own_stop_only_a_second_signal_reaches_the_agent() -> None:
    """Rank 0 stopped on another node's signal, so the launcher SIGTERMed its agent; the first
    signal to the launcher after that (docker stop) must not be a second one for the agent, which
    would interrupt workers still writing their checkpoint. A second one (Ctrl-C twice) is."""
    with _forwarder_and_agent() as (forwarder, agent):
        forwarder.attach(agent)
        forwarder.stop_agent()
        assert _pending_set(agent.pid) == {signal.SIGTERM}
        signal.raise_signal(signal.SIGINT)
        assert _pending_set(agent.pid) == {signal.SIGTERM}
        forwarder.stop_agent()  # once only
        signal.raise_signal(signal.SIGINT)
        assert _pending_set(agent.pid) == {signal.SIGTERM, signal.SIGINT}


def test_a_signal_after_torchrun_ended_is_ignored_not_given_its_default_action() -> None:
    """The launcher's exit code is decided once torchrun has ended: a SIGTERM then (docker-compose
    stopping the master last) neither reaches anything nor ends the launcher (this process)."""
    with _forwarder_and_agent() as (forwarder, agent):
        forwarder.attach(agent)
        forwarder.end()
        signal.raise_signal(signal.SIGTERM)
        forwarder.stop_agent()
        assert _pending_set(agent.pid) == set()
        assert forwarder.signal_name is None and not forwarder.forwarded
