"""A private two-node Slurm cluster on this machine, for tests/integration/test_slurm.py.

Debian's slurm-wlm and munge, started as root: one munged with a key of its own, one slurmctld and
two slurmd (`slurmd -N pfl1`, `-N pfl2`), nodes `pfl1` and `pfl2` both at 127.0.0.1 with a port
each, so launch/slurm.sbatch runs its multi-node path (one torchrun agent per node) on one
machine. Everything lives in one directory of its own (`/tmp/pfl-slurm-<pid>-*`: config, key,
socket, state, spool, logs) and the daemons listen on free ports.

`ProctrackType=proctrack/linuxproc`: slurmstepd signals a step's whole process tree, processes in
sessions of their own included, as proctrack/cgroup (the usual choice on real clusters) does with
the step's cgroup, without touching this machine's cgroups.

Clean-up (`SlurmCluster.stop`, also when a test fails): cancel every job and wait for the queue
to empty, stop the daemons by their PIDs (SIGTERM, then SIGKILL), SIGKILL every process that still
runs with this cluster's SLURM_CONF in its environment (slurmstepd, job processes: every one of
them inherits it from the daemons or from sbatch), and remove the directory. A directory left by
a test process that was killed before its clean-up is cleaned the same way at the next start,
only when that pid no longer runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.faults import alive
from tests.helpers import free_port

NODES = ("pfl1", "pfl2")
TOOLS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scancel", "scontrol", "squeue", "sinfo", "srun")
PREFIX = "pfl-slurm-"
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
                "BOOT_FAIL", "DEADLINE"}
START_TIMEOUT_S = 90.0
_SLURM_VARIABLES = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")

_CONF = """\
ClusterName=pfltest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_ports[0]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge/socket
CredType=cred/munge
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=3600
{nodes}
PartitionName=pfl Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def unavailable() -> str:
    """Why Slurm cannot start here, or "" when it can be tried."""
    if os.geteuid() != 0:
        return "needs root (munged, slurmctld and slurmd run as root)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not on PATH (apt-get install slurm-wlm munge)"
    return ""


