"""Already-federated data: a directory with one file per client (`data.kind: client_files`).

Layout (client k = 1..m, m = data.num_clients; experiment client c is file k = c + 1):
- `<k>_client_data.csv`: the layout the FedCLUP authors' simulation code writes. No header,
  comma-separated; the first `data.dim` columns are the features, the last one the integer
  label, which may be written as a float (`1.0`);
- or `<k>_client_data.npz`: arrays `X` (n, d) and `y` (n,) (numpy, no pickles);
- optionally `local_true_model.npy`: the true models W_k, shape (M, C, d) with M >= m.

Plain numpy, no torch. Each function reads only what it is asked for: a rank reads its own
clients' files and its rows of the true models (memory-mapped). Anything wrong with a file
raises `DataError`: one line naming the file and the problem.
"""

from __future__ import annotations

import functools
import stat
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pfl_dist.data.layout import (
    CLIENT_CSV_MAX_BYTES,
    CLIENT_CSV_MAX_FIELD_CHARS,
    CLIENT_FORMATS,
    TRUE_MODELS,
    client_file,
)
from pfl_dist.errors import DataError
from pfl_dist.outputs import format_bytes

FORMATS = CLIENT_FORMATS


@dataclass(frozen=True)
class ClientArrays:
    features: np.ndarray  # (n, d) float64, as stored (unscaled)
    labels: np.ndarray  # (n,) int64


def data_directory(data_dir: str | None) -> Path:
    if data_dir is None:
        raise DataError("data.kind client_files needs data.data_dir: the directory of <k>_client_data.csv "
                        "(or .npz) files, k = 1..m")
    directory = Path(data_dir)
    if not directory.is_dir():
        raise DataError(f"data.data_dir {directory}: no such directory")
    return directory


def detect_format(directory: Path, client: int = 0) -> str:
    """csv or npz, from the file of `client` (a rank looks at its own first client's file)."""
    found = [fmt for fmt in FORMATS if client_file(directory, client, fmt).is_file()]
    if not found:
        raise DataError(f"{client_file(directory, client, 'csv')}: file not found (data.kind client_files reads "
                        "<k>_client_data.csv or <k>_client_data.npz, k = 1..m)")
    if len(found) > 1:
        raise DataError(f"{directory}: holds both {client + 1}_client_data.csv and .npz; keep one format")
    return found[0]


def _csv_problem(text: str, dim: int, *, first_line: int) -> str:
    """The first line of `text` (numbered from `first_line`) that cannot be parsed, described for
    the user. Empty lines and lines starting with '#' are skipped, as np.loadtxt skips them."""
    for number, line in enumerate(text.split("\n"), start=first_line):
        if not line or line.startswith("#"):
            continue
        fields = line.split(",")
        if len(fields) != dim + 1:
            return (f"line {number} has {len(fields)} columns, expected {dim + 1} "
                    f"(data.dim={dim} features, then the label)")
        for column, field in enumerate(fields, start=1):
            try:
                float(field)
            except ValueError:
                return f"line {number}, column {column}: {field.strip()[:20]!r} is not a number"
    return "not a CSV table of numbers"


