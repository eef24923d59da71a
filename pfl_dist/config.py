"""Typed experiment config: one frozen dataclass per section, YAML + dotted overrides.

Precedence is CLI override > YAML file > dataclass default. Every key is checked when the
config is built: unknown keys, wrong types and out-of-range values raise `ConfigError` with
the dotted key in the message ("algorithm.lam must be >= 0, got -1.0").

Hostile input is bounded here (docs/RELIABILITY.md, "Hostile input and damaged files"): YAML files and
override values are read by `StrictLoader`, which refuses aliases (an alias bomb expands exponentially)
and duplicate keys (a silent winner), files are at most MAX_YAML_BYTES, `run.name` is one safe
path component, and every count, size, seed and timeout has an upper bound (the MAX_* constants), so a
typo such as `train.num_rounds=1e20` fails here in one line instead of overflowing downstream.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from pfl_dist.errors import ConfigError
from pfl_dist.exchange.spec import recorded_codec
from pfl_dist.inputs import Inputs, fingerprint
from pfl_dist.methods import check_params, method_info
from pfl_dist.models import check_kind

Auto = Literal["auto"]


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key} {message}")


# Upper bounds for values that overflow or exhaust something downstream (inclusive).
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit integer
MAX_ROUNDS = 10**6  # the resume vote is one byte per round
MAX_COUNT = 10**9  # clients, samples, partitions, steps, epochs, batch size, dim: memory decides first
MAX_CLASSES = 10**6
MAX_MAGNITUDE = 1e6  # data.R and data.center_scale: 1e300 turns the synthetic data into inf
TIMEOUT_RANGE_S = (1.0, 7 * 24 * 3600.0)  # below 1 s every collective times out; timedelta overflows
MAX_NAME_BYTES = 255  # a file name on Linux file systems
MAX_PATH_BYTES = 4095  # Linux's PATH_MAX (4096) without the final NUL: the longest path a system call takes
MAX_CACHE_MB = 2**30  # store.cache_mb: a PiB; memory decides first
# run.out_dir leaves room for what is written below it: the run dir's name (run.name or a sweep
# point's name, up to 255 bytes, in a sweep also as replaced/<name>.<hash8>.N) and the run's files
# (.replaced/ckpt/round_000012/.shard_00001_of_00004.json.tmp, event files named after the host):
# under 512 bytes in all.
MAX_OUT_DIR_BYTES = MAX_PATH_BYTES - 512


def _require_range(value: float, key: str, low: float, high: float) -> None:
    _require(low <= value <= high, key, f"must be in [{low:g}, {high:g}], got {value:g}")


def check_path_component(name: str, key: str) -> None:
    """`name` is one folder name: not '', '.' or '..'; no '/', NUL or control characters; at most
    255 bytes. Anything else would escape the parent folder or fail in the file system."""
    shown = repr(name if len(name) <= 60 else name[:60] + "...")
    ok = name not in ("", ".", "..") and "/" not in name and name.isprintable()
    _require(ok, key, f"must be a single folder name (not '.' or '..', no '/', NUL or control characters), "
             f"got {shown}")
    size = len(os.fsencode(name))
    _require(size <= MAX_NAME_BYTES, key, f"must be at most {MAX_NAME_BYTES} bytes, got {size} bytes ({shown})")


def check_path_text(path: str, key: str, *, max_bytes: int = MAX_PATH_BYTES) -> None:
    """No NUL; no folder or file name longer than 255 bytes and at most `max_bytes` in all, which
    the kernel would refuse (ENAMETOOLONG) wherever the path is first used."""
    _require("\0" not in path, key, "must not contain a NUL character")
    shown = repr(path if len(path) <= 60 else path[:60] + "...")
    longest = max((len(os.fsencode(part)) for part in path.split("/")), default=0)
    _require(longest <= MAX_NAME_BYTES, key, f"must not hold a folder or file name longer than {MAX_NAME_BYTES} "
             f"bytes, got one of {longest} bytes ({shown})")
    size = len(os.fsencode(path))
    _require(size <= max_bytes, key, f"must be a path of at most {max_bytes} bytes, got {size} bytes ({shown})")


@dataclass(frozen=True)
class RunConfig:
    # run directory name below out_dir; auto = <method>-<hash of the result-relevant config>
    name: str = "auto"
    out_dir: str = "runs"  # parent folder of run directories
    seed: int = 0  # seeds data, model init and client sampling
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when available

    def __post_init__(self) -> None:
        check_path_component(self.name, "run.name")
        check_path_text(self.out_dir, "run.out_dir", max_bytes=MAX_OUT_DIR_BYTES)
        _require(0 <= self.seed <= MAX_SEED, "run.seed", f"must be in [0, 2**63 - 1], got {self.seed}")


@dataclass(frozen=True)
class DataConfig:
    kind: str = "synthetic"  # the task (pfl_dist/tasks registry): synthetic, fashion_mnist, mnist, mnist5k,
    # cifar10, leaf, client_files, or a plug-in "package.module:factory" (factory(**data.params) returns
    # a federated dataset; pfl_dist/tasks/dataset.py)
    num_clients: int = 4  # m, the number of clients taking part
    samples_per_client: int = 200  # n (synthetic)
    dim: int = 10  # d (synthetic)
    num_classes: int = 2  # C (synthetic)
    R: float = 1.0  # heterogeneity: std of the clients' true models (synthetic)
    # synthetic: std of a centre W_0 shared by all true models (W_k = W_0 + R Z_k); 0 = the paper's
    # generator, whose data does not depend on R (docs/RESULTS.md §1b)
    center_scale: float = 0.0
    # the data folder: IDX files (images), CIFAR-10 batches, LEAF train/ and test/, or client files;
    # None = the kind's default (cifar10, leaf and client_files have none: they need it)
    data_dir: str | None = None
    download: bool = False  # images: download missing files (needs a network)
    partition: Literal["classes", "dirichlet", "iid"] = "classes"  # images
    # images: clients partitioned before num_clients are drawn; auto = 200 images per client
    num_partitions: int | Auto = "auto"
    classes_per_client: int = 2  # images, partition=classes
    alpha: float = 0.5  # images, partition=dirichlet
    # per-client held-out test split, drawn from (seed, client); auto = 0.1 for the image data sets
    # (the paper's 90/10), none for client_files (every row trains; its metrics are train/...)
    test_fraction: float | Auto = "auto"
    # images and client_files: the fraction of each client's training rows (what the test split left) held out as
    # its validation rows, drawn from (seed, client) like the test split: never trained on, measured
    # as val/... (acc_personal, loss_personal) beside eval/...; 0 = none (every training row trains)
    val_fraction: float = 0.0
    # client_files: divide each client's features by their standard deviation (no centring);
    # auto = on for CSV files (the reference code's StandardScaler(with_mean=False)), off for NPZ
    scale_features: bool | Auto = "auto"
    min_samples_per_client: int = 1  # leaf: writers with fewer training samples are left out
    # a plug-in dataset's keyword arguments (factory(**params)); they enter the run identity
    params: dict[str, Any] = field(default_factory=dict)
    # synthetic, client_files, the image kinds and plug-in datasets with client_size(i): make
    # (generate / read / gather / client(i)) a client's data when it is sampled or
    # evaluated, through a bounded LRU, instead of every client at start-up (pfl_dist/data/lazy.py);
    # the same numbers bit for bit, so not part of the run identity. auto = lazy from
    # data.lazy.LAZY_FROM clients on, when the evaluation is on a cohort (train.eval_clients); true
    # needs such a cohort
    lazy: bool | Auto = "auto"

    def __post_init__(self) -> None:
        bad = [key for key in self.params if not isinstance(key, str) or not key.isidentifier()]
        _require(not bad, "data.params", f"keys must be Python identifiers (the factory's keyword arguments), "
                 f"got {bad[0] if bad else None!r}")
        _require(self.min_samples_per_client >= 1, "data.min_samples_per_client",
                 f"must be >= 1, got {self.min_samples_per_client}")
        _require(self.num_partitions == "auto" or self.num_partitions >= 1, "data.num_partitions",
                 f"must be >= 1 or 'auto', got {self.num_partitions}")
        _require(self.num_partitions == "auto" or self.num_partitions <= MAX_COUNT, "data.num_partitions",
                 f"must be at most {MAX_COUNT}, got {self.num_partitions}")
        for key in ("num_clients", "samples_per_client", "dim"):
            value = getattr(self, key)
            _require(value >= 1, f"data.{key}", f"must be >= 1, got {value}")
            _require(value <= MAX_COUNT, f"data.{key}", f"must be at most {MAX_COUNT}, got {value}")
        _require(2 <= self.num_classes <= MAX_CLASSES, "data.num_classes",
                 f"must be in [2, {MAX_CLASSES}], got {self.num_classes}")
        _require(self.R >= 0, "data.R", f"must be >= 0, got {self.R}")
        _require(self.center_scale >= 0, "data.center_scale", f"must be >= 0, got {self.center_scale}")
        _require_range(self.R, "data.R", 0, MAX_MAGNITUDE)
        _require_range(self.center_scale, "data.center_scale", 0, MAX_MAGNITUDE)
        if self.data_dir is not None:
            check_path_text(self.data_dir, "data.data_dir")
        _require(1 <= self.classes_per_client <= 10, "data.classes_per_client",
                 f"must be in 1..10, got {self.classes_per_client}")
        _require(self.alpha > 0, "data.alpha", f"must be > 0, got {self.alpha}")
        _require(self.test_fraction == "auto" or 0 < self.test_fraction < 1, "data.test_fraction",
                 f"must be in (0, 1) or 'auto', got {self.test_fraction}")
        _require(0 <= self.val_fraction < 1, "data.val_fraction",
                 f"must be in [0, 1) (0 = no validation rows), got {self.val_fraction}")

    @property
    def held_out_fraction(self) -> float:
        """test_fraction with auto resolved: 0.1 for images, 0.0 (no split) for client_files."""
        if self.test_fraction != "auto":
            return self.test_fraction
        return 0.0 if self.kind == "client_files" else 0.1


@dataclass(frozen=True)
class ModelConfig:
    # linear, logreg, cnn or a plug-in "package.module:factory" (factory(input_shape, num_classes)
    # -> torch.nn.Module; pfl_dist/models/__init__.py); auto: linear softmax without bias for
    # synthetic data (the paper's), logreg for images
    kind: str = "auto"
    # the initial global model: .npy ((d, C) or flat, linear models) or .pt (named tensors, e.g. a
    # run's final/global.pt); null = the task's seeded initialisation
    init_file: str | None = None
    # a plug-in model's head for FedRep and FedPer: the prefix of its head's parameter names (e.g.
    # "fc2."); null = no body/head split
    head: str | None = None

    def __post_init__(self) -> None:
        check_kind(self.kind)
        _require(self.head is None or self.head != "", "model.head",
                 "must be a parameter-name prefix such as 'fc2.', or null")
        if self.init_file is not None:
            check_path_text(self.init_file, "model.init_file")
        _require(self.init_file is None or Path(self.init_file).suffix in (".npy", ".pt"), "model.init_file",
                 f"must name a .npy or .pt file, got {self.init_file!r}")


def method_uses_lam(name: str) -> bool:
    """Whether algorithm.lam enters the method's updates (pfl_dist/methods.py: FedCLUP's,
    FedProx's, pFedMe's and Ditto's proximal terms). FedAvg, LocalTrain and the others ignore it."""
    return method_info(name).uses_lam


