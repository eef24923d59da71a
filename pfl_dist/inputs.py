"""Content fingerprints of the user files a run reads: part of the run's identity (pfl_dist/rundir.py).

A run's numbers depend on its config and on the contents of the files it reads. The config names
a user's own files only by path, so without this a rerun after editing them would find its old
run "already complete" (or resume a checkpoint of the old data). `fingerprint` hashes exactly the
files the task reads (sha256, streamed in 1 MiB chunks) and `identity` adds one digest per input
to the config as the pseudo-section `inputs` (dotted keys `inputs.model.init_file`,
`inputs.data.data_dir`), so a changed file changes `config_hash`, the `run.name=auto` directory
name, the sweep's completeness check and the checkpoint's resume check exactly like a changed key.

The user files, per config key:
- `model.init_file`: the file; its record is the file's sha256 (what `sha256sum` prints);
- `data.data_dir` of `client_files`: `<k>_client_data.csv` / `.npz` for k = 1..data.num_clients and
  `local_true_model.npy`; of `leaf`: `train/*.json` and `test/*.json`; of `cifar10`: `data_batch_1`..`5`
  and `test_batch`. Its record is the sha256 of a manifest, one line per file sorted by name:
  `<name relative to data_dir>\\t<size> <sha256>`.
- `data.kind` of a plug-in dataset (`package.module:factory`): the module's source file (found
  without running it, `pfl_dist.plugins.source_path`); its record is the file's sha256, so editing
  the generator makes another run. (Files the dataset reads are the dataset's to name in
  `data.params`, which is in the config; their contents are not hashed.)
Built-in data needs none: synthetic data, mnist5k, and the IDX datasets (Fashion-MNIST, MNIST:
the published files, MNIST's MD5-checked on download). A config without user files has no
`inputs` section, so its identity (hash, auto run name) is what it was before fingerprints.

A missing or unreadable file enters the manifest as `missing` / `unreadable` instead of raising:
the task then reports it in its own one line, exactly as without fingerprints. So does a client
CSV larger than the reader accepts (`too large (<size> bytes)`, pfl_dist/data/layout.py
CLIENT_CSV_MAX_BYTES), which is not read at all: its size alone refuses it.

Where it is recorded: summary.json `inputs` (key -> digest), `inputs.json` in the run dir (the
digests and every file's size and sha256, written when the run starts, so an unfinished run has
it too) and every checkpoint marker (the `inputs.*` keys of its config).

Cost: one pass over the files: the 186 MB of CIFAR-10's batches took 0.23 s here (826 MB/s,
docs/PERFORMANCE.md, benchmarks/input_hashing.py). Rank 0 hashes, the other ranks take its
digests from one telemetry all-reduce through the Communicator (pfl_dist/train.py
`share_inputs`). Digests are cached per process by (path, device, inode, size, mtime, ctime),
for files last changed more than 2 s before they were hashed, so a sweep driver whose points
share a data folder reads it once. No torch here.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pfl_dist.data.layout import (
    CIFAR10_TEST_BATCH,
    CIFAR10_TRAIN_BATCHES,
    CLIENT_CSV_MAX_BYTES,
    CLIENT_FORMATS,
    LEAF_SPLITS,
    TRUE_MODELS,
    client_file,
    leaf_split_files,
)
from pfl_dist.plugins import is_plugin_name, source_path

SECTION = "inputs"  # the pseudo-section of the identity, and summary.json's field
RECORD_FILE = "inputs.json"  # in the run dir
CHUNK_BYTES = 1 << 20
CIFAR10_FILES = (*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH)
MISSING = "missing"
RACY_NS = 2_000_000_000


@dataclass(frozen=True)
class InputRecord:
    """The fingerprint of one config key's files."""

    key: str  # "model.init_file" or "data.data_dir"
    path: str  # the file, or the folder the names are relative to
    digest: str  # sha256 hex (of the file, or of the folder's manifest), or "missing"/"unreadable ..."
    files: dict[str, str] = field(default_factory=dict)  # relative name -> "<size> <sha256>" | missing

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.digest, "files": dict(self.files)}


Inputs = dict[str, InputRecord]


# --- which files ----------------------------------------------------------------------------------