def _parse_block(path: Path, block: str, *, dim: int, first_line: int) -> np.ndarray:
    """The rows of one block of whole lines, (rows, dim + 1) float64."""
    lines = block.split("\n")
    if block.endswith("\n"):
        lines.pop()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data" for a block of comments
            table = np.loadtxt(lines, delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError:
        raise DataError(f"{path}: {_csv_problem(block, dim, first_line=first_line)}") from None
    if len(table) and table.shape[1] != dim + 1:
        raise DataError(f"{path}: {_csv_problem(block, dim, first_line=first_line)}")
    return table


def _read_csv(path: Path, dim: int) -> np.ndarray:
    """The CSV's table, read a block at a time into an array sized by `csv_rows` (the count the
    memory estimate uses): the text is never held whole."""
    rows = csv_rows(path, dim=dim)
    if rows == 0:
        raise DataError(f"{path}: the client has no samples (no lines of numbers)")
    try:
        table = np.empty((rows, dim + 1), dtype=np.float64)
    except MemoryError:
        raise DataError(f"{path}: its {rows} samples of {dim + 1} numbers do not fit in memory") from None
    filled = 0
    for first_line, block in _csv_blocks(path, dim=dim):
        part = _parse_block(path, block, dim=dim, first_line=first_line)
        if filled + len(part) > rows:
            break
        table[filled: filled + len(part)] = part
        filled += len(part)
    else:
        if filled == rows:
            return table
    raise DataError(f"{path}: changed while it was read (it held {rows} samples when counted)")


def _read_npz(path: Path, dim: int) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ("X", "y") if key not in archive.files]
            if missing:
                raise DataError(f"{path}: no array {' or '.join(missing)} (expected X (n, d) and y (n,))")
            x, y = archive["X"], archive["y"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable .npz file ({str(err).splitlines()[0] if str(err) else 'corrupt'})") \
            from None
    if x.ndim != 2 or x.shape[1] != dim or y.shape != (x.shape[0],):
        raise DataError(f"{path}: X has shape {x.shape} and y {y.shape}, expected ({'n'}, {dim}) and (n,) "
                        f"(data.dim={dim})")
    if x.dtype.kind not in "fiu" or y.dtype.kind not in "fiu":
        raise DataError(f"{path}: X and y must be numeric, got {x.dtype} and {y.dtype}")
    return np.concatenate([x.astype(np.float64), y.astype(np.float64)[:, None]], axis=1)


def read_client(directory: Path, client: int, *, fmt: str, dim: int, num_classes: int) -> ClientArrays:
    """Experiment client `client`'s samples, checked: n >= 1, finite, labels in 0..C-1."""
    path = client_file(directory, client, fmt)
    if not path.is_file():
        problem = "not a regular file" if path.exists() else "file not found"
        raise DataError(f"{path}: {problem} (client {client + 1} of data.num_clients)")
    table = _read_csv(path, dim) if fmt == "csv" else _read_npz(path, dim)
    where = "line" if fmt == "csv" else "sample"
    if table.shape[0] == 0:
        raise DataError(f"{path}: the client has no samples")
    finite = np.isfinite(table).all(axis=1)
    if not finite.all():
        raise DataError(f"{path}: {where} {int(np.argmin(finite)) + 1} holds a NaN or infinite value")
    labels = table[:, -1]
    bad = (labels != np.round(labels)) | (labels < 0) | (labels >= num_classes)
    if bad.any():
        first = int(np.argmax(bad))
        raise DataError(f"{path}: {where} {first + 1}: label {labels[first]:g} is not a class in 0..{num_classes - 1} "
                        f"(data.num_classes={num_classes})")
    return ClientArrays(features=np.ascontiguousarray(table[:, :-1]), labels=labels.astype(np.int64))


def client_rows(directory: Path, client: int, *, fmt: str, dim: int) -> int:
    """How many samples experiment client `client`'s file holds, without parsing a number (lazy
    data, pfl_dist/tasks/client_files.py): a CSV's rows counted as `_read_csv` counts them
    (`csv_rows`), an .npz's from X's header. DataError, one line, for a missing file, a file the
    reader refuses before parsing, or no samples; what only parsing finds (a bad number or label)
    is found when the client is read."""
    path = client_file(directory, client, fmt)
    if not path.is_file():
        problem = "not a regular file" if path.exists() else "file not found"
        raise DataError(f"{path}: {problem} (client {client + 1} of data.num_clients)")
    if fmt == "csv":
        rows = csv_rows(path, dim=dim)
    else:
        try:
            info = path.stat()
            rows = _npz_rows(path, info.st_size, info.st_mtime_ns)
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
            raise DataError(f"{path}: not a readable .npz file ({str(err).splitlines()[0] if str(err) else 'corrupt'})"
                            ) from None
    if rows == 0:
        raise DataError(f"{path}: the client has no samples")
    return rows


def true_models_file(directory: Path, *, num_clients: int, dim: int, num_classes: int) -> np.ndarray | None:
    """local_true_model.npy memory-mapped, its shape checked (no row read); None if there is no such file."""
    path = directory / TRUE_MODELS
    if not path.is_file():
        return None
    try:
        stored = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{path}: not a readable .npy file ({str(err).splitlines()[0]})") from None
    if stored.ndim != 3 or stored.shape[1:] != (num_classes, dim) or stored.dtype.kind not in "fiu":
        raise DataError(f"{path}: shape {stored.shape} ({stored.dtype}) does not match the model: expected "
                        f"(m, {num_classes}, {dim}) numbers (m clients, data.num_classes, data.dim)")
    if stored.shape[0] < num_clients:
        raise DataError(f"{path}: holds {stored.shape[0]} true models, data.num_clients is {num_clients}")
    return stored


def true_model_rows(stored: np.ndarray, clients: Sequence[int] | range, directory: Path) -> np.ndarray:
    """W_k of `clients` from the memory-mapped file, (k, C, d) float64, checked finite."""
    if isinstance(clients, range):
        rows = np.array(stored[clients.start: clients.stop], dtype=np.float64)
    else:
        rows = np.array(stored[list(clients)], dtype=np.float64)
    if not np.isfinite(rows).all():
        raise DataError(f"{directory / TRUE_MODELS}: contains NaN or infinite values")
    return rows


def read_true_models(directory: Path, clients: range, *, num_clients: int, dim: int,
                     num_classes: int) -> np.ndarray | None:
    """W_k of `clients`, (k, C, d) float64, from local_true_model.npy; None if there is no such file."""
    stored = true_models_file(directory, num_clients=num_clients, dim=dim, num_classes=num_classes)
    return None if stored is None else true_model_rows(stored, clients, directory)


def feature_scale(features: np.ndarray) -> np.ndarray:
    """Per-feature population standard deviation (d,), 1 where a feature is constant: the
    reference code's StandardScaler(with_mean=False); features / scale is the scaled data."""
    scale = features.std(axis=0)
    scale[scale == 0] = 1.0
    return scale


# --- the CSV's lines, streamed, and its row count (the reader's and the memory estimate's) ------

_BLOCK_CHARS = 1 << 22  # text read and parsed at a time
_NEWLINE, _COMMENT = ord("\n"), ord("#")


def _csv_blocks(path: Path, *, dim: int) -> Iterator[tuple[int, str]]:
    """(number of its first line, text) of consecutive blocks of whole lines of a client CSV,
    with universal newlines (\\r\\n and \\r read as \\n). DataError before anything is read when
    the file is larger than CLIENT_CSV_MAX_BYTES, and as soon as a line is longer than
    data.dim + 1 numbers can be (so a file of one endless line costs one block, not its size)."""
    try:
        info = path.stat()
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or type(err).__name__})") from None
    if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block or never end
        raise DataError(f"{path}: not a regular file")
    size = info.st_size
    if size > CLIENT_CSV_MAX_BYTES:
        raise DataError(f"{path}: {format_bytes(size)}, more than the {format_bytes(CLIENT_CSV_MAX_BYTES)} a client "
                        f"CSV may hold; store this client as {path.stem}.npz (arrays X and y) instead")
    longest = (dim + 1) * CLIENT_CSV_MAX_FIELD_CHARS
    line, pending, total = 1, "", 0
    try:
        with open(path, encoding="utf-8", newline=None) as handle:
            while chunk := handle.read(_BLOCK_CHARS):
                total += len(chunk)
                if total > CLIENT_CSV_MAX_BYTES:
                    raise DataError(f"{path}: grew past {format_bytes(CLIENT_CSV_MAX_BYTES)} while it was read")
                text = pending + chunk
                cut = text.rfind("\n") + 1
                pending = text[cut:]
                if len(pending) > longest:
                    raise DataError(f"{path}: line {line + text.count(chr(10), 0, cut)} is longer than {longest} "
                                    f"characters, more than data.dim + 1 = {dim + 1} numbers take "
                                    f"({CLIENT_CSV_MAX_FIELD_CHARS} each); not a CSV table of numbers")
                if cut:
                    yield line, text[:cut]
                    line += text.count("\n", 0, cut)
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot be read as text ({type(err).__name__})") from None
    if pending:
        yield line, pending


