"""Config: precedence, typing of overrides, and one clear line for every kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from pfl_dist.config import load_config, parse_override
from pfl_dist.errors import ConfigError
from tests.helpers import REPO, run_main


def test_precedence_cli_over_yaml_over_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("algorithm:\n  lam: 0.25\n  num_local_steps: 7\n")
    cfg = load_config(path, ["algorithm.lam=2", "train.dtype=float64"])
    assert cfg.algorithm.lam == 2.0 and isinstance(cfg.algorithm.lam, float)  # int widened, CLI wins
    assert cfg.algorithm.num_local_steps == 7  # from YAML
    assert cfg.algorithm.sample_fraction == 1.0  # default
    assert cfg.train.dtype == "float64"


def test_override_values_keep_their_yaml_types() -> None:
    assert parse_override("algorithm.local_lr=auto") == (["algorithm", "local_lr"], "auto")
    assert parse_override("algorithm.batch_size=null") == (["algorithm", "batch_size"], None)
    assert parse_override("data.download=true") == (["data", "download"], True)
    assert load_config(None, ["algorithm.local_lr=0.01"]).algorithm.local_lr == 0.01


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algorithm.lamda=1"], "unknown config key 'algorithm.lamda' (did you mean 'algorithm.lam'?)"),
        (["trian.num_rounds=3"], "unknown config key 'trian'"),
        (["algorithm.lam=-1"], "algorithm.lam must be >= 0 or 'auto', got -1.0"),
        (["algorithm.lam=big"], "algorithm.lam must be float or 'auto', got 'big'"),
        (["algorithm.sample_fraction=1.5"], "algorithm.sample_fraction must be in (0, 1], got 1.5"),
        (["train.num_rounds=2.5"], "train.num_rounds must be int, got 2.5"),
        (["train.num_rounds=true"], "train.num_rounds must be int, got True"),
        (["algorithm.name=scafold"], "algorithm.name 'scafold' is not a built-in method (did you mean 'scaffold'?)"),
        (["algorithm.local_lr=0"], "algorithm.local_lr must be > 0 or 'auto', got 0.0"),
        (["comm.backend=mpi"], "comm.backend must be 'auto' | 'gloo' | 'nccl', got 'mpi'"),
        (["data.num_clients=0"], "data.num_clients must be >= 1, got 0"),
        (["lam=3"], "override 'lam=3' must look like section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value)


def _assert_one_clear_line(result, fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pfl_dist: error: ") and fragment in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--config", "configs/nope.yaml"], "config file not found: configs/nope.yaml"),
        (["algorithm.lamda=1"], "unknown config key 'algorithm.lamda'"),
        (["algorithm.lam=-0.5"], "algorithm.lam must be >= 0"),
        (["algorithm.sample_fraction=2"], "algorithm.sample_fraction must be in (0, 1]"),
        (["train.eval_every=zero"], "train.eval_every must be int"),
        (["data.kind=cifar"], "data.kind must be"),
        (["run.device=tpu"], "run.device must be"),
        (["algorithm.lam=0", "algorithm.global_lr=0.1"], "algorithm.global_lr must be 'auto'"),
        (["checkpoint.keep=0"], "checkpoint.keep must be >= 1"),
        (["comm.timeout_s=-3"], "comm.timeout_s must be > 0"),
        (["train.eval_clients=1"], "train.eval_clients must be 'all', 'auto' or a number of clients in [2, "),
        (["train.eval_clients=0"], "train.eval_clients must be 'all', 'auto' or a number of clients in [2, "),
        (["train.eval_clients=some"], "train.eval_clients must be int or 'all' | 'auto', got 'some'"),
        (["train.eval_clients=2.5"], "train.eval_clients must be int or 'all' | 'auto', got 2.5"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(args: list[str], fragment: str) -> None:
    _assert_one_clear_line(run_main(*args), fragment)


def test_cli_rejects_non_yaml_and_non_mapping_files(tmp_path: Path) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("run:\n  name: [unclosed\n")
    _assert_one_clear_line(run_main("--config", str(bad_yaml)), "is not valid YAML")
    binary = tmp_path / "model.pt"
    binary.write_bytes(bytes(range(256)))
    _assert_one_clear_line(run_main("--config", str(binary)), "is not valid YAML")
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    _assert_one_clear_line(run_main("--config", str(listing)), "must hold a mapping of sections")
    section = tmp_path / "section.yaml"
    section.write_text("algorithm: 3\n")
    _assert_one_clear_line(run_main("--config", str(section)), "config section 'algorithm' must be a mapping")


def test_launcher_rejects_more_processes_than_clients() -> None:
    result = run_main("--nproc-per-node=4", "--config", "configs/default.yaml", "data.num_clients=3",
                     module="pfl_dist.launch")
    _assert_one_clear_line(result, "data.num_clients (3) must be >= the world size (4)")


def test_every_shipped_config_is_valid() -> None:
    for path in sorted((REPO / "configs").glob("*.yaml")):
        load_config(path)


def test_scientific_notation_is_a_float_but_nan_is_not() -> None:
    assert load_config(None, ["algorithm.lam=1e6"]).algorithm.lam == 1e6  # PyYAML reads '1e6' as a string
    with pytest.raises(ConfigError, match="algorithm.lam must be float or 'auto', got 'nan'"):
        load_config(None, ["algorithm.lam=nan"])