@dataclass(frozen=True)
class AlgorithmConfig:
    # a built-in (pfl_dist/methods.py METHODS) or a plug-in 'package.module:Class' subclassing
    # pfl_dist.algorithms.Algorithm (docs/EXTENDING.md)
    name: str = "fedclup"
    lam: float | Auto = 0.5  # degree of personalization lambda; auto = the paper's rule (fedclup)
    lam_auto_c: float = 5.0  # lam=auto: the rule's constant c
    lam_auto_warmup: float = 0.2  # lam=auto: fraction of rounds run before R_hat is estimated
    lam_auto_init: float = 1.0  # lam=auto: lambda used during the warm-up rounds
    # lam=auto: re-estimate R_hat under the lambda in force and choose again every warm-up period
    # (rounds w, 2w, ... before the last); false = choose once, after the warm-up
    lam_auto_refresh: bool = True
    local_lr: float | Auto = "auto"  # eta; auto = 1/(L + lam)
    # gamma (fedclup); auto = 1/lam + 1/L; '1/lam' = plain averaging (the paper's image runs)
    global_lr: float | Literal["auto", "1/lam"] = "auto"
    smoothness: float | Auto = "auto"  # L; auto = max_i lambda_max(X_i^T X_i)/(4 n_i)
    num_local_steps: int = 150  # K full-batch GD steps (when batch_size is null)
    local_epochs: int = 5  # E epochs of minibatch SGD (when batch_size is set)
    batch_size: int | None = None  # null = full-batch gradient descent
    sample_fraction: float = 1.0  # C, fraction of clients sampled per round
    # how the server weighs the sampled clients' messages in its means: samples = n_i / sum_S n_j,
    # uniform = 1/|S|; auto = the method's paper: uniform for scaffold (Karimireddy et al. 2020,
    # Algorithm 1), samples for every other method
    client_weights: Literal["auto", "samples", "uniform"] = "auto"
    # The personalized-FL family (pfl_dist/algorithms/; each class's docstring has its rule):
    # personal_lr: pFedMe's inner-solve step, Ditto's and APFL's personal-model step, Per-FedAvg's
    # alpha, FedRep's head step, FedAvg-FT's fine-tuning step. auto = a stable step for the
    # method's own personal objective, with L = 1/local_lr (= algorithm.smoothness's L under
    # local_lr auto): Ditto 1/(L + lam), its proximal personal objective; pFedMe 1/(L + lam) with
    # L = algorithm.smoothness (its local_lr steps the envelope, not f_i); the others 1/L (=
    # local_lr), their personal step being on f_i alone
    personal_lr: float | Auto = "auto"
    personal_epochs: int = 1  # Ditto's personal, FedRep's head, FedAvg-FT's fine-tuning passes
    inner_steps: int = 5  # pFedMe: K steps of the inner Moreau-envelope solve per batch
    # pFedMe: start each round's inner solve from the client's previous personalized model theta_i;
    # false = from w_g, as the authors' code does (every round sets theta_i and w_i to w_g)
    inner_warm_start: bool = False
    beta: float = 1.0  # pFedMe's server mixing beta; SCAFFOLD's global step size eta_g
    alpha: float = 0.5  # APFL: the initial mixing weight alpha_i (adapted with local_lr)
    # a plug-in algorithm's own settings (its MethodInfo.params declares names, defaults, types);
    # stored with every declared default filled in, so they enter the run identity
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", check_params(method_info(self.name), self.params))
        _require(self.lam == "auto" or self.lam >= 0, "algorithm.lam", f"must be >= 0 or 'auto', got {self.lam}")
        _require(self.lam != "auto" or self.name == "fedclup", "algorithm.lam",
                 f"'auto' is only defined for fedclup, not {self.name}")
        _require(self.lam_auto_c > 0, "algorithm.lam_auto_c", f"must be > 0, got {self.lam_auto_c}")
        _require(0 < self.lam_auto_warmup < 1, "algorithm.lam_auto_warmup",
                 f"must be in (0, 1), got {self.lam_auto_warmup}")
        _require(self.lam_auto_init > 0, "algorithm.lam_auto_init", f"must be > 0, got {self.lam_auto_init}")
        for key in ("local_lr", "global_lr", "smoothness", "personal_lr"):
            value = getattr(self, key)
            _require(isinstance(value, str) or value > 0, f"algorithm.{key}", f"must be > 0 or 'auto', got {value}")
        for key in ("num_local_steps", "local_epochs", "batch_size"):
            value = getattr(self, key)
            _require(value is None or value <= MAX_COUNT, f"algorithm.{key}",
                     f"must be at most {MAX_COUNT}, got {value}")
        _require(self.num_local_steps >= 1, "algorithm.num_local_steps",
                 f"must be >= 1, got {self.num_local_steps}")
        _require(self.local_epochs >= 1, "algorithm.local_epochs", f"must be >= 1, got {self.local_epochs}")
        _require(self.batch_size is None or self.batch_size >= 1, "algorithm.batch_size",
                 f"must be >= 1 or null, got {self.batch_size}")
        _require(self.personal_epochs >= 1, "algorithm.personal_epochs", f"must be >= 1, got {self.personal_epochs}")
        _require(self.inner_steps >= 1, "algorithm.inner_steps", f"must be >= 1, got {self.inner_steps}")
        _require(self.beta > 0, "algorithm.beta", f"must be > 0, got {self.beta}")
        _require(0 <= self.alpha <= 1, "algorithm.alpha", f"must be in [0, 1], got {self.alpha}")
        _require(0 < self.sample_fraction <= 1, "algorithm.sample_fraction",
                 f"must be in (0, 1], got {self.sample_fraction}")
        _require(not (self.name == "fedclup" and self.lam == 0 and not isinstance(self.global_lr, str)),
                 "algorithm.global_lr", "must be 'auto' or '1/lam' when algorithm.lam is 0 (gamma = 1/lam)")


