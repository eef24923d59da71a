"""Bring-your-own data gone wrong: missing, corrupt or inconsistent client files, LEAF JSON,
CIFAR-10 batches and initial models. Each case is caught by the launcher's preflight before any
process starts: exactly one line naming the file and the problem, exit 2, nothing written."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from pfl_dist import launch, train
from pfl_dist.data.client_files import read_client, samples_at_least
from pfl_dist.errors import DataError
from tests.data_fixtures import write_cifar10, write_leaf, write_reference_csv_clients
from tests.hostile.hostile import assert_one_line, assert_unchanged, run_main, run_module, snapshot

CSV = ("data.kind=client_files", "data.num_clients=4", "train.num_rounds=1")


def _csv(tmp_path: Path) -> Path:
    return write_reference_csv_clients(tmp_path / "clients", num_clients=4, num_samples=6)


def _edit_line(path: Path, number: int, edit: Callable[[list[str]], list[str]]) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = ",".join(edit(lines[number - 1].split(",")))
    path.write_text("\n".join(lines) + "\n")


def _malicious(path: Path) -> None:
    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("touch /tmp/pwned-by-cifar",))

    path.write_bytes(pickle.dumps({b"data": Exploit(), b"labels": []}))


# case -> (what to do to a good fixture, the text the one line must hold)
CLIENT_CASES: dict[str, tuple[Callable[[Path], object], list[str]]] = {
    "missing file": (lambda d: (d / "3_client_data.csv").unlink(), ["3_client_data.csv", "file not found"]),
    "wrong column count": (lambda d: _edit_line(d / "2_client_data.csv", 4, lambda f: f[1:]),
                           ["2_client_data.csv", "line 4 has 10 columns, expected 11"]),
    "not a number": (lambda d: _edit_line(d / "2_client_data.csv", 2, lambda f: ["abc", *f[1:]]),
                     ["2_client_data.csv", "line 2, column 1: 'abc' is not a number"]),
    "label out of range": (lambda d: _edit_line(d / "4_client_data.csv", 5, lambda f: [*f[:-1], "2.0"]),
                           ["4_client_data.csv", "line 5: label 2 is not a class in 0..1"]),
    "fractional label": (lambda d: _edit_line(d / "1_client_data.csv", 1, lambda f: [*f[:-1], "0.5"]),
                         ["1_client_data.csv", "label 0.5 is not a class"]),
    "non-finite feature": (lambda d: _edit_line(d / "1_client_data.csv", 3, lambda f: ["nan", *f[1:]]),
                           ["1_client_data.csv", "line 3 holds a NaN"]),
    "client with no samples": (lambda d: (d / "2_client_data.csv").write_text(""),
                               ["2_client_data.csv", "the client has no samples"]),
    "true models of another shape": (lambda d: np.save(d / "local_true_model.npy", np.zeros((4, 3, 10))),
                                     ["local_true_model.npy", "shape (4, 3, 10)", "does not match the model"]),
    "too few true models": (lambda d: np.save(d / "local_true_model.npy", np.zeros((3, 2, 10))),
                            ["local_true_model.npy", "holds 3 true models, data.num_clients is 4"]),
    "corrupt npz": (lambda d: [(d / f"{k}_client_data.csv").unlink() for k in range(1, 5)]
                    + [(d / "1_client_data.npz").write_bytes(b"PK\x03\x04 broken")],
                    ["1_client_data.npz", "not a readable .npz file"]),
}


@pytest.mark.parametrize("case", list(CLIENT_CASES))
def test_client_files(tmp_path: Path, case: str) -> None:
    directory = _csv(tmp_path)
    damage, expected = CLIENT_CASES[case]
    damage(directory)
    before = snapshot(tmp_path)
    outcome = run_main(launch.main, [*CSV, f"data.data_dir={directory}", f"run.out_dir={tmp_path / 'runs'}"])
    assert_one_line(outcome, code=2, contains=expected)
    assert_unchanged(before, tmp_path)


def test_missing_directory_and_unset_directory(tmp_path: Path) -> None:
    outcome = run_main(launch.main, [*CSV, f"data.data_dir={tmp_path / 'nowhere'}"])
    assert_one_line(outcome, code=2, contains=["nowhere", "no such directory"])
    outcome = run_main(launch.main, list(CSV))
    assert_one_line(outcome, code=2, contains="data.kind client_files needs data.data_dir")


@pytest.mark.parametrize(("content", "expected"), [
    (np.zeros((2, 10)), ["init.npy", "shape (2, 10) does not match the model (weight (10, 2))"]),
    (np.zeros(21), ["init.npy", "expected a flat array of 20 values or a weight matrix (10, 2)"]),
])
def test_init_file_that_does_not_match_the_model(tmp_path: Path, content: np.ndarray, expected: list[str]) -> None:
    directory = _csv(tmp_path)
    np.save(tmp_path / "init.npy", content)
    before = snapshot(tmp_path)
    outcome = run_main(launch.main, [*CSV, f"data.data_dir={directory}", f"model.init_file={tmp_path / 'init.npy'}",
                                     f"run.out_dir={tmp_path / 'runs'}"])
    assert_one_line(outcome, code=2, contains=["model.init_file", *expected])
    assert_unchanged(before, tmp_path)


def test_a_rank_stops_on_its_bad_file_without_leaving_a_run(tmp_path: Path) -> None:
    # pfl_dist.train itself (no launcher preflight): the task's own reading fails on one rank.
    directory = _csv(tmp_path)
    _edit_line(directory / "3_client_data.csv", 2, lambda f: [*f[:-1], "7.0"])
    outcome = run_main(train.main, [*CSV, f"data.data_dir={directory}", f"run.out_dir={tmp_path / 'runs'}",
                                    "run.name=bad"])
    assert_one_line(outcome, code=2, contains=["3_client_data.csv", "label 7 is not a class"])
    assert not (tmp_path / "runs" / "bad" / "summary.json").exists()


LEAF = ("data.kind=leaf", "data.num_clients=5", "train.num_rounds=1")


def _json_edit(path: Path, edit: Callable[[dict], None]) -> None:  # type: ignore[type-arg]
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _first_user(doc: dict) -> dict:  # type: ignore[type-arg]
    return doc["user_data"][doc["users"][0]]  # type: ignore[no-any-return]


TRAIN0 = "train/all_data_0_niid_0_keep_0_train_9.json"
LEAF_CASES: dict[str, tuple[Callable[[Path], object], list[str]]] = {
    "no test folder": (lambda d: [p.unlink() for p in (d / "test").iterdir()] + [(d / "test").rmdir()],
                       ["test", "no such directory"]),
    "invalid json": (lambda d: (d / TRAIN0).write_text("{\"users\": [1,"), [TRAIN0, "not valid JSON (line 1"]),
    "count mismatch": (lambda d: _json_edit(d / TRAIN0, lambda doc: doc["num_samples"].__setitem__(0, 99)),
                       [TRAIN0, "num_samples says 99"]),
    "wrong image size": (lambda d: _json_edit(d / TRAIN0, lambda doc: _first_user(doc).__setitem__(
        "x", [row[:100] for row in _first_user(doc)["x"]])), [TRAIN0, "samples have 100 values, FEMNIST's have 784"]),
    "label out of range": (lambda d: _json_edit(d / TRAIN0, lambda doc: _first_user(doc)["y"].__setitem__(0, 62)),
                           [TRAIN0, "label 62 is not a class in 0..61"]),
    "not leaf": (lambda d: (d / TRAIN0).write_text("[1, 2]"), [TRAIN0, "not a LEAF file"]),
    # valid JSON of 400 KB: an uncaught RecursionError from json.loads before
    "nested 200,000 deep": (lambda d: (d / TRAIN0).write_text("[" * 200_000 + "]" * 200_000),
                            [TRAIN0, "not a LEAF file: its JSON nests deeper than"]),
}


@pytest.mark.parametrize("case", list(LEAF_CASES))
def test_leaf(tmp_path: Path, case: str) -> None:
    write_leaf(tmp_path / "leaf", num_writers=25, num_files=3)
    damage, expected = LEAF_CASES[case]
    damage(tmp_path / "leaf")
    before = snapshot(tmp_path)
    outcome = run_main(launch.main, [*LEAF, f"data.data_dir={tmp_path / 'leaf'}", f"run.out_dir={tmp_path / 'runs'}"])
    assert_one_line(outcome, code=2, contains=expected)
    assert_unchanged(before, tmp_path)


def test_a_rank_stops_on_leaf_json_nested_too_deep(tmp_path: Path, results: Path) -> None:
    # pfl_dist.train itself (no launcher preflight): every rank parses the LEAF files; the
    # finished run it would replace (--overwrite) stays as it was.
    write_leaf(tmp_path / "leaf", num_writers=25, num_files=3)
    (tmp_path / "leaf" / TRAIN0).write_text('{"users": ' + "[" * 200_000 + "]" * 200_000 + "}")
    before = snapshot(results)
    outcome = run_main(train.main, [*LEAF, f"data.data_dir={tmp_path / 'leaf'}", f"run.out_dir={results / 'out'}",
                                    "run.name=prev", "--overwrite"])
    assert_one_line(outcome, code=2, contains=[TRAIN0, "nests deeper than"])
    assert_unchanged(before, results)


def test_leaf_with_too_few_writers(tmp_path: Path) -> None:
    write_leaf(tmp_path / "leaf", num_writers=25, num_files=3)
    outcome = run_main(launch.main, ["data.kind=leaf", "data.num_clients=20", "data.min_samples_per_client=10",
                                     f"data.data_dir={tmp_path / 'leaf'}"])
    assert_one_line(outcome, code=2, contains=["writers have >= 10 training samples", "asks for 20"])


CIFAR_CASES: dict[str, tuple[Callable[[Path], object], list[str]]] = {
    "missing batch": (lambda d: (d / "data_batch_3").unlink(), ["data_batch_3", "file not found"]),
    "random bytes": (lambda d: (d / "data_batch_2").write_bytes(os.urandom(300)), ["data_batch_2", "not a CIFAR-10"]),
    "truncated": (lambda d: (d / "test_batch").write_bytes((d / "test_batch").read_bytes()[:5000]),
                  ["test_batch", "not a CIFAR-10 batch"]),
    "wrong image size": (lambda d: (d / "data_batch_1").write_bytes(pickle.dumps(
        {b"data": np.zeros((4, 784), np.uint8), b"labels": [0, 1, 2, 3]})),
        ["data_batch_1", "'data' is uint8 of shape (4, 784), expected uint8 (N, 3072)"]),
    "label out of range": (lambda d: (d / "data_batch_5").write_bytes(pickle.dumps(
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 10]})), ["data_batch_5", "label 10 of image 1"]),
    "code in the pickle": (lambda d: _malicious(d / "data_batch_4"),
                           ["data_batch_4", "refusing to load posix.system"]),
}


@pytest.mark.parametrize("case", list(CIFAR_CASES))
def test_cifar10(tmp_path: Path, case: str) -> None:
    write_cifar10(tmp_path / "cifar", per_batch=20, test=20)
    damage, expected = CIFAR_CASES[case]
    damage(tmp_path / "cifar")
    before = snapshot(tmp_path)
    outcome = run_main(launch.main, ["data.kind=cifar10", "data.num_clients=2", "data.num_partitions=4",
                                     f"data.data_dir={tmp_path / 'cifar'}", f"run.out_dir={tmp_path / 'runs'}"])
    assert_one_line(outcome, code=2, contains=expected)
    assert_unchanged(before, tmp_path)
    assert not Path("/tmp/pwned-by-cifar").exists()


def test_cnn_init_file_for_another_dataset(tmp_path: Path) -> None:
    # A CNN saved for 28x28 MNIST does not start a CIFAR-10 run.
    from pfl_dist.models.cnn import CNNModel

    write_cifar10(tmp_path / "cifar", per_batch=20, test=20)
    mnist = CNNModel(10)
    torch.save(mnist.state_dict(mnist.init_params(0, dtype=torch.float32)), tmp_path / "mnist.pt")
    outcome = run_main(launch.main, ["data.kind=cifar10", "data.num_clients=2", "data.num_partitions=4",
                                     "data.partition=iid", f"data.data_dir={tmp_path / 'cifar'}", "model.kind=cnn",
                                     "algorithm.local_lr=0.05", "algorithm.global_lr=1/lam",
                                     f"model.init_file={tmp_path / 'mnist.pt'}"])
    assert_one_line(outcome, code=2, contains=["mnist.pt", "conv1.weight has shape (32, 1, 3, 3), "
                                               "the model's is (32, 3, 3, 3)"])


# --- client files of any size (issue 22) -------------------------------------------------------

GIB = 1 << 30


def _sparse(path: Path, size: int) -> None:
    """`truncate -s SIZE PATH` on a new file: SIZE zero bytes that take no disk space."""
    path.unlink(missing_ok=True)
    with open(path, "wb") as handle:
        handle.truncate(size)


@pytest.mark.parametrize("entry", [["pfl_dist.train"], ["pfl_dist.launch", "--nproc-per-node=2"]],
                         ids=["train", "launch"])
def test_a_2_gib_client_csv_under_ulimit_v_is_one_line(tmp_path: Path, results: Path, entry: list[str]) -> None:
    """Read whole, it was a MemoryError traceback after 50 s (trainer) and 20 s (the launcher's
    check), and the memory estimate counted 0 rows in it. Its size refuses it before it is read
    (RELIABILITY.md has the seconds); the process boundary is the point: `ulimit -v 6000000`."""
    directory = _csv(tmp_path)
    _sparse(directory / "2_client_data.csv", 2 * GIB)
    before = snapshot(results)
    outcome = run_module(*entry, *CSV, f"data.data_dir={directory}", f"run.out_dir={results / 'out'}",
                         ulimit_v_kib=6_000_000, timeout=300)
    assert_one_line(outcome, code=2, contains=["2_client_data.csv: 2.15 GB, more than the 1.07 GB a client CSV "
                                               "may hold", "2_client_data.npz"])
    assert_unchanged(before, results)


def test_a_client_csv_of_one_endless_line_is_refused_at_its_first_block(tmp_path: Path) -> None:
    """Below the size bound, 64 MiB of zero bytes are one line: refused once the line outgrows
    data.dim + 1 numbers, holding one block of text (it was read whole: 128 MB of text and lines)."""
    directory = _csv(tmp_path)
    _sparse(directory / "3_client_data.csv", 64 << 20)
    outcome = run_main(launch.main, [*CSV, f"data.data_dir={directory}", f"run.out_dir={tmp_path / 'runs'}"])
    assert_one_line(outcome, code=2, contains=["3_client_data.csv: line 1 is longer than 1408 characters",
                                               "data.dim + 1 = 11 numbers"])
    assert not (tmp_path / "runs").exists()
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="line 1 is longer"):
            read_client(directory, 2, fmt="csv", dim=10, num_classes=2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, peak


# Rows the old estimate did not count (it counted lines that start with a digit, sign or point,
# split at \\n only): space-led rows counted 0 samples, a file with CR line ends 1.
LAYOUTS = {
    "space-led rows": lambda rows: "# x\n\n" + "".join(f" {row}\n" for row in rows),
    "CR line ends": lambda rows: "\r".join(rows),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_estimate_counts_the_samples_the_reader_reads(tmp_path: Path, layout: str) -> None:
    rows = [",".join(f"{v:.3f}" for v in (*np.linspace(-1, 1, 10) * k, k % 2)) for k in range(1, 8)]
    path = tmp_path / "1_client_data.csv"
    path.write_text(LAYOUTS[layout](rows), newline="")
    arrays = read_client(tmp_path, 0, fmt="csv", dim=10, num_classes=2)
    assert len(arrays.labels) == samples_at_least(path, dim=10) == 7


def _fifo(path: Path) -> None:
    path.unlink(missing_ok=True)
    os.mkfifo(path)


FIFOS: dict[str, tuple[Callable[[Path], Path], list[str], str]] = {
    "client csv": (lambda d: _csv(d) / "2_client_data.csv", list(CSV), "data.data_dir={}"),
    "leaf json": (lambda d: (write_leaf(d / "leaf", num_writers=25, num_files=3), d / "leaf" / TRAIN0)[1], list(LEAF),
                  "data.data_dir={}/leaf"),
    "cifar batch": (lambda d: (write_cifar10(d / "cifar", per_batch=20, test=20), d / "cifar" / "data_batch_2")[1],
                    ["data.kind=cifar10", "data.num_clients=2", "data.num_partitions=4"], "data.data_dir={}/cifar"),
}


class Hung(BaseException):
    """Raised by `hang_guard`; not an OSError (TimeoutError is one), so no `except OSError` takes it."""


@contextlib.contextmanager
def hang_guard(seconds: int) -> Iterator[None]:
    """SIGALRM interrupts a call blocked in open() or read() (PEP 475: the handler's exception ends it)."""
    def expired(signum: int, frame: object) -> None:
        raise Hung(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("kind", list(FIFOS))
def test_a_fifo_in_place_of_a_data_file_is_one_line_not_a_hang(tmp_path: Path, kind: str) -> None:
    """A named pipe where a data file goes blocked the launcher for ever (hashing it, counting
    its samples, reading it)."""
    make, args, data_dir = FIFOS[kind]
    path = make(tmp_path)
    _fifo(path)
    directory = data_dir.format(tmp_path if kind != "client csv" else path.parent)
    with hang_guard(60):
        outcome = run_main(launch.main, [*args, directory, f"run.out_dir={tmp_path / 'runs'}"])
    assert_one_line(outcome, code=2, contains=[path.name, "not a regular file"])
    assert not (tmp_path / "runs").exists()
