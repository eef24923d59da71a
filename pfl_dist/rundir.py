"""Run directories: their identity, the default name, the writer's lock, and what may replace what.

No torch here: the sweep driver uses the same identity without paying torch's import.

Identity. A run's numbers depend on its config minus the keys that provably do not change them
(`IGNORED_KEYS`, `IGNORED_SECTIONS`: where it is written, the device choice, whether data may be
downloaded, whether synthetic data is generated lazily (bit for bit the same data), the
collective timeout and backend, checkpoint cadence, where the per-client rows are kept (`store`:
the back-ends agree to rounding); `comm.codec` counts), on
the contents of the user's files it reads (`model.init_file`; `data.data_dir` of client_files, leaf
and cifar10), and on the number of processes W it runs on (the modelled wire bytes are 2(W-1)/W x
payload per rank, the float summation order differs; FL uplink/downlink bytes do not depend on
W). `Config.identity()` is the config plus the pseudo-section `inputs` of the files' sha256
digests (pfl_dist/inputs.py, present only when the config reads such files) and the pseudo-key
`launch.world_size` (`run_identity`). `config_hash` is the sha256 of the identity without the
ignored keys; the sweep's completeness check uses the same keys. `train.eval_every` counts: it
changes metrics.jsonl and the telemetry byte totals. An edited input file therefore behaves
exactly like a changed key: `run.name=auto` gets a new run dir (the old one is left as it was),
a named run dir is refused with one line ("model.init_file contents changed (sha256 ab12.. ->
cd34..)"), a sweep reruns the point, a checkpoint is not resumed. So does another world size
("world size was 1, now 2"), with one exception: a checkpoint is checked against the identity
without the world size (`resume_identity`), so a run stopped on W processes resumes on W' by
re-sharding its clients (pfl_dist/checkpoint.py) when its run dir is named (`run.name`); with
run.name=auto the other world size names another run dir. Every process computing a run dir
knows the W it runs on, or will launch: `Config.set_world_size` (the launcher's pre-flight:
nproc-per-node x nnodes; the sweep: its launch settings; a worker: its WORLD_SIZE).
Keys added to the config later (`LATER_KEYS`) are left out at the value every earlier run had,
so those runs keep their config part, except for the method whose results changed with the key
(`MethodInfo.results_changed_with`: pFedMe, Ditto, SCAFFOLD in issue 21); a run of it from before
is another config ("pfedme's results changed in pfl_dist since that run (...)"). A codec whose
short string changed results (QSGD's bucketed norms, issue 25) is recorded spelled out
(`qsgd:4:512`, pfl_dist/exchange/spec.py `CodecEntry.spelled_out`), so a run of its short string
from before is another config ("comm.codec=qsgd:4 gives other results in pfl_dist since that run
(now recorded as qsgd:4:512)").

Default name. `run.name=auto` (the default) names the run dir `<method>-<hash8>` from that hash
(a plug-in `module:Class` as `module.Class`, a name safe in any path),
so two runs that differ in any number-changing key never share a directory, and rerunning the
same command finds its own run: complete (nothing is retrained) or resumable from checkpoints.

Protection (`prepare_run_dir`, rank 0 before any training):
- out_dir / run dir must be (creatable) directories that this process can write; otherwise one
  line and exit 2;
- an advisory lock (`fcntl.flock` on `<run_dir>/.lock`) is held for the whole run, so a second
  writer is refused with one line while the first runs (a killed holder releases it at once);
- a completed run (summary.json) of the same config: "already complete", nothing retrained;
  of another config: refused with one line naming the first changed key. `--overwrite` trains
  again in either case.
  An overwrite moves the old results into `<run_dir>/.replaced/` (a rename: no space needed) and
  deletes them only once the new summary.json is on disk; a run that fails with an error puts
  them back, so nothing is lost to a full disk.
- an unfinished run (no summary.json): of the same config it resumes. Without --overwrite a run
  dir is refused when it holds checkpoints of another config, or an --overwrite that did not
  finish (`.replaced/` present: completing any run there would delete the results it holds).
  With --overwrite the unfinished run is replaced: its checkpoints of another config are deleted
  once the new run starts (the resume vote skips them; pfl_dist/checkpoint.py), and results an
  earlier --overwrite set aside stay in `.replaced/` until the new run completes.
Every refusal is decided by `check_run_dir`, which only reads, so a refused command (launcher or
rank 0) touches nothing. A failure after the run dir is locked (pfl_dist.train reads its data
there) undoes only what this command did: it never moves back results an earlier command set
aside unless its own run had started.

Replaced runs stay out of TensorBoard. TensorBoard shows every folder below its logdir that holds a
file whose name contains "tfevents", hidden folders included, so a run dir's `.replaced/` and a
sweep's `replaced/` would show up beside the current runs. Their event files are kept byte for
byte under another name (`events.out.tfevents.*` -> `events.out.replaced.*`, `hide_events`), and
get their name back when an overwrite is rolled back.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pfl_dist import inputs
from pfl_dist.errors import PflError
from pfl_dist.exchange.spec import recorded_codec
from pfl_dist.methods import METHODS
from pfl_dist.outputs import check_result_paths
from pfl_dist.sampling import eval_cohort_size

if TYPE_CHECKING:
    from pfl_dist.config import Config

# Keys that may change between attempts without changing any number of the run.
IGNORED_KEYS = ("run.name", "run.out_dir", "run.device", "data.download", "data.lazy", "comm.backend",
                "comm.timeout_s")
# Keys added to the config after runs were made, with the value that gives the results those runs
# had: at it a key is left out of the identity, so earlier runs keep their hash and run dir; except
# for a method whose results at that value changed with the key (`MethodInfo.results_changed_with`).
LATER_KEYS: dict[str, Any] = {"algorithm.client_weights": "auto", "algorithm.inner_warm_start": False,
                              "model.head": None, "algorithm.params": {}, "data.params": {},
                              "train.eval_clients": "auto", "comm.downlink_codec": "none",
                              "data.val_fraction": 0.0}
EVAL_CLIENTS_KEY = "train.eval_clients"
IGNORED_SECTIONS = ("checkpoint", "store")
LOCK_FILE = ".lock"
REPLACED_DIR = ".replaced"
# What a run writes into its run dir (ckpt/ included: it belongs to the run it resumes).
RESULT_NAMES = ("config.yaml", "inputs.json", "metrics.jsonl", "summary.json", "final", "ckpt", "store",
                "sweep_point.json")
EVENTS_PREFIX = "events.out.tfevents."  # how torch's SummaryWriter names an event file
HIDDEN_EVENTS_PREFIX = "events.out.replaced."  # a replaced run's event file: TensorBoard skips it
RESULT_GLOBS = (f"{EVENTS_PREFIX}*",)


class RunDirError(PflError):
    """The run dir cannot be used: not writable, a file, locked, or holding another config's run."""


