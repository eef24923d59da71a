"""pfl_dist's launcher: validate a config, then start it under torchrun.

    python -m pfl_dist.launch [torchrun options] [--config X.yaml] [section.key=value ...]

Checking first means bad input costs one clear line and exit code 2 instead of W worker
failures and torchrun's error report. The launcher also sets TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1,
without which an elastic restart of a gloo group fails to reconnect (docs/RELIABILITY.md).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from pfl_dist.config import SECTIONS, Config, did_you_mean, load_config
from pfl_dist.endpoints import check_ports, option_value, replace_standalone
from pfl_dist.errors import ConfigError, PflError
from pfl_dist.guard import guard_output
from pfl_dist.interpreter import interpreter_problem
from pfl_dist.rundir import check_run_dir, holds_completed_run
from pfl_dist.signals import EVERY_PROCESS_ENV, StopSignals, every_process_signalled
from pfl_dist.tasks import preflight as task_preflight
from pfl_dist.torchrun_output import TorchrunOutput

_RDZV_OPTIONS = ("--standalone", "--rdzv-endpoint", "--rdzv_endpoint", "--master-addr", "--master_addr")
# torch 2.13: an elastic restart of a gloo group cannot reconnect without it (docs/RELIABILITY.md).
TORCHRUN_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
# torchrun options that take no value (tests/unit/test_launch.py checks this against torchrun's
# own parser); every other `--option` takes one, as `--option=V` or `--option V`.
TORCHRUN_FLAGS = frozenset({"--standalone", "--no-python", "--no_python", "--run-path", "--run_path", "-m",
                            "--module", "--virtual-local-rank", "--virtual_local_rank"})
# torchrun options that take a value (the same test checks them). Any other `-option` is refused
# here in one line: torchrun would print its usage (about 30 lines) after the config was checked.
_DASHED_VALUE_OPTIONS = (
    "--nproc-per-node", "--rdzv-backend", "--rdzv-endpoint", "--rdzv-id", "--rdzv-conf", "--max-restarts",
    "--monitor-interval", "--start-method", "--event-log-handler", "--log-dir", "--local-ranks-filter",
    "--duplicate-stdout-filters", "--duplicate-stderr-filters", "--node-rank", "--master-addr", "--master-port",
    "--local-addr", "--logs-specs", "--numa-binding", "--signals-to-handle", "--shutdown-timeout")
TORCHRUN_VALUE_OPTIONS = frozenset({"--nnodes", "--role", "-r", "--redirects", "-t", "--tee", *_DASHED_VALUE_OPTIONS,
                                    *("--" + option[2:].replace("-", "_") for option in _DASHED_VALUE_OPTIONS)})
# The training program is always pfl_dist.train: options that would choose another one are refused.
_PROGRAM_OPTIONS = frozenset({"--no-python", "--no_python", "--run-path", "--run_path", "-m", "--module"})
_OVERRIDE = re.compile(r"^[A-Za-z_][\w-]*\.[^=]*=")

USAGE = """usage: python -m pfl_dist.launch [torchrun options] [--config FILE] [section.key=value ...]
       (or pfl-launch ...)

Validates the config (every key, the data files, the world size) and only then starts
`torchrun ... -m pfl_dist.train` with the same config. Bad input is one line and exit 2.