@dataclass(frozen=True)
class TrainConfig:
    num_rounds: int = 50
    eval_every: int = 5  # evaluate (one extra collective) every this many rounds, and at the end
    dtype: Literal["float32", "float64"] = "float32"
    # which clients an evaluation measures: all; N >= 2, a fixed seeded cohort of N clients (every
    # client when N >= data.num_clients), whose metrics carry a standard error (<metric>_se); auto =
    # all up to sampling.EVAL_ALL_UP_TO clients, a cohort of sampling.AUTO_COHORT above
    eval_clients: int | Literal["all", "auto"] = "auto"

    def __post_init__(self) -> None:
        _require(self.num_rounds >= 1, "train.num_rounds", f"must be >= 1, got {self.num_rounds}")
        _require(self.num_rounds <= MAX_ROUNDS, "train.num_rounds",
                 f"must be at most {MAX_ROUNDS}, got {self.num_rounds}")
        _require(self.eval_every >= 1, "train.eval_every", f"must be >= 1, got {self.eval_every}")
        _require(self.eval_every <= MAX_ROUNDS, "train.eval_every",
                 f"must be at most {MAX_ROUNDS}, got {self.eval_every}")
        if isinstance(self.eval_clients, int):
            _require(2 <= self.eval_clients <= MAX_COUNT, "train.eval_clients",
                     f"must be 'all', 'auto' or a number of clients in [2, {MAX_COUNT}] (a standard error needs "
                     f"two clients), got {self.eval_clients}")