def input_keys(config: dict[str, Any]) -> list[str]:
    """The config keys (`Config.to_dict()`) naming user files that need a fingerprint: data.data_dir
    of a data kind whose registry entry reads a folder (`TaskEntry.input_files`)."""
    data = config.get("data", {})
    kind = str(data.get("kind"))
    return [key for key, reads in (("model.init_file", bool(config.get("model", {}).get("init_file"))),
                                   ("data.data_dir", data.get("data_dir") is not None
                                    and _folder_reader(kind) is not None),
                                   ("data.kind", is_plugin_name(kind))) if reads]


def _folder_reader(kind: str) -> str | None:
    """The entry's "module:function" naming the files below data.data_dir its task reads; None for
    a kind that reads no folder (or an unknown one)."""
    from pfl_dist.tasks import TASKS

    return TASKS[kind].input_files if kind in TASKS else None


def plugin_source(kind: str) -> Path | None:
    """The source file of a plug-in data kind's module; None when it has none or is not found."""
    return source_path(kind.partition(":")[0])


def folder_files(kind: str, root: Path, num_clients: int) -> list[str]:
    """The names below `root` the `kind` task reads (those that exist; the required ones always)."""
    from pfl_dist.tasks import entry_function

    reader = _folder_reader(kind)
    assert reader is not None, kind
    return list(entry_function(reader)(root, num_clients))


def cifar10_files(root: Path, num_clients: int) -> list[str]:
    return list(CIFAR10_FILES)


def leaf_files(root: Path, num_clients: int) -> list[str]:
    return [f"{split}/{path.name}" for split in LEAF_SPLITS if (root / split).is_dir()
            for path in leaf_split_files(root / split)]


def client_files_files(root: Path, num_clients: int) -> list[str]:
    names = []
    for client in range(num_clients):
        files = [client_file(root, client, fmt) for fmt in CLIENT_FORMATS]
        names += [path.name for path in files if path.is_file()] or [files[0].name]
    return [*names, TRUE_MODELS] if (root / TRUE_MODELS).is_file() else names


# --- hashing --------------------------------------------------------------------------------------

_cache: dict[tuple[Any, ...], str] = {}