def processes_with_conf(conf: Path) -> list[int]:
    """PIDs of the processes whose environment holds SLURM_CONF=`conf`: this cluster's daemons,
    slurmstepd and every process of its jobs."""
    needle = f"SLURM_CONF={conf}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _kill_all(conf: Path, *, timeout: float = 30.0) -> list[int]:
    """SIGKILL every process with this cluster's SLURM_CONF until none is left; -> those killed."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while (pids := processes_with_conf(conf)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        time.sleep(0.2)
    return sorted(killed)


def remove_stale_clusters() -> list[Path]:
    """Clean up what a killed test process left: only `pfl-slurm-<pid>-*` dirs whose pid is gone."""
    removed = []
    for root in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        match = re.match(rf"{PREFIX}(\d+)-", root.name)
        if not root.is_dir() or match is None or alive(int(match.group(1))):
            continue
        _kill_all(root / "slurm.conf")
        munged = root / "munge" / "pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(munged.read_text())
            if str(root).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
        removed.append(root)
    return removed


@dataclass
class SlurmCluster:
    root: Path
    ports: dict[str, int] = field(default_factory=dict)
    daemons: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """The environment for the Slurm commands (and so for every job: sbatch passes it on);
        without the variables of a Slurm job that the tests may themselves run in."""
        own = {key: value for key, value in os.environ.items() if not key.startswith(_SLURM_VARIABLES)}
        return {**own, "SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, timeout: float = 60, check: bool = True, cwd: Path | None = None,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              env={**self.env, **(env or {})}, cwd=cwd)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n"
                                 f"{done.stderr[-2000:]}\n{self.log_tails()}")
        return done

    # --- daemons ------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: Sequence[str]) -> None:
        with (self.root / "log" / f"{name}.out").open("wb") as out:
            self.daemons[name] = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT,
                                                  stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)

    def start(self) -> str:
        """Key, config, daemons; -> "" once both nodes are idle, else why not (the caller stops)."""
        for sub in ("munge", "state", "spool", "run", "log"):
            (self.root / sub).mkdir()
        (self.root / "munge").chmod(0o755)  # munged: everyone must reach the socket's directory
        self.ports = {"slurmctld": free_port(), **{node: free_port() for node in NODES}}
        nodes = "\n".join(f"NodeName={node} NodeHostname=localhost NodeAddr=127.0.0.1 Port={self.ports[node]} "
                          "CPUs=2 State=UNKNOWN" for node in NODES)
        self.conf.write_text(_CONF.format(root=self.root, ctld_port=self.ports["slurmctld"],
                                          slurmd_ports=[self.ports[n] for n in NODES], nodes=nodes))
        key = self.root / "munge" / "munge.key"
        self.run("mungekey", "--create", f"--keyfile={key}", timeout=30)
        munge = self.root / "munge"
        self._spawn("munged", ["munged", "--foreground", f"--socket={munge}/socket", f"--key-file={key}",
                               f"--pid-file={munge}/pid", f"--seed-file={munge}/seed",
                               f"--log-file={self.root}/log/munged.log"])
        if not self._wait(lambda: (munge / "socket").exists()):
            return f"munged did not start:\n{self.log_tails()}"
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        for node in NODES:
            self._spawn(f"slurmd-{node}", ["slurmd", "-D", "-N", node, "-f", str(self.conf)])
        if not self._wait(self._nodes_idle):
            return f"the nodes did not become idle within {START_TIMEOUT_S:.0f} s:\n{self.log_tails()}"
        return ""

    def _wait(self, condition: Callable[[], bool]) -> bool:
        """Poll `condition` until it holds; False when a daemon exits or START_TIMEOUT_S passes."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.daemons.values()):
                return False
            if condition():
                return True
            time.sleep(0.3)
        return False

    def _nodes_idle(self) -> bool:
        done = self.run("sinfo", "--noheader", "--Node", "--format=%N %T", timeout=30, check=False)
        states = dict(line.split() for line in done.stdout.splitlines() if line.strip())
        return done.returncode == 0 and all(states.get(node) == "idle" for node in NODES)

    def log_tails(self, num_chars: int = 1500) -> str:
        logs = sorted((self.root / "log").glob("*")) if (self.root / "log").is_dir() else []
        return "\n".join(f"----- {log.name}\n{log.read_text(errors='replace')[-num_chars:]}" for log in logs)

    def stop(self) -> list[int]:
        """Cancel every job, stop the daemons, kill what is left, remove the directory.
        -> PIDs that had to be SIGKILLed after the daemons were stopped (slurmstepd or job
        processes that outlived a cancelled job): none after a clean run."""
        if "slurmctld" in self.daemons and self.daemons["slurmctld"].poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired, AssertionError):
                self.run("scancel", "--quiet", "--partition=pfl", timeout=30, check=False)
                deadline = time.monotonic() + 120  # KillWait (30 s) and then some
                while time.monotonic() < deadline and self.run("squeue", "--noheader", timeout=30).stdout.strip():
                    time.sleep(0.5)
        for name in sorted(self.daemons, key=lambda n: n == "munged"):  # munged last: the others use it
            process = self.daemons[name]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=30)
        leftovers = _kill_all(self.conf)
        shutil.rmtree(self.root, ignore_errors=True)
        return leftovers

    # --- jobs ---------------------------------------------------------------------------------

    def sbatch(self, *args: str, cwd: Path, env: Mapping[str, str] | None = None) -> int:
        return int(self.run("sbatch", "--parsable", *args, cwd=cwd, env=env).stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job -o`: JobState, ExitCode, ... (kept for MinJobAge after the end)."""
        line = self.run("scontrol", "show", "job", "--oneliner", str(job_id)).stdout
        return dict(item.split("=", 1) for item in line.split() if "=" in item)

    def in_queue(self, job_id: int) -> bool:
        return bool(self.run("squeue", "--noheader", f"--jobs={job_id}", check=False).stdout.strip())

    def wait_job(self, job_id: int, *, timeout: float) -> dict[str, str]:
        """Block until the job has ended (its processes gone); -> its record."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.job(job_id)
            # squeue lists a job until its processes are gone (COMPLETING after a scancel)
            if record["JobState"] in FINAL_STATES and not self.in_queue(job_id):
                return record
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} still {self.job(job_id)['JobState']} after {timeout:.0f} s\n"
                             f"{self.log_tails()}")


def new_cluster() -> SlurmCluster:
    root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))
    root.chmod(0o755)  # munged checks every directory above its socket
    return SlurmCluster(root)
