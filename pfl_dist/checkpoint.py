"""Checkpoints in round folders, the resume agreement, and the stop-on-signal protocol.

Layout (one shard per rank, so no rank ever waits for another to write):

    <run_dir>/ckpt/round_000012/
        shard_00001_of_00004.pt       rank 1 of 4: the replicated state (w_g, ledger, ...) and
                                      this rank's own (round times, measured bytes, RNG)
        shard_00001_of_00004.clients/ its clients' per-client rows, by segments:
            local_models.00000.bin      int64 client ids (ascending), then their rows' bytes;
            local_models.00001.bin      at most SEGMENT_BYTES each
            update_counts.00000.bin
        shard_00001_of_00004.json     its completion marker, written last: sha256 and size of the
                                      .pt, the client ids it holds, the result-relevant config,
                                      and the manifest of the client rows (name, dtype, row shape,
                                      default, and every segment's clients, size and sha256)

A segment holds only rows that differ from their default (pfl_dist/store.py `written_rows`): a
client never trained costs nothing on disk, so 10^7 clients of which 50,000 were trained write
50,000 rows, and neither the save nor the load ever holds more than one segment. (Format 1, still
loaded, kept every row of every client inside the .pt: one blob of k x P values.)

Every file is written atomically (temp file + fsync + os.replace). A shard counts only when its
marker exists, the .pt matches the marker's checksum and it loads (torch.load with
weights_only, the expected round), and every segment holding this rank's clients matches its
manifest entry (size, sha256 streamed), so a truncated, corrupt or undecodable newest shard is
skipped with a warning and an older round is used.

Resume: each rank votes, for every round, whether it can load that round (all the shards
holding its clients verify). One all_reduce(MIN) of the votes, through the Communicator as
telemetry, gives the newest round every rank can load; 0 means a fresh start. Voting on every
round rather than on each rank's newest one also works when ranks keep different sets. A
different world size re-shards by client id: a rank reads the old shards overlapping its block.

Stop: SIGTERM/SIGINT only set a flag (`StopRequest`). The flag travels in the round's control
lane (pfl_dist/exchange/: a count of stop requests beside the weight total, which no codec
touches), so every rank learns of it in the same round without an extra collective. That round is discarded on every
rank, the state after the previous round is checkpointed and `RunStopped` ends the job.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import random
import re
import shutil
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from pfl_dist.comm import Communicator, Traffic
from pfl_dist.errors import ConfigError
from pfl_dist.outputs import write_bytes_atomic
from pfl_dist.rundir import config_difference, resume_identity
from pfl_dist.sampling import client_block
from pfl_dist.signals import StopSignals, every_process_signalled
from pfl_dist.store import ClientStore, default_rows

FORMAT_VERSION = 2  # 2: client rows by segments (the manifest in the marker); 1: rows inside the .pt
LOADABLE_FORMATS = (1, 2)
SEGMENT_BYTES = 64 << 20  # a segment's rows (and one block of the save or load) at most this size
STOPPED_EXIT_CODE = 75  # sysexits EX_TEMPFAIL: stopped on request, rerun to resume
_SHARD = re.compile(r"shard_(\d{5})_of_(\d{5})\.json")
_ROUND = re.compile(r"round_(\d{6})")


# --- files -----------------------------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    """Make the renames in `path` durable (POSIX needs the directory synced too)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Replaced(ValueError):
    """A checkpoint round of the run that --overwrite replaces: skipped by the vote without a word."""


def round_dir(root: Path, round_num: int) -> Path:
    return root / f"round_{round_num:06d}"


def shard_stem(rank: int, world_size: int) -> str:
    return f"shard_{rank:05d}_of_{world_size:05d}"


def resume_config(config: dict[str, Any]) -> dict[str, Any]:
    """The identity as dotted keys, without the keys that cannot change a result and without the
    world size, which a resume may change (re-sharding; pfl_dist/rundir.py `resume_identity`)."""
    return resume_identity(config)