def _rows_in_block(block: str) -> int:
    """The lines of `block` that are rows: not empty, not starting with '#' (np.loadtxt's rule)."""
    data = np.frombuffer(block.encode(), dtype=np.uint8)
    starts = np.flatnonzero(data == _NEWLINE) + 1
    starts = np.concatenate([[0], starts[starts < len(data)]])
    first = data[starts]
    return int(np.count_nonzero((first != _NEWLINE) & (first != _COMMENT)))


def csv_rows(path: Path, *, dim: int) -> int:
    """The samples a client CSV holds: the rows `_read_csv` reads, counted from the same blocks
    without parsing a number (0.2 s for a 94 MB file that takes 1.9 s to parse). DataError for a
    file the reader refuses before parsing (too large, a line too long, not UTF-8)."""
    try:
        info = path.stat()
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or type(err).__name__})") from None
    return _csv_rows(path, dim, info.st_size, info.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _csv_rows(path: Path, dim: int, size: int, mtime_ns: int) -> int:  # size, mtime: the cache key
    return sum(_rows_in_block(block) for _, block in _csv_blocks(path, dim=dim))


# --- sizes, read before loading (pfl_dist/resources.py) ----------------------------------------


def samples_at_least(path: Path, *, dim: int) -> int:
    """The samples a client file holds, without parsing it (0 when it cannot be read): X's row
    count from the .npz member's header; for CSV, `csv_rows`, the count the reader allocates.
    DataError for a CSV the reader refuses before parsing it (too large, a line too long)."""
    try:
        if path.suffix == ".npz":
            info = path.stat()
            return _npz_rows(path, info.st_size, info.st_mtime_ns)
        return csv_rows(path, dim=dim)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return 0


@functools.lru_cache(maxsize=4096)
def _npz_rows(path: Path, size: int, mtime_ns: int) -> int:  # size, mtime: the cache key
    with zipfile.ZipFile(path) as archive, archive.open("X.npy") as member:
        version = np.lib.format.read_magic(member)
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:
            return 0
        shape = readers[version](member)[0]
    return int(shape[0]) if len(shape) == 2 else 0
