"""Per-client state: rows are declared (`Row`), and one `ClientStore` per rank owns them all.

Three parts of a run keep a row per client, each under its namespace:
- `algo/`: the algorithm's rows (`Algorithm.client_rows`: FedCLUP's local model, Ditto's
  personal model, SCAFFOLD's c_i, APFL's alpha_i);
- `codec/`: an error-feedback codec's residual e_i (pfl_dist/exchange/base.py `ErrorFeedback`);
- `engine/`: the Trainer's count of local updates per client.

Nobody allocates them by hand: each part declares its rows (name, default, shape, dtype) and
reads and writes them by client row through the store. A row never written reads its default
("global": a copy of the initial w_g; "zeros"; or a constant such as APFL's alpha_0).

A checkpoint (pfl_dist/checkpoint.py) writes every declared row by segments of the rows that
differ from their default (`written_rows`), named by the row's bare name (`local_models`,
`codec_residual`, `update_counts`, the names checkpoints always had, so older checkpoints load),
and re-shards every one by client id with no code per algorithm; a resume streams them back
(`load_saved`). Bare names are therefore unique across namespaces (`declare` refuses a clash).
`state_dict` (one (k, ...) tensor per row) is for tests and for checkpoints of format 1.

Two back-ends (`store.backend`, chosen by pfl_dist/resources.py `store_backend`):
- `DenseStore`: every row of every client of this rank in memory, one (k, ...) tensor per row.
  Fastest, and k x P values per model-sized row: 40 GB at k = 5 x 10^6 clients and P = 1010
  float64.
- `LazyStore`: a row never written costs nothing (it is its default, made when read). A written
  row lives in a RAM cache of the most recently written rows, bounded in bytes (`store.cache_mb`);
  the least recently written are spilled, when the bound is passed, to a row file per declared
  row under <run_dir>/store/rank<r>/ (k fixed-size slots, sized by ftruncate so the file is
  sparse and only spilled rows take disk; pwrite into a slot, pread back). Why slots and not an
  append-only row log with an index: a row has a fixed size and one place, so a spill is an
  overwrite (no stale copies, no compaction, no index to keep), and the disk used is bounded by
  the clients ever written; not memory-mapped, because mapped pages count in the process's RSS.
  The measurement is benchmarks/store_spill.py (docs/PERFORMANCE.md "store_spill"). The files
  are scratch: the checkpoint holds the rows, and a new store starts with none.

A row read is a copy the caller may change; a write stores a copy. `chunks` (blocks of clients,
each block's rows) is how every caller that needs all clients reads them: the LocalTrain
evaluation model, FedCLUP's lam = auto statistic, the codec's checkpointed residuals. A dense
store gives one block (every client, as before: the same sums bit for bit); a lazy one blocks
of at most the cache's bound, so reading every client never holds more than one block. `rows`
(every client at once) is for rows of a few numbers per client (the update counts) and for
tests; the engine never calls it for a row of the model's size.

`written_rows(key, max_rows)` streams, block by block (ascending client ids, at most `max_rows`
rows a block), only the rows whose bits differ from their default, and `load_rows` sets given
rows (a lazy store writes them to its row files, not through the cache): what the checkpoint's
segments are written from and loaded with.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch

from pfl_dist.errors import ConfigError

NAMESPACES = ("algo", "codec", "engine")
STORE_DIR = "store"  # the lazy store's row files: <run_dir>/store/rank<r>/
Default = Literal["global", "zeros"] | float


class SavedRowSource(Protocol):
    """A checkpoint's client rows of this rank's clients (pfl_dist/checkpoint.py `SavedRows`)."""

    def __contains__(self, name: object) -> bool: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def blocks(self, name: str) -> Iterator[tuple[np.ndarray, torch.Tensor]]: ...


@dataclass(frozen=True)
class Row:
    """One per-client row: its name, its value before a client's first write, and its shape.

    `default`: "global" (a copy of the initial w_g; the shape is the model's), "zeros", or a
    number (every entry that constant, e.g. APFL's alpha_0). `shape`: one client's row, None for
    the model's (P,); () is one number per client. `dtype`: None for the model's."""

    name: str
    default: Default = "zeros"
    shape: tuple[int, ...] | None = None
    dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ConfigError(f"per-client row name {self.name!r} must be an identifier")
        if isinstance(self.default, str) and self.default not in ("global", "zeros"):
            raise ConfigError(f"per-client row {self.name!r}: default must be 'global', 'zeros' or a number, "
                              f"got {self.default!r}")
        if self.default == "global" and self.shape is not None:
            raise ConfigError(f"per-client row {self.name!r}: default 'global' has the model's shape; drop shape")


class ClientStore:
    """Every per-client row of this rank's `num_clients` clients, keyed "namespace/name"."""

    backend: str  # "dense" or "lazy", the store.backend value it implements

    def __init__(self, num_clients: int, *, global_model: torch.Tensor) -> None:
        self.num_clients = num_clients
        self.global_model = global_model.detach().clone()  # what "global" rows start from
        self.declared: dict[str, Row] = {}  # "namespace/name" -> its declaration

    def declare(self, namespace: str, rows: Iterable[Row]) -> None:
        """Add rows under `namespace`; a bare name already declared (in any namespace) is refused."""
        if namespace not in NAMESPACES:
            raise ValueError(f"unknown client-store namespace {namespace!r} (one of {', '.join(NAMESPACES)})")
        for row in rows:
            clash = next((key for key in self.declared if key.split("/", 1)[1] == row.name), None)
            if clash is not None:
                raise ConfigError(f"per-client row {namespace}/{row.name}: the name {row.name!r} is already "
                                  f"{clash} (checkpoints name rows by their bare name)")
            self.declared[f"{namespace}/{row.name}"] = row
            self._allocate(f"{namespace}/{row.name}", row)

    def names(self, namespace: str) -> list[str]:
        """The bare names declared under `namespace`, in declaration order."""
        return [key.split("/", 1)[1] for key in self.declared if key.startswith(namespace + "/")]

    def default(self, row: Row, num_clients: int) -> torch.Tensor:
        """(num_clients, *shape): `row` as it reads before any write."""
        return default_rows(row.default, num_clients, shape=self.row_shape(row), dtype=self.row_dtype(row),
                            global_model=self.global_model)

    def row_shape(self, row: Row) -> tuple[int, ...]:
        """One client's row of `row`."""
        return (len(self.global_model),) if row.shape is None else row.shape

    def row_dtype(self, row: Row) -> torch.dtype:
        return self.global_model.dtype if row.dtype is None else row.dtype

    def rows(self, namespace: str) -> dict[str, torch.Tensor]:
        """{name: (num_clients, ...)}: every client's rows of `namespace` at once, read-only. For
        rows of a few numbers per client and for tests: a row of the model's size is read by
        `chunks` (a lazy store would materialize it here)."""
        return self.read(namespace, torch.arange(self.num_clients, device=self.global_model.device))

    def chunks(self, namespace: str, rows: torch.Tensor | None = None
               ) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """(block, {name: (len(block), ...)}) for consecutive blocks of `rows` (None: every client),
        read-only: how a caller that needs many clients reads them without holding them all."""
        everyone = torch.arange(self.num_clients, device=self.global_model.device) if rows is None else rows
        step = self.chunk_rows()
        for start in range(0, len(everyone), step):
            block = everyone[start: start + step]
            yield block, self.read(namespace, block)

    # --- the back-end's part ---------------------------------------------------------------

    def chunk_rows(self) -> int:
        """How many clients one block of `chunks` holds."""
        raise NotImplementedError

    def _allocate(self, key: str, row: Row) -> None:
        raise NotImplementedError

    def read(self, namespace: str, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """{name: (len(rows), ...)}: a copy of the given clients' rows of every row of `namespace`."""
        raise NotImplementedError

    def write(self, namespace: str, rows: torch.Tensor, values: Mapping[str, torch.Tensor]) -> None:
        """Set the given clients' rows of the named rows of `namespace` (others are unchanged)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        """{bare name: (num_clients, ...) on the CPU}: the checkpoint's "clients" section."""
        raise NotImplementedError

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load every declared row from `state` (the checkpoint's "clients" section, re-sharded to
        this rank's clients). Names `state` has beyond the declared ones are the caller's to judge
        (`undeclared`)."""
        raise NotImplementedError

    def load_saved(self, saved: SavedRowSource) -> None:
        """Every declared row from a checkpoint's segments, one block at a time (the rows not in
        them read their default): how a resume loads 10^7 clients' rows without holding them."""
        self._reset()
        for key, row in self.declared.items():
            name = key.split("/", 1)[1]
            if name not in saved:
                raise ConfigError(f"cannot resume: the checkpoint has no per-client row {name!r}, which this run "
                                  f"declares ({key}); use another run.name or --overwrite")
            if saved.shape(name) != self.row_shape(row):
                raise ConfigError(f"cannot resume: per-client row {key} is {(self.num_clients, *saved.shape(name))} "
                                  f"in the checkpoint and {(self.num_clients, *self.row_shape(row))} in this run; "
                                  "use another run.name or --overwrite")
            for clients, values in saved.blocks(name):
                self.load_rows(key, clients, values)

    def _reset(self) -> None:
        """Every row back to its default."""
        raise NotImplementedError

    def written_rows(self, key: str, max_rows: int) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """(local client ids, ascending, int64; their rows of `key` on the CPU) for every client
        whose row of `key` differs bit for bit from its default, in blocks of at most `max_rows`
        rows: how a caller writes the rows that matter without holding more than one block."""
        raise NotImplementedError

    def load_rows(self, key: str, clients: np.ndarray, values: torch.Tensor) -> None:
        """Set the rows of `key` of the given local clients (a resume's rows, which differ from
        their default), without passing them through the cache."""
        raise NotImplementedError

    def _differs(self, key: str, values: torch.Tensor) -> np.ndarray:
        """(len(values),) bool: which rows of `key` differ bit for bit from the default."""
        default = self.default(self.declared[key], 1).cpu().contiguous().view(torch.uint8).reshape(1, -1)
        rows = values.cpu().contiguous()
        raw = rows.view(torch.uint8).reshape(len(rows), -1)
        step = max(1, 2**22 // max(1, raw.shape[1]))  # a comparison of 4 MiB at a time, not one of the block
        return np.concatenate([(raw[start: start + step] != default).any(dim=1).numpy()
                               for start in range(0, len(rows), step)] or [np.zeros(0, dtype=bool)])

    def close(self) -> None:
        """Release what the store holds outside memory (default: nothing)."""

    def undeclared(self, names: Iterable[str]) -> list[str]:
        """The names among `names` that no namespace declares, sorted."""
        bare = {key.split("/", 1)[1] for key in self.declared}
        return sorted(set(names) - bare)

    def _saved_row(self, state: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
        """The checkpoint's rows of `key`, checked against the declaration (one line when not)."""
        name = key.split("/", 1)[1]
        if name not in state:
            raise ConfigError(f"cannot resume: the checkpoint has no per-client row {name!r}, which this run "
                              f"declares ({key}); use another run.name or --overwrite")
        saved, row = state[name], self.declared[key]
        expected = (self.num_clients, *self.row_shape(row))
        if tuple(saved.shape) != expected:
            raise ConfigError(f"cannot resume: per-client row {key} is {tuple(saved.shape)} in the checkpoint "
                              f"and {expected} in this run; use another run.name or --overwrite")
        return saved.to(dtype=self.row_dtype(row))


class DenseStore(ClientStore):
    """Every row of every client in memory: one (num_clients, ...) tensor per declared row."""

    backend = "dense"

    def __init__(self, num_clients: int, *, global_model: torch.Tensor) -> None:
        super().__init__(num_clients, global_model=global_model)
        self.tensors: dict[str, torch.Tensor] = {}

    def chunk_rows(self) -> int:
        return max(1, self.num_clients)  # one block: every caller's sums as they were before chunks

    def _allocate(self, key: str, row: Row) -> None:
        self.tensors[key] = self.default(row, self.num_clients)

    def read(self, namespace: str, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: self.tensors[f"{namespace}/{name}"][rows] for name in self.names(namespace)}

    def write(self, namespace: str, rows: torch.Tensor, values: Mapping[str, torch.Tensor]) -> None:
        for name, value in values.items():
            self.tensors[_declared_key(self.declared, namespace, name)][rows] = value

    def rows(self, namespace: str) -> dict[str, torch.Tensor]:
        return {name: self.tensors[f"{namespace}/{name}"] for name in self.names(namespace)}

    def chunks(self, namespace: str, rows: torch.Tensor | None = None
               ) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        if rows is None:  # the tensors themselves, not a copy of every row
            yield torch.arange(self.num_clients, device=self.global_model.device), self.rows(namespace)
        else:
            yield rows, self.read(namespace, rows)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {key.split("/", 1)[1]: tensor.cpu() for key, tensor in self.tensors.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        for key, tensor in self.tensors.items():
            self.tensors[key] = self._saved_row(state, key).to(device=tensor.device)

    def _reset(self) -> None:
        for key, row in self.declared.items():
            self._allocate(key, row)

    def written_rows(self, key: str, max_rows: int) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        tensor, held = self.tensors[key], np.empty(0, dtype=np.int64)
        scan = max(1, min(max_rows, 4096))  # the bit comparison's block: a few MiB at most
        for start in range(0, self.num_clients, scan):
            found = np.flatnonzero(self._differs(key, tensor[start: start + scan])) + start
            held = np.concatenate([held, found.astype(np.int64)])
            while len(held) >= max_rows:
                block, held = held[:max_rows], held[max_rows:]
                yield block, tensor[torch.from_numpy(block).to(tensor.device)].cpu()
        if len(held):
            yield held, tensor[torch.from_numpy(held).to(tensor.device)].cpu()

    def load_rows(self, key: str, clients: np.ndarray, values: torch.Tensor) -> None:
        tensor = self.tensors[key]
        tensor[torch.from_numpy(np.asarray(clients, dtype=np.int64)).to(tensor.device)] = values.to(tensor)


class LazyStore(ClientStore):
    """Rows that cost nothing until written: a byte-bounded LRU of written rows in RAM, spilled to
    one row file of fixed slots per declared row (see the module docstring for the design).

    Named state: `written[key]` (k,) bool, which clients' rows of `key` hold a value (the others
    read the default); `cache` (key, client row) -> that row, least recently written first,
    `cached_bytes` their size (element bytes) and `cache_bytes` its bound; `spilled[key]` the
    descriptor of `key`'s row file once a row of it was evicted (client c's row at c x row
    bytes); `spills` how many rows were written to the files. Reads do not enter the cache (an
    evaluation of every client would flush it); a read of a spilled row reads the file. A write
    replaces the cached copy or adds one, then evicts the least recently written rows until the
    cache is within its bound.
    """

    backend = "lazy"

    def __init__(self, num_clients: int, *, global_model: torch.Tensor, spill_dir: Path, cache_bytes: int) -> None:
        super().__init__(num_clients, global_model=global_model)
        self.spill_dir = spill_dir
        self.cache_bytes = cache_bytes
        self.written: dict[str, np.ndarray] = {}
        self.cache: OrderedDict[tuple[str, int], torch.Tensor] = OrderedDict()
        self.cached_bytes = 0
        self.spilled: dict[str, int] = {}  # key -> its row file's descriptor
        self.spills = 0
        shutil.rmtree(spill_dir, ignore_errors=True)  # a previous attempt's rows: the checkpoint holds them

    def chunk_rows(self) -> int:
        """The clients whose rows of every declared row fit in the cache's bound (at least one)."""
        widest = max((self._row_bytes(row) for row in self.declared.values()), default=1)
        return max(1, self.cache_bytes // widest)

    def _row_bytes(self, row: Row) -> int:
        return math.prod(self.row_shape(row)) * self.row_dtype(row).itemsize

    def _allocate(self, key: str, row: Row) -> None:
        self.written[key] = np.zeros(self.num_clients, dtype=bool)

    def read(self, namespace: str, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        clients = rows.cpu().numpy()
        out = {}
        for name in self.names(namespace):
            key = f"{namespace}/{name}"
            values = self.default(self.declared[key], len(clients))
            from_file = []
            for position in np.flatnonzero(self.written[key][clients]):
                cached = self.cache.get((key, int(clients[position])))
                if cached is None:
                    from_file.append(position)
                else:
                    values[position] = cached
            if from_file:
                spilled = self._unspill(key, clients[from_file])
                values[torch.from_numpy(np.asarray(from_file))] = torch.from_numpy(spilled).to(values)
            out[name] = values
        return out

    def write(self, namespace: str, rows: torch.Tensor, values: Mapping[str, torch.Tensor]) -> None:
        clients = rows.cpu().tolist()
        for name, value in values.items():
            key = _declared_key(self.declared, namespace, name)
            for position, client in enumerate(clients):
                row = value[position].detach().clone()
                previous = self.cache.pop((key, client), None)
                self.cached_bytes += row.numel() * row.element_size() - (
                    0 if previous is None else previous.numel() * previous.element_size())
                self.cache[(key, client)] = row
            self.written[key][clients] = True
        self._evict()

    def _evict(self) -> None:
        """Spill the least recently written rows until the cache is within its bound."""
        evicted: dict[str, tuple[list[int], list[torch.Tensor]]] = {}
        while self.cached_bytes > self.cache_bytes and self.cache:
            (key, client), row = self.cache.popitem(last=False)
            self.cached_bytes -= row.numel() * row.element_size()
            clients, rows = evicted.setdefault(key, ([], []))
            clients.append(client)
            rows.append(row)
        for key, (clients, rows) in evicted.items():
            self._spill(key, np.asarray(clients), torch.stack(rows).cpu().numpy())
            self.spills += len(clients)

    def _spill(self, key: str, clients: np.ndarray, rows: np.ndarray) -> None:
        """Write `rows` into their clients' slots of `key`'s row file (one positioned write each)."""
        fd, size = self._row_file(key), self._row_bytes(self.declared[key])
        for client, row in zip(clients.tolist(), np.ascontiguousarray(rows), strict=True):
            os.pwrite(fd, row.tobytes(), client * size)

    def _unspill(self, key: str, clients: np.ndarray) -> np.ndarray:
        """The spilled rows of `clients`, read from their slots (one positioned read each)."""
        row = self.declared[key]
        fd, size = self.spilled[key], self._row_bytes(row)
        data = bytearray(b"".join(os.pread(fd, size, client * size) for client in clients.tolist()))
        dtype = torch.empty((), dtype=self.row_dtype(row)).numpy().dtype
        return np.frombuffer(data, dtype=dtype).reshape(len(clients), *self.row_shape(row))

    def _row_file(self, key: str) -> int:
        """`key`'s row file (a descriptor), made at its first spill: k slots of one row each, sized
        by ftruncate, so the file is sparse and only the slots written take disk."""
        if key not in self.spilled:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.spill_dir / f"{key.replace('/', '.')}.rows", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            os.ftruncate(fd, self.num_clients * self._row_bytes(self.declared[key]))
            self.spilled[key] = fd
        return self.spilled[key]

    def state_dict(self) -> dict[str, torch.Tensor]:
        everyone = torch.arange(self.num_clients, device=self.global_model.device)
        return {key.split("/", 1)[1]: self.read(key.split("/", 1)[0], everyone)[key.split("/", 1)[1]].cpu()
                for key in self.declared}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Rows whose bits differ from their default's are written (to the row files directly: a
        resume does not pass the whole checkpoint through the cache); the others stay unwritten
        (they read the same bits)."""
        self._reset()
        for key in self.declared:
            saved = self._saved_row(state, key).cpu().contiguous()
            differs = self._differs(key, saved)
            self.written[key] = differs
            if differs.any():
                self._spill(key, np.flatnonzero(differs), saved[torch.from_numpy(differs)].numpy())

    def _reset(self) -> None:
        self.cache.clear()
        self.cached_bytes = 0
        for flags in self.written.values():
            flags[:] = False

    def written_rows(self, key: str, max_rows: int) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Written flags scanned in windows, each block's rows gathered from the cache or read
        straight into the block from the row file (no second copy), default bits dropped."""
        row = self.declared[key]
        window = 1 << 20  # flags scanned at once: 8 MiB of ids at most
        for start in range(0, self.num_clients, window):
            ids = np.flatnonzero(self.written[key][start: start + window]).astype(np.int64) + start
            for first in range(0, len(ids), max(1, max_rows)):
                block = ids[first: first + max(1, max_rows)]
                values = torch.empty((len(block), *self.row_shape(row)), dtype=self.row_dtype(row))
                raw = values.view(torch.uint8).reshape(len(block), -1).numpy()
                size = self._row_bytes(row)
                for position, client in enumerate(block.tolist()):
                    cached = self.cache.get((key, client))
                    if cached is not None:
                        values[position] = cached
                    else:
                        os.preadv(self.spilled[key], [memoryview(raw[position])], client * size)
                keep = self._differs(key, values)
                if keep.all():
                    yield block, values
                elif keep.any():
                    yield block[keep], values[torch.from_numpy(keep)]

    def load_rows(self, key: str, clients: np.ndarray, values: torch.Tensor) -> None:
        clients = np.asarray(clients, dtype=np.int64)
        for client in clients.tolist():  # a stale cached copy would shadow the loaded row
            cached = self.cache.pop((key, client), None)
            if cached is not None:
                self.cached_bytes -= cached.numel() * cached.element_size()
        if len(clients):
            self._spill(key, clients, values.to(dtype=self.row_dtype(self.declared[key])).cpu().contiguous().numpy())
            self.written[key][clients] = True

    def close(self) -> None:
        """Drop the row files (scratch: the checkpoint holds the rows)."""
        for fd in self.spilled.values():
            os.close(fd)
        self.spilled.clear()
        shutil.rmtree(self.spill_dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # <run_dir>/store/, once every rank's folder is gone
            self.spill_dir.parent.rmdir()


def default_rows(default: Default, num_clients: int, *, shape: tuple[int, ...], dtype: torch.dtype,
                 global_model: torch.Tensor) -> torch.Tensor:
    """(num_clients, *shape): a row of default `default` as it reads before any write ("global":
    copies of `global_model`, the initial w_g)."""
    if default == "global":
        return global_model.to(dtype).repeat(num_clients, 1)
    fill = 0.0 if default == "zeros" else float(default)
    return torch.full((num_clients, *shape), fill, dtype=dtype, device=global_model.device)


def _declared_key(declared: Mapping[str, Row], namespace: str, name: str) -> str:
    key = f"{namespace}/{name}"
    if key not in declared:
        raise KeyError(f"per-client row {key} was not declared (declared: {', '.join(declared)})")
    return key