@dataclass(frozen=True)
class CommConfig:
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto = nccl on cuda, gloo on cpu
    # init_process_group and collective timeout: a hung peer ends the job after this (a dead one
    # at once). Waiting for missing nodes is torchrun's --rdzv-conf=join_timeout.
    timeout_s: float = 300.0
    # what a client's update is encoded as on the wire (pfl_dist/exchange/): none (the dense
    # model, as float32/float64), fp16, bf16, qsgd:LEVELS[:BUCKET], topk:FRACTION, randk:FRACTION,
    # powersgd:RANK; a codec without its parameter takes the default (qsgd:4:512, topk:0.01, ...);
    # qsgd is recorded with its bucket written out (pfl_dist/exchange/spec.py `spelled_out`)
    codec: str = "none"
    # what the clients receive of the server's model (pfl_dist/exchange/downlink.py): the same
    # codecs and strings as `codec`, applied to the change since the last broadcast model; none =
    # the dense model, as before the key existed (left out of the run identity at none)
    downlink_codec: str = "none"

    def __post_init__(self) -> None:
        _require(self.timeout_s > 0, "comm.timeout_s", f"must be > 0, got {self.timeout_s}")
        for key in ("codec", "downlink_codec"):
            try:  # qsgd:4 -> qsgd:4:512
                object.__setattr__(self, key, recorded_codec(getattr(self, key), key=f"comm.{key}"))
            except ValueError as err:
                raise ConfigError(str(err)) from None
        _require_range(self.timeout_s, "comm.timeout_s", *TIMEOUT_RANGE_S)


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 0  # rounds between checkpoints; 0 = only the one written on SIGTERM/SIGINT
    keep: int = 2  # complete checkpoints kept, besides the one being written (pfl_dist/checkpoint.py)

    def __post_init__(self) -> None:
        _require(self.every >= 0, "checkpoint.every", f"must be >= 0, got {self.every}")
        _require(self.keep >= 1, "checkpoint.keep", f"must be >= 1, got {self.keep}")
        _require(self.every <= MAX_ROUNDS, "checkpoint.every", f"must be at most {MAX_ROUNDS}, got {self.every}")
        _require(self.keep <= MAX_ROUNDS, "checkpoint.keep", f"must be at most {MAX_ROUNDS}, got {self.keep}")