pfl_dist options:
  --config FILE          YAML experiment config (configs/*.yaml); defaults are used without one
  section.key=value      config overrides, e.g. algorithm.lam=0.1 run.name=lam01 (sections: {sections})
  --overwrite            replace a completed run of another config in the same run dir (its old
                         results are kept until the new run completes)
  -h, --help             this message

torchrun options, passed through (the common ones; `--help-torchrun` lists them all):
  --nproc-per-node=N     processes on this node (each hosts data.num_clients/W clients)
  --nnodes=N|MIN:MAX     number of nodes
  --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT [--rdzv-conf=is_host=true,join_timeout=S]
                         multi-node rendezvous; without one, the launcher hosts a c10d rendezvous
                         on 127.0.0.1 (instead of --standalone, whose store listens on every interface)
  --node-rank=R --master-addr=HOST --master-port=PORT
                         static rendezvous
  --max-restarts=N       elastic restarts after a worker dies (the run resumes from its checkpoint)

Environment:
  {every_process}=1
                         the scheduler signals every process of the job (a Slurm step;
                         launch/slurm.sbatch sets it): the launcher then passes no SIGTERM/SIGINT
                         on, and workers take a repeated signal for the same stop

Exit codes: 0 done (also when SIGTERM/SIGINT came after the run had completed), 2 bad input,
3 divergence, 75 stopped by SIGTERM/SIGINT (rerun to resume).
"""


def torchrun_command(torchrun_args: Sequence[str]) -> list[str]:
    """`python -m torch.distributed.run ARGS`, with --standalone (a free port per job, so parallel
    jobs never collide) unless ARGS name a rendezvous."""
    args = list(torchrun_args)
    if not any(a.split("=")[0] in _RDZV_OPTIONS for a in args):
        args.insert(0, "--standalone")
    return [sys.executable, "-m", "torch.distributed.run", *args]


def is_override(arg: str) -> bool:
    """`section.key=value`: anything shaped like a dotted assignment is meant for the config, so a
    misspelled section is reported as such instead of reaching torchrun as a script name."""
    return bool(_OVERRIDE.match(arg))


def _check_override(arg: str) -> None:
    section = arg.split(".", 1)[0]
    if section not in SECTIONS:
        raise ConfigError(f"unknown config section '{section}' in '{arg}'{did_you_mean(section, list(SECTIONS))}")


def _option_name(arg: str) -> tuple[str, bool]:
    """-> (the option's name, whether its value is in the same word: --opt=V, or -rV for a short one)."""
    if "=" in arg:
        return arg.split("=", 1)[0], True
    if not arg.startswith("--") and len(arg) > 2:
        return arg[:2], True
    return arg, False


def split_args(argv: Sequence[str]) -> tuple[list[str], str | None, list[str]]:
    """-> (torchrun options, config path, overrides incl. --overwrite). Raises ConfigError for
    anything that is neither: a stray word would otherwise become torchrun's training script."""
    torchrun_args: list[str] = []
    config: str | None = None
    overrides: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--overwrite":
            overrides.append(arg)
        elif arg == "--config" or arg.startswith("--config="):
            config = arg.split("=", 1)[1] if "=" in arg else (args.pop(0) if args else None)
            if config is None:
                raise ConfigError("--config needs a file path")
        elif is_override(arg):
            _check_override(arg)
            overrides.append(arg)
        elif arg.startswith("-"):
            name, attached = _option_name(arg)
            if name in _PROGRAM_OPTIONS:
                raise ConfigError(f"{name} is not supported: pfl_dist.launch always runs pfl_dist.train")
            if name not in TORCHRUN_FLAGS and name not in TORCHRUN_VALUE_OPTIONS:
                raise ConfigError(f"unknown option '{name}': neither a pfl_dist.launch nor a torchrun option "
                                  "(see --help and --help-torchrun)")
            torchrun_args.append(arg)
            if not attached and name not in TORCHRUN_FLAGS and args and not args[0].startswith("-"):
                torchrun_args.append(args.pop(0))  # the option's value
        else:
            raise ConfigError(f"unexpected argument '{arg}': expected torchrun options, --config FILE or "
                              "section.key=value overrides (see --help)")
    return torchrun_args, config, overrides


def planned_world_size(torchrun_args: Sequence[str]) -> int:
    """nproc-per-node x nnodes; for an elastic range MIN:MAX the largest (the rendezvous decides
    the real one: name the run, run.name, for a restart on fewer nodes to resume it)."""
    nproc = option_value(torchrun_args, "--nproc-per-node", "--nproc_per_node") or "1"
    nnodes = option_value(torchrun_args, "--nnodes") or "1"
    if not nproc.isdigit():
        raise ConfigError(f"--nproc-per-node must be a number here, got '{nproc}'")
    max_nodes = nnodes.split(":")[-1]
    if not max_nodes.isdigit():
        raise ConfigError(f"--nnodes must be N or MIN:MAX, got '{nnodes}'")
    return int(nproc) * int(max_nodes)


def ranks_per_node(torchrun_args: Sequence[str]) -> int:
    nproc = option_value(torchrun_args, "--nproc-per-node", "--nproc_per_node") or "1"
    return int(nproc) if nproc.isdigit() else 1


def check_device(cfg: Config) -> None:
    """CUDA settings on a machine without CUDA fail here, not in every rank (torch is imported only
    when the config asks for CUDA)."""
    wants_cuda = cfg.comm.backend == "nccl" or cfg.run.device == "cuda"
    if not wants_cuda:
        return
    import torch

    if not torch.cuda.is_available():
        key = "comm.backend=nccl" if cfg.comm.backend == "nccl" else "run.device=cuda"
        raise ConfigError(f"{key} needs CUDA, which this machine does not have: use comm.backend=gloo "
                          "and run.device=cpu (or auto)")


def preflight(cfg: Config, *, world_size: int, ranks_here: int = 1) -> None:
    """Everything that can be checked before any process starts (`ranks_here`: the ranks this
    machine will run, whose memory must fit here). `world_size`, the processes the job will have,
    becomes part of the config's identity: the run dir of run.name=auto, the completeness check."""
    from pfl_dist.outputs import check_result_paths
    from pfl_dist.resources import check_memory

    cfg.set_world_size(world_size)
    check_device(cfg)
    check_result_paths(cfg.run_dir)
    check_memory(cfg, world_size=world_size, ranks_here=ranks_here)
    # May load the data once (~1 s for images), so corrupt files and impossible partitions fail here.
    task_preflight(cfg)


def print_help(*, torchrun: bool) -> None:
    print(USAGE.format(sections=", ".join(SECTIONS), every_process=EVERY_PROCESS_ENV), end="")
    if torchrun:
        from torch.distributed.run import get_args_parser

        print("\nAll torchrun options:\n")
        print(get_args_parser().format_help().split("\n", 1)[1])


def main(argv: Sequence[str] | None = None, *, hold_signals: bool = False) -> int:
    """-> the exit code. `hold_signals` (cli(), whose process ends right after): SIGTERM/SIGINT
    keep the launcher's handler after torchrun has ended instead of getting their default action
    back (`run_torchrun`)."""
    guard_output()
    args = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help", "--help-torchrun"} & set(args):
        print_help(torchrun="--help-torchrun" in args)
        return 0
    problem = interpreter_problem("pfl_dist.launch")
    if problem:  # torchrun and every worker run under this interpreter
        print(problem, file=sys.stderr)
        return 2
    try:
        torchrun_args, config, overrides = split_args(args)
        every_process_signalled()  # a bad value is one line here, not one per worker
        cfg = load_config(config, [o for o in overrides if o != "--overwrite"])
        preflight(cfg, world_size=planned_world_size(torchrun_args), ranks_here=ranks_per_node(torchrun_args))
        check_run_dir(cfg, overwrite="--overwrite" in overrides)
        check_ports(torchrun_args)
        # --standalone -> a c10d rendezvous this process hosts on 127.0.0.1 (pfl_dist/endpoints.py)
        launch_args, rendezvous = replace_standalone(torchrun_command(torchrun_args)[3:])
    except PflError as err:
        print(f"pfl_dist: error: {err}", file=sys.stderr)
        return err.exit_code
    command = [sys.executable, "-m", "torch.distributed.run", *launch_args, "-m", "pfl_dist.train"]
    command += (["--config", config] if config else []) + overrides  # overrides carry --overwrite
    completion = RunCompletion.before_launch(cfg, overwrite="--overwrite" in overrides)
    try:
        return run_torchrun(command, env={**os.environ, **TORCHRUN_ENV}, completion=completion,
                            hold_signals=hold_signals)
    finally:
        if rendezvous is not None:
            rendezvous.close()


# torchrun failures that end in its own multi-page report; the launcher adds one line that says
# what happened and what to do.
_TORCHRUN_FAILURES = {
    "RendezvousTimeoutError": "rendezvous timed out: not every node joined within the join timeout "
    "(--rdzv-conf=join_timeout=S); check that every node runs the same command and reaches the endpoint",
    "RendezvousConnectionError": "cannot reach the rendezvous endpoint (--rdzv-endpoint); is node 0 up?",
}


# The rank-0 worker's last line when a job stopped on request (pfl_dist.train), and the exit code
# of a stopped worker: pfl_dist.checkpoint.STOPPED_EXIT_CODE, not imported because that imports torch
# (20 s on a loaded machine, between the job's end and the launcher's).
_STOPPED_EXIT_CODE = 75
_STOP_MESSAGE = "pfl_dist: stopped by "
# torchrun's agent re-raises the forwarded signal as this exception once its workers are down.
_AGENT_SIGNALLED = "SignalException"


class _StopForwarder(StopSignals):
    """Forwards SIGTERM/SIGINT to torchrun's process group and remembers the first one.

    torchrun runs in its own session, so a Ctrl-C in a terminal (which signals the foreground
    process group) or `docker stop` (which signals the container's init, which signals us) reaches
    the agent exactly once, from here. The agent then sends SIGTERM to its workers (each in a
    session of its own), which stop at a round boundary with a checkpoint and exit 75.

    - A signal that comes while torchrun is being started is forwarded once it runs (`attach`).
    - The agent gets one stop: the first signal, or the launcher's own SIGTERM when rank 0 reports
      a stop that came from another node (`stop_agent`). A signal after the launcher's own
      SIGTERM is not passed on: the agent would take it as a second one and interrupt its workers,
      which may still be writing their checkpoint. Any further signal is passed on and does that.
    - Once torchrun has ended (`end`) the launcher's exit code is decided, and a signal changes
      nothing: it is ignored, not given its default action, which would kill the launcher by it.
      (docker-compose stops the workers' containers first; the master's SIGTERM then often
      reaches a launcher that is about to exit 75.)
    - `every_process` (PFL_SIGNAL_EVERY_PROCESS=1, a Slurm step): the agent got the signal itself,
      from the scheduler, so it is only remembered. A second one would reach the agent while it
      waits for its workers, end it early, and take the workers with it (they die with their agent)."""

    def __init__(self, *, every_process: bool = False) -> None:
        super().__init__()
        self.every_process = every_process
        self.process: subprocess.Popen[str] | None = None
        self.pending: int | None = None  # a signal that came before torchrun was started
        self.received = 0  # signals caught while torchrun ran or was being started
        self.forwarded = False  # a caught signal reached the agent (from here, or from the scheduler)
        self.own_stop = False  # stop_agent sent SIGTERM
        self.ended = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.ended:
            return
        self.signal_name = self.signal_name or signal.Signals(signum).name
        self.received += 1
        if self.every_process:
            self.forwarded = True  # the scheduler signalled the agent itself
        elif self.process is None:
            self.pending = signum
        elif not (self.own_stop and self.received == 1):
            self._forward(signum)

    def attach(self, process: subprocess.Popen[str]) -> None:
        with self.held():
            self.process = process
            if self.pending is not None:
                self._forward(self.pending)

    def stop_agent(self) -> None:
        """Rank 0 stopped without a signal here: end the agent, unless a signal already went to it."""
        with self.held():
            if not (self.received or self.own_stop or self.ended):
                self.own_stop = True
                self._forward(signal.SIGTERM, own=True)

    def _forward(self, signum: int, *, own: bool = False) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)
                self.forwarded = self.forwarded or not own

    def end(self) -> None:
        with self.held():
            self.ended = True


def _summary_stamp(run_dir: Path) -> tuple[int, int, int] | None:
    try:
        info = (run_dir / "summary.json").stat()
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size


@dataclass(frozen=True)
class RunCompletion:
    """Whether this node's run dir holds the completed run of the launched config, after torchrun
    ended (torch-free: pfl_dist/rundir.py's identity). `found`: the summary.json that was there
    before an --overwrite launch, which asked to train again, so it does not count."""

    run_dir: Path
    identity: dict[str, Any] = field(repr=False)  # Config.identity(): the config and its input digests
    found: tuple[int, int, int] | None = None

    @classmethod
    def before_launch(cls, cfg: Config, *, overwrite: bool) -> RunCompletion:
        return cls(cfg.run_dir, cfg.identity(), _summary_stamp(cfg.run_dir) if overwrite else None)

    def complete(self) -> bool:
        return (holds_completed_run(self.run_dir, self.identity)
                and (self.found is None or _summary_stamp(self.run_dir) != self.found))


def run_torchrun(command: list[str], *, env: dict[str, str], completion: RunCompletion | None = None,
                 hold_signals: bool = False) -> int:
    """Run torchrun, passing its stderr through, and end a known failure with one clear line.

    Stops: a SIGTERM/SIGINT to the launcher goes to torchrun's process group (`_StopForwarder`),
    unless `env` says the scheduler signals every process of the job (PFL_SIGNAL_EVERY_PROCESS=1).
    When this node's rank 0 reports a stop (it may have come from another node's signal, carried
    in the round's all-reduce), the launcher ends its own agent too, so that the agent does not
    restart the stopped workers (--max-restarts) into a rendezvous that nobody else joins. Either
    way the launcher exits 75, like the workers: rerun the same command to resume.

    A late stop: the signal came after the workers had finished the run, while the agent was
    still shutting down, which then ends non-zero with its SignalException all the same. When
    `completion` finds the run complete in this node's run dir (summary.json of this config), the
    launcher says so in one line and exits 0. A node that does not see rank 0's run dir (the other
    nodes of a multi-node job, without a shared out_dir) cannot tell and still exits 75; a rerun
    there finds the run complete and trains nothing.

    Signals after torchrun has ended are ignored: the exit code is decided then. With
    `hold_signals` (the launcher's own process, which exits next: cli()) the handler stays
    installed until the process ends; otherwise the previous handlers come back on return."""
    seen: set[str] = set()
    worker_stopped = False
    agent_signalled = False
    forwarder = _StopForwarder(every_process=every_process_signalled(env))
    forwarder.install()
    try:
        process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, bufsize=1,
                                   start_new_session=True)
        forwarder.attach(process)
        assert process.stderr is not None
        output = TorchrunOutput(sys.stderr.write)
        for line in process.stderr:
            output.feed(line)
            seen.update(marker for marker in _TORCHRUN_FAILURES if marker in line)
            agent_signalled = agent_signalled or _AGENT_SIGNALLED in line
            if line.startswith(_STOP_MESSAGE) and not worker_stopped:
                worker_stopped = True
                forwarder.stop_agent()
        code = process.wait()
    finally:
        forwarder.end()
        if not hold_signals:
            forwarder.uninstall()
    # The agent ends non-zero (1, its SignalException) when it stops its workers on a signal; a
    # signal forwarded while it was starting may kill it before it handles signals (code < 0).
    signalled = forwarder.forwarded and (agent_signalled or code < 0)
    if code != 0 and (worker_stopped or signalled):
        if not worker_stopped and completion is not None and completion.complete():
            print(f"pfl_dist: the run had completed before {forwarder.signal_name} arrived (torchrun was shutting "
                  f"down); its results are in {completion.run_dir}, nothing to resume", file=sys.stderr, flush=True)
            return 0
        if not worker_stopped:
            how = ("sent to every process of the job, torchrun's workers too, which checkpoint"
                   if forwarder.every_process else "forwarded to torchrun, whose workers checkpoint")
            print(f"pfl_dist: stopped by {forwarder.signal_name} ({how} the last completed round); rerun the "
                  "same command to resume", file=sys.stderr, flush=True)
        return _STOPPED_EXIT_CODE
    code = output.finish(code)  # a worker's own error line and exit code instead of torchrun's report
    for marker in seen if code else ():
        print(f"pfl_dist: error: {_TORCHRUN_FAILURES[marker]}", file=sys.stderr)
    return code


def cli() -> NoReturn:
    """The launcher as a command. It ends without the interpreter's teardown, which would give
    SIGTERM/SIGINT their default action back while the process still runs (a signal then would
    kill it instead of leaving the decided exit code): everything it writes is flushed first, and
    torchrun, its rendezvous and its output pipe are closed by then."""
    code = main(hold_signals=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    cli()