@dataclass(frozen=True)
class Shard:
    """One rank's file of one round, as its completion marker describes it."""

    path: Path  # the .pt
    rank: int
    world_size: int
    clients: range
    num_bytes: int
    sha256: str
    config: dict[str, Any]
    format: int = 1
    rows: tuple[dict[str, Any], ...] = ()  # format 2: the client rows' manifest

    @classmethod
    def from_marker(cls, marker: Path) -> Shard:
        info = json.loads(marker.read_text())
        return cls(path=marker.with_suffix(".pt"), rank=int(info["rank"]), world_size=int(info["world_size"]),
                   clients=range(*info["clients"]), num_bytes=int(info["num_bytes"]), sha256=str(info["sha256"]),
                   config=dict(info["config"]), format=int(info.get("format", 1)),
                   rows=tuple(dict(row) for row in info.get("rows", ())))

    @property
    def segment_dir(self) -> Path:
        return self.path.with_suffix(".clients")

    def read_verified(self) -> bytes:
        """The .pt's bytes; ValueError when they do not match the marker (truncated, corrupt)."""
        data = self.path.read_bytes()
        if len(data) != self.num_bytes:
            raise ValueError(f"{self.path} is truncated ({len(data)} of {self.num_bytes} bytes)")
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise ValueError(f"{self.path} is corrupt (sha256 mismatch)")
        return data

    def segments(self, name: str, clients: range) -> list[tuple[Path, dict[str, Any]]]:
        """Row `name`'s segments that hold a client of `clients`; ValueError when the manifest
        does not list the row or cannot be read."""
        marker = self.path.with_suffix(".json")
        try:
            row = next((row for row in self.rows if row["name"] == name), None)
            if row is None:
                raise ValueError(f"{marker} lists no client row {name!r}")
            return [(self.segment_dir / str(segment["file"]), segment) for segment in row["segments"]
                    if int(segment["first"]) < clients.stop and int(segment["last"]) >= clients.start]
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{marker} has an unreadable manifest ({type(err).__name__}: {err})") from None

    def verify_segments(self, clients: range) -> None:
        """Every segment holding a client of `clients` is as its manifest entry says (size, sha256,
        read 1 MiB at a time); ValueError naming the first that is not."""
        for row in self.rows:
            for path, segment in self.segments(row["name"], clients):
                digest, size = hashlib.sha256(), 0
                try:
                    with open(path, "rb") as f:
                        while chunk := f.read(1 << 20):
                            digest.update(chunk)
                            size += len(chunk)
                except OSError as err:
                    raise ValueError(f"{path} is unreadable ({err.strerror or err})") from None
                if size != segment["num_bytes"]:
                    raise ValueError(f"{path} is truncated ({size} of {segment['num_bytes']} bytes)")
                if digest.hexdigest() != segment["sha256"]:
                    raise ValueError(f"{path} is corrupt (sha256 mismatch)")