@dataclass(frozen=True)
class StoreConfig:
    # where the per-client rows live (pfl_dist/store.py): dense = every client's rows in memory; lazy =
    # only written rows, the most recently written in a RAM cache of cache_mb, the others spilled to
    # <run_dir>/store/; auto = dense when it fits comfortably in memory (pfl_dist/resources.py
    # `store_backend`). No part of the run identity: the back-ends agree to rounding
    backend: Literal["auto", "dense", "lazy"] = "auto"
    cache_mb: float = 256.0  # lazy: the RAM cache's bound, in MiB (2**20 bytes)

    def __post_init__(self) -> None:
        _require(0 < self.cache_mb <= MAX_CACHE_MB, "store.cache_mb",
                 f"must be in (0, {MAX_CACHE_MB}] MiB, got {self.cache_mb:g}")


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    comm: CommConfig = field(default_factory=CommConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    store: StoreConfig = field(default_factory=StoreConfig)

    @property
    def run_dir(self) -> Path:
        """out_dir/name; run.name=auto names it after the identity (pfl_dist/rundir.py), which
        includes the world size (`set_world_size`)."""
        if self.run.name == "auto":
            from pfl_dist.rundir import auto_run_name

            return Path(self.run.out_dir) / auto_run_name(self.identity())
        return Path(self.run.out_dir) / self.run.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def inputs(self) -> Inputs:
        """The fingerprints of the user files this config reads (pfl_dist/inputs.py), {} for none.
        Computed once per Config (the files are hashed at the first use), or set by `pin_inputs`."""
        pinned: Inputs | None = self.__dict__.get("_inputs")
        if pinned is None:
            pinned = fingerprint(self.to_dict())
            self.pin_inputs(pinned)
        return pinned

    def pin_inputs(self, records: Inputs) -> None:
        """Use `records` as this config's fingerprints (the ranks other than 0 take rank 0's). Not a
        field: it is no part of `to_dict()`, equality or config.yaml."""
        object.__setattr__(self, "_inputs", dict(records))

    def identity(self) -> dict[str, Any]:
        """What a run's results depend on: `to_dict()`, the `inputs` digests when this config
        reads user files, and the world size (pfl_dist/rundir.py hashes and compares it)."""
        from pfl_dist.rundir import run_identity

        return run_identity(self.to_dict(), self.inputs, self.world_size)

    @property
    def world_size(self) -> int:
        """The number of processes the run runs on (`set_world_size`); the wire bytes depend on it."""
        world_size: int | None = self.__dict__.get("_world_size")
        if world_size is None:  # a programming error, not bad input: every entry point sets it
            raise RuntimeError("Config.set_world_size was not called: the run dir and identity depend on the "
                               "number of processes")
        return world_size

    def set_world_size(self, world_size: int) -> None:
        """The run is launched on `world_size` processes: checked against the config (every
        process hosts a client) and part of its identity. Not a field: no part of `to_dict()`,
        equality or config.yaml (summary.json records it as `world_size`)."""
        _require(self.data.num_clients >= world_size, "data.num_clients",
                 f"({self.data.num_clients}) must be >= the world size ({world_size}): "
                 "every process hosts at least one client")
        object.__setattr__(self, "_world_size", int(world_size))


SECTIONS: dict[str, type] = {f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)}