# --- identity ----------------------------------------------------------------------------------


def result_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config as dotted keys, without the keys that cannot change a result (and `LATER_KEYS`
    at the value every run before them had)."""
    flat = {f"{section}.{key}": value for section, values in config.items() if section not in IGNORED_SECTIONS
            for key, value in values.items()}
    method = METHODS.get(str(flat.get("algorithm.name")))
    changed_with = method.results_changed_with if method is not None else ""
    return {key: value for key, value in flat.items() if key not in IGNORED_KEYS
            and not (key in LATER_KEYS and _earlier_results(key, value, flat) and key != changed_with)}


def _earlier_results(key: str, value: Any, flat: dict[str, Any]) -> bool:
    """`value` of the later key `key` gives the results every run before the key had.
    train.eval_clients: any value that evaluates every client (all; auto, or N >= m, on m clients)."""
    if key == EVAL_CLIENTS_KEY:
        num_clients = flat.get("data.num_clients")
        return isinstance(num_clients, int) and eval_cohort_size(value, num_clients) is None
    return bool(value == LATER_KEYS[key])


WORLD_SECTION, WORLD_FIELD = "launch", "world_size"
WORLD_SIZE_KEY = f"{WORLD_SECTION}.{WORLD_FIELD}"  # the identity's pseudo-key: processes the run runs on


def run_identity(config: dict[str, Any], digests: inputs.Inputs | dict[str, str],
                 world_size: int | None) -> dict[str, Any]:
    """What a run's results depend on: `config` (`Config.to_dict()`), the `inputs` digests of the
    user files it reads (none: no section) and the world size (None: not known, no key)."""
    identity = inputs.identity(config, digests)
    return identity if world_size is None else {**identity, WORLD_SECTION: {WORLD_FIELD: int(world_size)}}


def resume_identity(identity: dict[str, Any]) -> dict[str, Any]:
    """The dotted identity a checkpoint is checked against: the world size left out, so that a
    checkpoint of W processes resumes on W' (re-sharded by client id)."""
    return {key: value for key, value in result_config(identity).items() if key != WORLD_SIZE_KEY}