def file_entry(path: Path, *, max_bytes: int | None = None) -> str:
    """'<size> <sha256>' of the file's contents, 'missing', 'unreadable (<reason>)', or 'too large
    (<size> bytes)' without reading it when it holds more than `max_bytes`."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return MISSING
    except OSError as err:
        return f"unreadable ({err.strerror or type(err).__name__})"
    if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
        return "unreadable (not a regular file)"
    if max_bytes is not None and info.st_size > max_bytes:
        return f"too large ({info.st_size} bytes)"
    key = (os.path.abspath(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    if key in _cache:
        return _cache[key]
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    try:
        with open(path, "rb") as handle:
            while count := handle.readinto(buffer):
                digest.update(view[:count])
    except OSError as err:  # a folder in its place, no permission, an I/O error
        return f"unreadable ({err.strerror or type(err).__name__})"
    entry = f"{info.st_size} {digest.hexdigest()}"
    # File times tick in clock ticks (a few ms): a file changed within RACY_NS of being hashed
    # could change again with the same size and times, so only older files are cached (git's rule).
    if time.time_ns() - max(info.st_mtime_ns, info.st_ctime_ns) > RACY_NS:
        _cache[key] = entry
    return entry


def _file_record(key: str, path: Path) -> InputRecord:
    entry = file_entry(path)
    digest = entry.split(" ", 1)[1] if entry[0].isdigit() else entry
    return InputRecord(key=key, path=str(path), digest=digest, files={path.name: entry})


def _read_bound(kind: str, name: str) -> int | None:
    """The size past which the `kind` task refuses the file `name` before reading it."""
    return CLIENT_CSV_MAX_BYTES if kind == "client_files" and name.endswith(".csv") else None


def _folder_record(key: str, root: Path, names: list[str], *, kind: str) -> InputRecord:
    files = {name: file_entry(root / name, max_bytes=_read_bound(kind, name)) for name in sorted(names)}
    manifest = "".join(f"{name}\t{entry}\n" for name, entry in files.items())
    return InputRecord(key=key, path=str(root), digest=hashlib.sha256(manifest.encode()).hexdigest(), files=files)


def fingerprint(config: dict[str, Any]) -> Inputs:
    """The records of the user files `config` (`Config.to_dict()`) reads; {} when it reads none."""
    records: Inputs = {}
    keys = input_keys(config)
    if "model.init_file" in keys:
        records["model.init_file"] = _file_record("model.init_file", Path(config["model"]["init_file"]))
    if "data.data_dir" in keys:
        data = config["data"]
        root = Path(data["data_dir"])
        names = folder_files(data["kind"], root, int(data.get("num_clients", 0)))
        records["data.data_dir"] = _folder_record("data.data_dir", root, names, kind=data["kind"])
    if "data.kind" in keys:
        source = plugin_source(config["data"]["kind"])
        records["data.kind"] = _file_record("data.kind", source) if source is not None else \
            InputRecord(key="data.kind", path=config["data"]["kind"], digest=MISSING)
    return records


# --- from rank 0 to the other ranks (pfl_dist/train.py `share_inputs`) ------------------------------

SLOT_BYTES = 128  # per key: a 64-character hex digest, or 'missing' / 'unreadable (<reason>)'


def encode_digests(records: Inputs, keys: list[str]) -> bytes:
    """The digests of `keys`, each UTF-8 in a zero-padded slot of SLOT_BYTES."""
    return b"".join(records[key].digest.encode()[:SLOT_BYTES].ljust(SLOT_BYTES, b"\0") for key in keys)


def decode_digests(data: bytes, keys: list[str], paths: dict[str, str]) -> Inputs:
    """`encode_digests` back into records (digests only: the file lists stay with rank 0)."""
    slots = [data[i * SLOT_BYTES:(i + 1) * SLOT_BYTES].rstrip(b"\0").decode(errors="replace")
             for i in range(len(keys))]
    return {key: InputRecord(key=key, path=paths[key], digest=digest)
            for key, digest in zip(keys, slots, strict=True)}


def config_paths(config: dict[str, Any]) -> dict[str, str]:
    """key -> the path the config gives for it."""
    kind = str(config["data"].get("kind"))
    source = plugin_source(kind) if is_plugin_name(kind) else None
    return {"model.init_file": str(config["model"].get("init_file")),
            "data.data_dir": str(config["data"].get("data_dir")),
            "data.kind": str(source) if source is not None else kind}


# --- the identity ---------------------------------------------------------------------------------


def digests(records: Inputs) -> dict[str, str]:
    """key -> digest: what the identity, summary.json and the checkpoints hold."""
    return {key: record.digest for key, record in records.items()}


def identity(config: dict[str, Any], records: Inputs | dict[str, str]) -> dict[str, Any]:
    """`config` plus the `inputs` section of digests; `config` itself when there are no user files
    (so its hash is the one it had before fingerprints)."""
    if not records:
        return config
    values = {key: value.digest if isinstance(value, InputRecord) else str(value) for key, value in records.items()}
    return {**config, SECTION: values}


def is_input_key(dotted: str) -> bool:
    return dotted.startswith(f"{SECTION}.")


def _short(digest: str | None) -> str:
    return f"sha256 {digest[:12]}.." if digest and len(digest) == 64 else (digest or "none")


def describe_change(dotted: str, saved: Any, current: Any) -> str:
    """'model.init_file contents changed (sha256 ab12.. -> cd34..)' for an `inputs.<key>`."""
    key = dotted[len(SECTION) + 1:]
    plugin = key == "data.kind"  # a plug-in dataset's module
    subject, were = (f"{key}'s source", "was") if plugin else (f"{key} contents", "were")
    if saved is None:
        return (f"{subject} {were} not recorded by that run (it predates content fingerprints), "
                f"now {_short(current)}")
    if current is None:
        return f"{subject} {were} recorded by that run ({_short(saved)}), this config reads no such files"
    if len(str(saved)) == len(str(current)) == 64:
        return f"{subject} changed (sha256 {str(saved)[:12]}.. -> {str(current)[:12]}..)"
    return f"{subject} changed ({_short(saved)} -> {_short(current)})"


def changed_files(saved: dict[str, Any], current: InputRecord) -> str:
    """' in 3_client_data.csv' (and how many more) between a saved inputs.json record and now; ''
    when the saved record lists no files."""
    old = saved.get("files")
    if not isinstance(old, dict):
        return ""
    names = [name for name in sorted(set(old) | set(current.files)) if old.get(name) != current.files.get(name)]
    if not names:
        return ""
    more = f" and {len(names) - 1} more file(s)" if len(names) > 1 else ""
    return f" in {names[0]}{more}"