# --- building a Config from plain data -------------------------------------------------------


def _type_name(annotation: Any) -> str:
    options = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    names = []
    for option in options:
        if typing.get_origin(option) is Literal:
            names.append(" | ".join(repr(v) for v in typing.get_args(option)))
        else:
            names.append("null" if option is type(None) else option.__name__)
    return " or ".join(names)


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (Union, types.UnionType)


def _as_float(value: Any) -> float | None:
    """Numbers, and strings like '1e6' that PyYAML (YAML 1.1) leaves as strings; finite only."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Return `value` if it fits `annotation` (ints widen to float), else raise ConfigError."""
    options = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    for option in options:
        if option is type(None) and value is None:
            return None
        if typing.get_origin(option) is Literal and value in typing.get_args(option):
            return value
        if option is float and (number := _as_float(value)) is not None:
            return number
        if option in (int, str, bool) and type(value) is option:
            return value
        if typing.get_origin(option) is dict and isinstance(value, dict):
            return dict(value)
    raise ConfigError(f"{key} must be {_type_name(annotation)}, got {value!r}")


def did_you_mean(key: str, known: Sequence[str], *, prefix: str = "") -> str:
    """' (did you mean 'PREFIXclosest'?)' for the closest known name, '' when none is close."""
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def _unknown_key(key: str, known: list[str]) -> ConfigError:
    return ConfigError(f"unknown config key '{key}'{did_you_mean(key, known)}")