def changed_keys(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'algorithm.lam was 0.5, now 0.3' for every differing key of two `result_config`s; then
    'world size was 2, now 4'; then changed input files ('model.init_file contents changed (sha256
    ab.. -> cd..)'). A saved identity without a world size (an unfinished run with no checkpoint:
    `run_config`, nothing of it is resumed) does not differ by it."""
    order = {WORLD_SIZE_KEY: 1}  # config keys, then the world size, then the input files
    keys = sorted(set(saved) | set(current), key=lambda key: (2 if inputs.is_input_key(key) else order.get(key, 0),
                                                              key))
    return [_describe_change(key, saved, current) for key in keys
            if saved.get(key) != current.get(key) and not (key == WORLD_SIZE_KEY and key not in saved)]


CODEC_KEY = "comm.codec"


def _recorded(codec: str) -> str | None:
    try:
        return recorded_codec(codec)
    except ValueError:
        return None


def _describe_change(key: str, saved: dict[str, Any], current: dict[str, Any]) -> str:
    if inputs.is_input_key(key):
        return inputs.describe_change(key, saved.get(key), current.get(key))
    if key == WORLD_SIZE_KEY:
        return f"world size was {saved.get(key)}, now {current.get(key)}"
    before, now = saved.get(key, LATER_KEYS.get(key)), current.get(key, LATER_KEYS.get(key))
    if before == now:  # a later key at the value that run had: the method's results changed with it
        return f"{current.get('algorithm.name')}'s results changed in pfl_dist since that run ({key}, now {now!r})"
    if key == CODEC_KEY and isinstance(before, str) and isinstance(now, str) and _recorded(before) == now:
        # a spelled-out codec's short string from before (exchange/spec.py `CodecEntry.spelled_out`)
        return f"comm.codec={before} gives other results in pfl_dist since that run (now recorded as {now})"
    return f"{key} was {before!r}, now {now!r}"


def config_difference(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first differing key as in `changed_keys`, None when equal."""
    changes = changed_keys(saved, current)
    return changes[0] if changes else None


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the result-relevant config (`Config.to_dict()` or a summary's `config`)."""
    text = json.dumps(result_config(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def auto_run_name(config: dict[str, Any]) -> str:
    """`<method>-<hash8>`: the default run dir name (run.name=auto). A plug-in's name
    `module:Class` is written `module.Class`: ':' is refused in Windows paths and means host:path
    to scp and docker -v. A built-in's name has no ':', so its run dirs keep their names; the hash
    and summary.json keep the name as the config gives it."""
    return f"{config['algorithm']['name'].replace(':', '.')}-{config_hash(config)[:8]}"


def summary_identity(summary: dict[str, Any]) -> dict[str, Any] | None:
    """The identity a summary records: its `config`, plus its `inputs` digests when it has them,
    plus the `world_size` it ran on."""
    config, digests, world_size = summary.get("config"), summary.get(inputs.SECTION), summary.get("world_size")
    if not isinstance(config, dict):
        return None
    return run_identity(config, digests if isinstance(digests, dict) else {},
                        world_size if isinstance(world_size, int) and not isinstance(world_size, bool) else None)


def saved_config(run_dir: Path) -> dict[str, Any] | None:
    """The identity (config, and input digests) of the completed run in `run_dir` (its
    summary.json), None when there is none or it cannot be read (a torn summary does not make a
    run complete)."""
    summary = read_summary(run_dir)
    return None if summary is None else summary_identity(summary)


def holds_completed_run(run_dir: Path, identity: dict[str, Any]) -> bool:
    """`run_dir` holds a completed run (a readable summary.json) of this identity
    (`Config.identity()`: the config and its input digests)."""
    saved = saved_config(run_dir)
    return saved is not None and config_difference(result_config(saved), result_config(identity)) is None


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


# --- errors from the filesystem -------------------------------------------------------------------


def os_error_text(err: OSError) -> str:
    """'No space left on device: runs/x/summary.json' (no errno number, no traceback)."""
    reason = err.strerror or type(err).__name__
    where = err.filename if err.filename is not None else ""
    return f"{reason}: {where}" if where else reason


def check_directory(path: Path, what: str) -> None:
    """`path` is a directory or absent, and not a symlink: one line otherwise."""
    if path.is_symlink():
        raise RunDirError(f"{what} {path} is a symlink; pfl_dist does not follow it (use a real directory)")
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{what} {path} is a file, not a folder")


def make_directory(path: Path, what: str) -> None:
    for parent in [*reversed(path.parents), path]:
        if parent.exists() and not parent.is_dir():
            raise RunDirError(f"{what} {path} cannot be created: {parent} is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(f"cannot create {what} {path}: {os_error_text(err)}") from None


# --- the writer's lock ---------------------------------------------------------------------------


class DirLock:
    """An advisory lock on `<directory>/.lock` (fcntl.flock), held until `release` or exit.

    The file stays empty (a refused writer changes nothing); the holder's pid for the message is
    looked up in /proc/locks. flock locks belong to the open file, so a killed holder's lock is
    released by the kernel at once.
    """

    def __init__(self, directory: Path, what: str) -> None:
        self.path = directory / LOCK_FILE
        self.what = what
        self.fd: int | None = None

    def acquire(self) -> DirLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise RunDirError(f"cannot write to {self.what} {self.path.parent}: {os_error_text(err)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise RunDirError(f"{self.what} {self.path.parent} is in use by another pfl_dist process{holder}; "
                              "wait for it to finish, or write elsewhere") from None
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock; the file stays (unlinking would race)
            self.fd = None


def _lock_holder(fd: int) -> str:
    """' (pid N)' of the process holding the flock on the file `fd` is open on, from /proc/locks."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        info = os.fstat(fd)
        inode = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if "FLOCK" in fields and "->" not in fields and fields[5] == inode:
                return f" (pid {fields[4]})"
    return ""


# --- preparing a run dir -------------------------------------------------------------------------


def _result_paths(run_dir: Path) -> list[Path]:
    paths = [run_dir / name for name in RESULT_NAMES if (run_dir / name).exists() or (run_dir / name).is_symlink()]
    for pattern in RESULT_GLOBS:
        paths += sorted(run_dir.glob(pattern))
    return paths


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@dataclass
class PreparedRunDir:
    """What `prepare_run_dir` found and holds: the lock, and old results set aside by --overwrite."""

    run_dir: Path
    lock: DirLock
    complete: dict[str, Any] | None = None  # the summary of an identical completed run
    replaced: Path | None = None  # old results kept here until the new run completes
    inherited: bool = False  # `replaced` was set aside by an earlier --overwrite that did not finish
    notes: list[str] = field(default_factory=list)

    def commit(self) -> None:
        """The new run's summary.json is on disk: the replaced results can go."""
        if self.replaced is not None and (self.run_dir / "summary.json").is_file():
            shutil.rmtree(self.replaced, ignore_errors=True)
            self.replaced = None

    def rollback(self, *, started: bool = True) -> None:
        """The new run failed: its files go and the replaced results come back (renames only).
        Results an earlier, unfinished --overwrite set aside stay where they are when this run
        failed before it `started` (wrote or deleted anything: a refusal touches nothing)."""
        if self.replaced is None or not self.replaced.is_dir() or (self.inherited and not started):
            return
        with contextlib.suppress(OSError):
            for path in _result_paths(self.run_dir):
                _remove(path)
            for path in self.replaced.iterdir():
                os.replace(path, self.run_dir / shown_events_name(path.name))
            self.replaced.rmdir()
            self.replaced = None

    def release(self) -> None:
        self.lock.release()


def check_run_dir(cfg: Config, *, overwrite: bool = False) -> None:
    """What `prepare_run_dir` would refuse, checked without writing anything: by the launcher
    before torchrun starts, and by rank 0 before the process group forms (so a refusal is one
    line from one process, not a failed collective on every rank)."""
    check_directory(Path(cfg.run.out_dir), "run.out_dir")
    run_dir = cfg.run_dir
    check_result_paths(run_dir)  # symlinks and wrong kinds of file in the run dir (pfl_dist/outputs.py)
    if not run_dir.is_dir():
        return
    if not overwrite:
        _refuse_another_config(cfg, run_dir)
        _refuse_unfinished(cfg, run_dir)
    lock_path = run_dir / LOCK_FILE
    if lock_path.is_file():
        try:
            fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return  # prepare_run_dir reports it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(f"run dir {run_dir} is in use by another pfl_dist process{_lock_holder(fd)}; "
                              "wait for it to finish, or write elsewhere") from None
        finally:
            os.close(fd)


def prepare_run_dir(cfg: Config, *, overwrite: bool = False) -> PreparedRunDir:
    """Check, create and lock `cfg.run_dir` (rank 0, before any training); see the module doc."""
    run_dir = cfg.run_dir
    check_run_dir(cfg, overwrite=overwrite)
    make_directory(run_dir, "run dir")
    lock = DirLock(run_dir, "run dir").acquire()
    try:
        prepared = _classify(cfg, PreparedRunDir(run_dir=run_dir, lock=lock), overwrite=overwrite)
    except BaseException:
        lock.release()
        raise
    return prepared


def _classify(cfg: Config, prepared: PreparedRunDir, *, overwrite: bool) -> PreparedRunDir:
    run_dir = prepared.run_dir
    for name in ("final", "ckpt"):
        check_directory(run_dir / name, f"{name}/ of")
    replaced = run_dir / REPLACED_DIR
    saved = saved_config(run_dir)
    if replaced.is_dir():
        if saved is not None:  # the new run completed but died before removing the old results
            shutil.rmtree(replaced, ignore_errors=True)
        else:  # only with --overwrite (check_run_dir refuses it otherwise)
            prepared.replaced, prepared.inherited = replaced, True
            prepared.notes.append(f"an earlier --overwrite of {run_dir} did not finish; the results it replaces "
                                  f"stay in {replaced} until this run completes")
    if saved is None:
        if (run_dir / "summary.json").exists():
            prepared.notes.append(f"{run_dir}/summary.json is unreadable; the run counts as incomplete")
        conflict = checkpoint_conflict(run_dir / "ckpt", resume_identity(cfg.identity())) if overwrite else None
        if conflict is not None:
            prepared.notes.append(f"--overwrite: the checkpoints of the unfinished run it replaces ({conflict}) "
                                  "are deleted once this run starts")
        return prepared
    if overwrite:
        _set_aside(prepared)
        return prepared
    _refuse_another_config(cfg, run_dir)
    prepared.complete = read_summary(run_dir)
    return prepared


def saved_input_files(run_dir: Path) -> dict[str, Any]:
    """The run dir's inputs.json (key -> path, sha256, files), {} when absent or unreadable."""
    try:
        saved = json.loads((run_dir / inputs.RECORD_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def _refuse_another_config(cfg: Config, run_dir: Path) -> None:
    saved = saved_config(run_dir)
    difference = None if saved is None else config_difference(result_config(saved), result_config(cfg.identity()))
    if difference is not None:
        changed = [key for key in cfg.inputs if key != "model.init_file"
                   and difference.startswith(f"{key} contents changed")]
        if changed:  # name the data file, from the run's inputs.json
            files = saved_input_files(run_dir).get(changed[0])
            where = inputs.changed_files(files, cfg.inputs[changed[0]]) if isinstance(files, dict) else ""
            difference = difference.replace(" contents changed", f" contents changed{where}", 1)
        raise RunDirError(f"{run_dir} holds a completed run of another config ({difference}); keep it with "
                          "run.name=<another name> (or the default run.name=auto), or replace it with --overwrite")


def _refuse_unfinished(cfg: Config, run_dir: Path) -> None:
    """Without --overwrite, a run dir without summary.json is refused (read-only, so the refusal
    touches nothing) when it holds an --overwrite that did not finish (the results it replaces are
    in .replaced/: finishing any run here would delete them), or checkpoints of another config."""
    if saved_config(run_dir) is not None:
        return
    replaced = run_dir / REPLACED_DIR
    if replaced.is_dir():
        unfinished = run_config(run_dir)
        # what it would resume: its checkpoints, of any world size (re-sharded)
        difference = None if unfinished is None else config_difference(resume_identity(unfinished),
                                                                       resume_identity(cfg.identity()))
        what, then = "an unfinished run", "add --overwrite to replace both with this config's run"
        if unfinished is not None:
            what = f"an unfinished run of another config ({difference})" if difference else \
                "an unfinished run of this config"
            then = then if difference else "add --overwrite to finish it (it resumes from its checkpoints)"
        raise RunDirError(f"run dir {run_dir} holds an --overwrite that did not finish: {what}, and in {replaced} "
                          f"the results it replaces; {then}, or use another run.name")
    conflict = checkpoint_conflict(run_dir / "ckpt", resume_identity(cfg.identity()))
    if conflict is not None:
        raise RunDirError(f"cannot resume: {conflict}; use another run.name, delete {run_dir / 'ckpt'}, or replace "
                          "that unfinished run with --overwrite")


def checkpoint_conflict(ckpt: Path, config: dict[str, Any]) -> str | None:
    """'<round folder> was written with another config (<first changed key>)' for the first
    checkpoint marker in `ckpt` whose config is not `config` (`resume_identity` form: any world
    size resumes); None when every readable marker matches. The resume vote (pfl_dist/checkpoint.py) checks the same."""
    for marker in sorted(ckpt.glob("round_*/shard_*.json")):
        try:
            saved = json.loads(marker.read_text())["config"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a damaged marker: the vote skips its round
        difference = config_difference(saved, config) if isinstance(saved, dict) else None
        if difference is not None:
            return f"{marker.parent} was written with another config ({difference})"
    return None


def _set_aside(prepared: PreparedRunDir) -> None:
    """--overwrite: move the completed run's files into .replaced/ (renames: no space needed)."""
    replaced = prepared.run_dir / REPLACED_DIR
    try:
        if replaced.is_dir():
            shutil.rmtree(replaced)
        replaced.mkdir()
        for path in _result_paths(prepared.run_dir):
            os.replace(path, replaced / hidden_events_name(path.name))
    except OSError as err:
        raise RunDirError(f"cannot set the old results of {prepared.run_dir} aside: {os_error_text(err)}") from None
    prepared.replaced = replaced
    prepared.notes.append(f"--overwrite: the previous results of {prepared.run_dir} are kept in {replaced} until "
                          "this run completes")


def print_notes(prepared: PreparedRunDir) -> None:
    for note in prepared.notes:
        print(f"pfl_dist: note: {note}", flush=True)


def is_disk_error(err: OSError) -> bool:
    """Errors of the filesystem a run writes to (not bugs): full, read-only, permissions, I/O."""
    return err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                         errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOENT, errno.EFBIG, errno.ELOOP)


def run_config(run_dir: Path) -> dict[str, Any] | None:
    """The config a run dir was written with: its summary's, else the config.yaml of a run that
    started and did not finish; None when it holds neither (or they cannot be read)."""
    saved = saved_config(run_dir)
    if saved is not None:
        return saved
    import yaml

    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    if not isinstance(config, dict) or not all(isinstance(v, dict) for v in config.values()):
        return None
    # The input digests of that run, from the inputs.json it wrote when it started; its world
    # size from the checkpoints it left (none: nothing of it can be resumed, and none is recorded).
    recorded = {key: value["sha256"] for key, value in saved_input_files(run_dir).items()
                if isinstance(value, dict) and isinstance(value.get("sha256"), str)}
    return run_identity(config, recorded, checkpoint_world_size(run_dir))


_SHARD_NAME = re.compile(r"shard_\d{5}_of_\d{5}\.json")


def checkpoint_world_size(run_dir: Path) -> int | None:
    """The world size of the newest checkpoint in `run_dir/ckpt`: of the newest round with a
    completion marker, from the name of its newest marker (`shard_00001_of_00004.json`); None
    when there is none."""
    for folder in sorted(run_dir.glob("ckpt/round_*"), reverse=True):
        markers = [path for path in folder.glob("shard_*.json") if _SHARD_NAME.fullmatch(path.name)]
        with contextlib.suppress(OSError):
            newest = max(markers, key=lambda path: path.stat().st_mtime_ns, default=None)
            if newest is not None:
                return int(newest.name[-10:-5])
    return None


def set_run_dir_aside(run_dir: Path, into: Path, *, label: str) -> Path:
    """Move a whole run dir to `into/<name>.<label>` (a rename; `.2`, `.3`, ... if taken), where
    TensorBoard does not show it (`hide_events` on all of `into`: runs set aside before too)."""
    into.mkdir(parents=True, exist_ok=True)
    target = into / f"{run_dir.name}.{label}"
    suffix = 1
    while target.exists():
        suffix += 1
        target = into / f"{run_dir.name}.{label}.{suffix}"
    os.replace(run_dir, target)
    hide_events(into)
    return target


def hidden_events_name(name: str) -> str:
    """The name an event file keeps among replaced results (other names are unchanged)."""
    return HIDDEN_EVENTS_PREFIX + name.removeprefix(EVENTS_PREFIX) if name.startswith(EVENTS_PREFIX) else name


def shown_events_name(name: str) -> str:
    """The inverse of `hidden_events_name`."""
    return EVENTS_PREFIX + name.removeprefix(HIDDEN_EVENTS_PREFIX) if name.startswith(HIDDEN_EVENTS_PREFIX) else name


def hide_events(directory: Path) -> None:
    """Rename every TensorBoard event file below `directory` (renames: the bytes stay)."""
    for path in sorted(directory.rglob(f"{EVENTS_PREFIX}*")):
        if path.is_file() and not path.is_symlink():
            os.replace(path, path.with_name(hidden_events_name(path.name)))