def _rows_per_segment(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return max(1, SEGMENT_BYTES // max(1, math.prod(shape) * dtype.itemsize))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r} in a checkpoint manifest")
    return dtype


class SavedRows(Mapping[str, torch.Tensor]):
    """One round's per-client rows of a client range, read from format-2 shards segment by segment.

    `blocks(name)` streams (client ids local to the range, rows): how a store loads them without
    holding more than one segment (pfl_dist/store.py `load_saved`). As a Mapping, `rows[name]` is
    the whole (len(range), ...) tensor, a never-written row read as its default: for tests and
    tools, never for 10^7 clients.
    """

    def __init__(self, shards: Sequence[Shard], clients: range, default_model: torch.Tensor | None) -> None:
        self.shards = list(shards)
        self.clients = clients
        self.default_model = default_model  # the store's initial w_g: the "global" rows' default
        self.meta = {row["name"]: row for row in self.shards[0].rows}

    @classmethod
    def of_shard(cls, marker: Path) -> SavedRows:
        """Every client row of one shard (its marker's path), for tools and tests."""
        shard = Shard.from_marker(marker)
        state = torch.load(shard.path, map_location="cpu", weights_only=True)
        return cls([shard], shard.clients, state.get("store_default_model"))

    def __iter__(self) -> Iterator[str]:
        return iter(self.meta)

    def __len__(self) -> int:
        return len(self.meta)

    def __contains__(self, name: object) -> bool:  # Mapping's would build the whole tensor
        return name in self.meta

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(n) for n in self.meta[name]["shape"])

    def dtype(self, name: str) -> torch.dtype:
        return _dtype(self.meta[name]["dtype"])

    def blocks(self, name: str) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        shape, dtype = self.shape(name), self.dtype(name)
        start, stop = self.clients.start, self.clients.stop
        for shard in self.shards:
            for path, segment in shard.segments(name, self.clients):
                data = path.read_bytes()
                count = int(segment["count"])
                if len(data) != segment["num_bytes"]:
                    raise ValueError(f"{path} is truncated ({len(data)} of {segment['num_bytes']} bytes)")
                ids = np.frombuffer(data, dtype="<i8", count=count)
                values = torch.frombuffer(bytearray(data[8 * count:]), dtype=dtype).reshape(count, *shape)
                keep = (ids >= start) & (ids < stop)
                yield ids[keep] - start, values[torch.from_numpy(keep)]

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.meta:
            raise KeyError(name)
        default, size = self.meta[name]["default"], len(self.clients)
        model = torch.zeros(0) if self.default_model is None else self.default_model
        # Rows saved from a mapping have no default (None): every row is in the segments.
        out = default_rows("zeros" if default is None else default, size, shape=self.shape(name),
                           dtype=self.dtype(name), global_model=model)
        seen = np.zeros(size, dtype=bool)
        for ids, values in self.blocks(name):
            out[torch.from_numpy(ids)] = values
            seen[ids] = True
        if default is None and not seen.all():
            raise ValueError(f"client row {name!r} lacks {int((~seen).sum())} of its {size} clients")
        return out


# --- RNG state ---------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every global RNG (torch, numpy, python) as weights_only-loadable values. Sampling and
    shuffling are pure functions of (seed, round), so these matter only to code outside them."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    version, mt, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "gauss": gauss},
        "python": {"version": version, "mt": list(mt), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["gauss"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["mt"]), python["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- the checkpointer ------------------------------------------------------------------------


class Checkpointer:
    """Writes this rank's shards, finds the rounds it can load, loads and prunes them.

    A shard's state is `{"clients": ..., "replicated": {...}, "rank": {...}}`: the client rows
    (the rank's ClientStore, pfl_dist/store.py, or a {name: (k, ...) tensor} mapping; re-sharded
    here by client id, whatever rows the algorithm and codec declared) go to segments; the
    replicated part is identical on every rank; the per-rank part (round times, measured bytes,
    RNG) is this rank's. `load` gives the client rows back as `SavedRows`.
    """

    def __init__(self, root: Path, *, rank: int, world_size: int, num_clients: int, keep: int,
                 config: dict[str, Any], replace_other_configs: bool = False) -> None:
        self.root = root
        self.rank = rank
        self.world_size = world_size
        self.num_clients = num_clients
        self.clients = client_block(rank, world_size=world_size, num_clients=num_clients)
        self.keep = keep
        self.config = resume_config(config)
        self.conflict: str | None = None  # set by `votes` when a checkpoint has another config
        # --overwrite: another config's checkpoints belong to the run being replaced; they are not
        # loadable (no conflict, no warning), and `discard_after` deletes them once the vote is done.
        self.replace_other_configs = replace_other_configs
        self._verified: dict[Path, dict[str, Any]] = {}  # shard states checked by `votes`, read once for `load`

    # --- writing ---------------------------------------------------------------------------

    def save(self, round_num: int, state: dict[str, Any]) -> Path:
        folder = round_dir(self.root, round_num)
        folder.mkdir(parents=True, exist_ok=True)
        stem = shard_stem(self.rank, self.world_size)
        # A shard of this round from an abandoned attempt stops counting before its files change.
        (folder / f"{stem}.json").unlink(missing_ok=True)
        segment_dir = folder / f"{stem}.clients"
        shutil.rmtree(segment_dir, ignore_errors=True)
        segment_dir.mkdir()
        clients = state["clients"]
        rows = self._save_rows(segment_dir, clients)
        fsync_dir(segment_dir)
        buffer = io.BytesIO()
        extra = {"store_default_model": clients.global_model.cpu()} if isinstance(clients, ClientStore) else {}
        torch.save({"format": FORMAT_VERSION, "round": round_num, **{k: v for k, v in state.items() if k != "clients"},
                    **extra}, buffer)
        data = buffer.getvalue()
        write_bytes_atomic(folder / f"{stem}.pt", data)
        marker = {"round": round_num, "rank": self.rank, "world_size": self.world_size,
                  "clients": [self.clients.start, self.clients.stop], "num_bytes": len(data),
                  "sha256": hashlib.sha256(data).hexdigest(), "config": self.config,
                  "format": FORMAT_VERSION, "rows": rows}
        # the marker goes last
        write_bytes_atomic(folder / f"{stem}.json", json.dumps(marker, allow_nan=False).encode())
        fsync_dir(folder)
        self.prune()
        return folder

    def _save_rows(self, segment_dir: Path, clients: ClientStore | Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
        """Write every client row by segments; -> the manifest. From a store: only the rows that
        differ from their default, streamed (`written_rows`); from a mapping (tests): every row."""
        manifest = []
        if isinstance(clients, ClientStore):
            for key, row in clients.declared.items():
                shape, dtype = clients.row_shape(row), clients.row_dtype(row)
                blocks = clients.written_rows(key, _rows_per_segment(shape, dtype))
                manifest.append(self._save_row(segment_dir, key.split("/", 1)[1], shape, dtype, row.default, blocks))
        else:
            for name, tensor in clients.items():
                shape, dtype = tuple(tensor.shape[1:]), tensor.dtype
                per_block = _rows_per_segment(shape, dtype)
                blocks = ((np.arange(start, min(start + per_block, len(tensor)), dtype=np.int64),
                           tensor[start: start + per_block].cpu()) for start in range(0, len(tensor), per_block))
                manifest.append(self._save_row(segment_dir, name, shape, dtype, None, blocks))
        return manifest

    def _save_row(self, segment_dir: Path, name: str, shape: tuple[int, ...], dtype: torch.dtype,
                  default: Any, blocks: Iterator[tuple[np.ndarray, torch.Tensor]]) -> dict[str, Any]:
        segments = []
        for index, (local, values) in enumerate(blocks):
            ids = (np.asarray(local, dtype=np.int64) + self.clients.start).astype("<i8")
            data = ids.tobytes() + values.contiguous().view(torch.uint8).numpy().tobytes()
            file = f"{name}.{index:05d}.bin"
            write_bytes_atomic(segment_dir / file, data)
            segments.append({"file": file, "count": len(ids), "first": int(ids[0]), "last": int(ids[-1]),
                             "num_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        return {"name": name, "dtype": _dtype_name(dtype), "shape": list(shape), "default": default,
                "segments": segments}

    def prune(self) -> None:
        """Keep `keep` complete checkpoints, plus the one just written, which other ranks may
        still be writing. Every earlier shard of this rank is complete on all ranks: each of them
        wrote it before joining the all-reduces that led here. A rank deletes only its own files
        (and those of other world sizes), so it never removes a shard a slower rank needs."""
        complete = [r for r in self.rounds() if self._own_marker(r).exists()][:-1]
        if len(complete) < self.keep:
            return
        for round_num in self.rounds():
            if round_num < complete[-self.keep]:
                self._remove_stale(round_num)

    def discard_after(self, round_num: int) -> None:
        """Files of rounds after the one resumed from belong to an abandoned attempt. (Called once
        the resume round is settled, so the bytes `votes` verified are no longer needed.)"""
        self._verified.clear()
        for newer in self.rounds():
            if newer > round_num:
                self._remove_stale(newer)

    def _own_marker(self, round_num: int) -> Path:
        return round_dir(self.root, round_num) / f"{shard_stem(self.rank, self.world_size)}.json"

    def _remove_stale(self, round_num: int) -> None:
        folder = round_dir(self.root, round_num)
        own = shard_stem(self.rank, self.world_size)
        try:
            paths = list(folder.iterdir())
        except FileNotFoundError:
            return  # after a re-shard every rank removes the old world size's files: another was first
        for path in sorted(paths, key=lambda p: p.suffix != ".json"):  # markers first: the shard stops counting
            foreign = f"_of_{self.world_size:05d}" not in path.name
            if path.name.startswith(own) or path.name.startswith(f".{own}") or foreign:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # other ranks' files are still there
            folder.rmdir()

    # --- reading ---------------------------------------------------------------------------

    def rounds(self) -> list[int]:
        if not self.root.is_dir():
            return []
        found = (_ROUND.fullmatch(p.name) for p in self.root.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def needed_shards(self, round_num: int, *, verify: bool = True) -> list[Shard]:
        """The shards holding this rank's clients in `round_num`, checksums verified.

        ValueError (with the reason) when any of them is missing, truncated or corrupt.
        """
        folder = round_dir(self.root, round_num)
        markers: dict[int, dict[int, Path]] = {}
        for path in folder.glob("shard_*.json"):
            match = _SHARD.fullmatch(path.name)
            if match:
                markers.setdefault(int(match.group(2)), {})[int(match.group(1))] = path
        if not markers:
            raise ValueError(f"{folder} holds no complete shard")
        # Prefer this world size; otherwise re-shard from the most complete older world size.
        old_size = self.world_size if self.world_size in markers else max(markers, key=lambda w: (len(markers[w]), w))
        shards = []
        for old_rank in range(old_size):
            block = client_block(old_rank, world_size=old_size, num_clients=self.num_clients)
            if block.start >= self.clients.stop or block.stop <= self.clients.start:
                continue
            if old_rank not in markers[old_size]:
                raise ValueError(f"{folder} lacks the marker of {shard_stem(old_rank, old_size)}")
            try:
                shard = Shard.from_marker(markers[old_size][old_rank])
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{markers[old_size][old_rank]} is unreadable ({err})") from None
            difference = config_difference(shard.config, self.config)
            if difference is not None and self.replace_other_configs:
                raise _Replaced(f"{folder} belongs to the run --overwrite replaces")
            if difference is not None:
                self.conflict = f"{folder} was written with another config ({difference})"
                raise ValueError(self.conflict)
            if shard.clients != block:
                raise ValueError(f"{shard.path} holds clients {shard.clients}, expected {block}")
            if verify:
                self._verified[shard.path] = self._read_state(shard, round_num)
                shard.verify_segments(self.clients)
            shards.append(shard)
        if len({shard.format for shard in shards}) > 1:
            raise ValueError(f"{folder} mixes checkpoint formats")
        return shards

    @staticmethod
    def _read_state(shard: Shard, round_num: int) -> dict[str, Any]:
        """The shard's .pt, checksum verified and decoded; ValueError when it does not load (a
        matching checksum only proves the bytes are the ones written, not that they decode)."""
        data = shard.read_verified()
        parts = ("replicated", "rank") if shard.format == 2 else ("clients", "replicated", "rank")
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            ok = (isinstance(state, dict) and state.get("format") == shard.format in LOADABLE_FORMATS
                  and state.get("round") == round_num
                  and all(isinstance(state.get(part), dict) for part in parts)
                  and all(isinstance(rows, torch.Tensor) and rows.shape[:1] == (len(shard.clients),)
                          for rows in state.get("clients", {}).values()))
        except Exception as err:  # noqa: BLE001 (unpickling raises anything from the bytes it reads)
            raise ValueError(f"{shard.path} does not load ({type(err).__name__})") from None
        if not ok:
            raise ValueError(f"{shard.path} does not hold a round {round_num} shard of {len(shard.clients)} clients")
        return dict(state)

    def votes(self, num_rounds: int, *, complete: bool) -> torch.Tensor:
        """[not complete, no config conflict, can load round 0, 1, ..., num_rounds - 1] as 0/1.

        Round 0 (a fresh start) is always loadable. The final round is never checkpointed: its
        evaluation and summary are always recomputed. A rerun of a complete run (rank 0 found its
        summary.json, of the same config: pfl_dist/rundir.py) trains nothing.
        """
        loadable = torch.zeros(num_rounds, dtype=torch.uint8)
        loadable[0] = 1
        for round_num in [] if complete else self.rounds():
            try:
                self.needed_shards(round_num)  # also beyond num_rounds: that is another config
            except _Replaced:
                continue
            except (OSError, ValueError) as err:
                if self.conflict is None:
                    print(f"pfl_dist: warning: rank {self.rank}: skipping checkpoint round {round_num}: {err}",
                          file=sys.stderr, flush=True)
                continue
            if 0 < round_num < num_rounds:
                loadable[round_num] = 1
        flags = torch.tensor([0 if complete else 1, 1 if self.conflict is None else 0], dtype=torch.uint8)
        return torch.cat([flags, loadable])

    def load(self, round_num: int) -> dict[str, Any]:
        """This rank's state at `round_num`, assembled by client id from the shards holding it."""
        parts = []
        for shard in self.needed_shards(round_num, verify=False):
            state = self._verified.pop(shard.path, None) or self._read_state(shard, round_num)
            parts.append((shard, state))
        self._verified.clear()
        first = parts[0][1]
        clients: Mapping[str, torch.Tensor]
        if parts[0][0].format == 2:
            clients = SavedRows([shard for shard, _ in parts], self.clients, first.get("store_default_model"))
        else:  # format 1: every row inside the .pt
            clients = {name: torch.cat([state["clients"][name][self._overlap(shard.clients)] for shard, state in parts])
                       for name in first["clients"]}
        # Every old rank's measured bytes go to exactly one new rank (the one holding its first
        # client), so their sum over ranks survives a re-shard.
        measured = {key: sum(int(state["rank"]["measured_local"][key]) for shard, state in parts
                             if shard.clients.start in self.clients)
                    for key in first["rank"]["measured_local"]}
        return {"clients": clients, "replicated": first["replicated"],
                "rank": {**first["rank"], "measured_local": measured}, "world_size": parts[0][0].world_size}

    def _overlap(self, held: range) -> slice:
        start, stop = max(held.start, self.clients.start), min(held.stop, self.clients.stop)
        return slice(start - held.start, stop - held.start)


RUN_COMPLETE = -1  # agree_on_resume_round: rank 0 holds a completed run of this config


def agree_on_resume_round(checkpointer: Checkpointer, comm: Communicator, *, num_rounds: int, complete: bool) -> int:
    """The newest round every rank can load (0 = fresh start, RUN_COMPLETE when rank 0 holds a
    completed run of this config): ONE all_reduce(MIN), telemetry."""
    votes = checkpointer.votes(num_rounds, complete=complete).to(comm.runtime.device)
    comm.all_reduce(votes, traffic=Traffic.TELEMETRY, op="min")
    votes = votes.cpu()
    if not votes[0]:
        return RUN_COMPLETE
    if not votes[1]:
        detail = checkpointer.conflict or f"another rank found checkpoints of another config in {checkpointer.root}"
        raise ConfigError(f"cannot resume: {detail}; use another run.name or delete {checkpointer.root}")
    return int(torch.nonzero(votes[2:]).max())


# --- stopping on a signal --------------------------------------------------------------------


class RunStopped(Exception):
    """SIGTERM/SIGINT ended the run at a round boundary, after a checkpoint where possible."""

    exit_code = STOPPED_EXIT_CODE


class StopRequest(StopSignals):
    """Records SIGTERM/SIGINT. The first signal only sets a flag (the round loop then stops at an
    agreed round); a second one gets the previous handler, so it interrupts at once.

    Where the scheduler signals every process of the job (PFL_SIGNAL_EVERY_PROCESS=1, a Slurm
    step: pfl_dist/signals.py), the worker gets the signal from slurmstepd and again from
    torchrun's agent, which got it too: there a repeat is the same stop and changes nothing, and
    the scheduler's SIGKILL (after Slurm's KillWait) is what interrupts at once."""

    def __init__(self) -> None:
        super().__init__()
        self.repeats_are_the_same_stop = every_process_signalled()

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal_name = self.signal_name or signal.Signals(signum).name
        if not self.repeats_are_the_same_stop:
            self.uninstall()