def _build_section(name: str, cls: type, values: Any) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"config section '{name}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = [f"{name}.{k}" for k in hints]
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise _unknown_key(f"{name}.{key}", known)
        kwargs[key] = _coerce(value, hints[key], f"{name}.{key}")
    return cls(**kwargs)


def config_from_dict(raw: dict[str, Any]) -> Config:
    for name in raw:
        if name not in SECTIONS:
            raise _unknown_key(str(name), list(SECTIONS))
    return Config(**{name: _build_section(name, SECTIONS[name], raw[name]) for name in raw})


MAPPING_KEYS = ("algorithm.params.", "data.params.")  # keys holding a mapping: an override sets one entry of it


def override_key(key: Any, text: str) -> list[str]:
    """`algorithm.lam` -> ["algorithm", "lam"], `algorithm.params.momentum` -> ["algorithm",
    "params", "momentum"] (and `data.params.<name>` alike); `text` (the override as given) names a bad one."""
    mapping_key = isinstance(key, str) and key.count(".") == 2 and key.startswith(MAPPING_KEYS)
    if not isinstance(key, str) or (key.count(".") != 1 and not mapping_key) or not all(key.split(".")):
        raise ConfigError(f"override '{text}' must look like section.key=value")
    return key.split(".")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`algorithm.lam=0.5` -> (["algorithm", "lam"], 0.5), `algorithm.params.momentum=0.9` ->
    (["algorithm", "params", "momentum"], 0.9); the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    if not sep:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    override_key(key, text)
    try:
        parsed = load_yaml_text(value) if value else None
    except (yaml.YAMLError, RecursionError):
        parsed = value  # an unparsable value stays a string and the type check decides
    return key.split("."), parsed


# --- YAML: bounded and unambiguous -----------------------------------------------------------

MAX_YAML_BYTES = 1_000_000  # the shipped configs and sweeps are under 2 KB


class YamlRefused(yaml.YAMLError):
    """Valid YAML that pfl_dist refuses: an alias or a duplicate key (with where it is)."""

    def __init__(self, message: str, mark: yaml.Mark | None) -> None:
        super().__init__(message)
        self.message = message
        self.problem_mark = mark


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader without aliases (`*name`, also in `<<: *name` merges) and with duplicate
    mapping keys as an error. Aliases are what make a few hundred bytes expand to gigabytes (an
    "alias bomb"); configs never need them. A duplicate key silently keeps the last value."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise YamlRefused(f"uses the YAML alias *{event.anchor}; aliases are not supported, write the value out",
                              event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # an unhashable key: SafeLoader reports it
            if duplicate:
                raise YamlRefused(f"has the key {key!r} twice", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load_yaml_text(text: str) -> Any:
    """yaml.safe_load with StrictLoader."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (StrictLoader is a SafeLoader)


def read_yaml(path: str | Path, *, what: str = "config file") -> dict[str, Any]:
    """A YAML file holding a mapping; ConfigError naming the file (and line) otherwise."""
    path = Path(path)
    check_path_text(str(path), what)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ConfigError(f"{what} {path} is {size} bytes; at most {MAX_YAML_BYTES} are read")
        raw = load_yaml_text(path.read_text())
    except YamlRefused as err:
        line = f" (line {err.problem_mark.line + 1})" if err.problem_mark is not None else ""
        raise ConfigError(f"{what} {path} {err.message}{line}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{what} {path} is not valid YAML{where}") from None
    except RecursionError:
        raise ConfigError(f"{what} {path} is nested too deeply") from None
    except OSError as err:
        raise ConfigError(f"{what} {path} cannot be read: {err.strerror or err}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of sections, got {type(raw).__name__}")
    return raw


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Defaults < YAML file < `section.key=value` overrides, validated as a whole."""
    return apply_overrides(read_yaml(path) if path is not None else {}, overrides)


def apply_overrides(file_config: Mapping[str, Any], overrides: Sequence[str] | Mapping[str, Any] = ()) -> Config:
    """Defaults < `file_config` (a parsed config file, left unchanged, so one parse can serve many
    configs) < overrides, validated as a whole. Overrides are `section.key=value` texts (the value
    parsed as YAML) or a mapping of `section.key` to values (`pfl_dist.run`), checked alike."""
    if not isinstance(file_config, Mapping):
        raise ConfigError(f"a config must be a mapping of sections, got {type(file_config).__name__}")
    raw = {name: dict(values) if isinstance(values, Mapping) else values for name, values in file_config.items()}
    pairs = ([(override_key(key, f"{key}={value!r}"), value) for key, value in overrides.items()]
             if isinstance(overrides, Mapping) else [parse_override(text) for text in overrides])
    for (section, key, *entry), value in pairs:
        section_values = raw.setdefault(section, {})
        if not isinstance(section_values, dict):
            raise ConfigError(f"config section '{section}' must be a mapping, got {section_values!r}")
        if entry:  # algorithm.params.momentum=0.9: one entry of the mapping
            mapping = section_values.get(key)
            section_values[key] = {**(mapping if isinstance(mapping, dict) else {}), entry[0]: value}
        else:
            section_values[key] = value
    cfg = config_from_dict(raw)
    from pfl_dist.tasks import check_task_config  # the registry reads Config: imported late

    check_task_config(cfg)
    return cfg
