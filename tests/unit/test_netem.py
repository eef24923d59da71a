"""pfl_dist.netem without namespaces: parsing of rates/delays/overrides, the communication-time
model against hand-computed numbers, the round-time decomposition, and the one-line errors."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pfl_dist.config import load_config
from pfl_dist.errors import ConfigError
from pfl_dist.methods import METHOD_NAMES, METHODS
from pfl_dist.netem import model
from pfl_dist.netem.shaping import LinkSpec, node_links, parse_loss, parse_rate, parse_time
from pfl_dist.timing import RoundTimer
from tests.helpers import REPO


def test_rates_delays_and_losses_parse_in_tc_units() -> None:
    assert parse_rate("10mbit") == 10_000_000
    assert parse_rate("1.5Mbit") == 1_500_000
    assert parse_rate("100kbit") == 100_000
    assert parse_rate("1mbps") == 8_000_000  # tc: bps is bytes per second
    assert parse_time("20ms", what="--delay") == pytest.approx(0.02)
    assert parse_time("250us", what="--delay") == pytest.approx(0.00025)
    assert parse_loss("0.1%") == pytest.approx(0.001)
    for bad in ("10", "fast", "10mbitz", "-1mbit", "1bit"):
        with pytest.raises(ConfigError, match="--rate"):
            parse_rate(bad)
    with pytest.raises(ConfigError, match="--loss"):
        parse_loss("0.1")


def test_per_node_overrides_replace_the_base_link() -> None:
    base = LinkSpec(rate_bps=10_000_000)
    links = node_links(base, num_nodes=4, rates=["3=1mbit"], delays=["1=5ms"])
    assert [link.rate_bps for link in links] == [10_000_000, 10_000_000, 10_000_000, 1_000_000]
    assert links[1].delay_s == pytest.approx(0.005) and links[1].needs_netem and not links[0].needs_netem
    with pytest.raises(ConfigError, match="node 4"):
        node_links(base, num_nodes=4, rates=["4=1mbit"], delays=[])
    with pytest.raises(ConfigError, match="NODE=VALUE"):
        node_links(base, num_nodes=4, rates=["slow=1mbit"], delays=[])


def test_comm_time_model_is_latency_times_ring_steps_plus_wire_bytes_over_rate() -> None:
    payload, w = 1_686_572, 4
    wire = 2 * 3 * payload // 4  # ring all-reduce bytes per rank
    assert model.ring_steps(w) == 6
    assert model.collective_seconds(payload, w, rates_bps=[10_000_000] * 4) == pytest.approx(8 * wire / 1e7)
    assert model.collective_seconds(payload, w, rates_bps=[10**7] * 4, latency_s=0.02) == pytest.approx(
        6 * 0.02 + 8 * wire / 1e7)
    # The slowest link sets the pace of the whole ring.
    assert model.collective_seconds(payload, w, rates_bps=[10**7, 10**7, 10**7, 10**6]) == pytest.approx(8 * wire / 1e6)
    assert model.collective_seconds(payload, 1, rates_bps=[10**7]) == 0.0


def test_straggler_wait_model_grows_with_the_hops_downstream_of_the_slow_node() -> None:
    payload = 4_000_000
    waits = model.straggler_wait_seconds(payload, [10**7, 10**7, 10**7, 10**6])
    chunk_time = 8 * payload / 4 * (1 / 10**6 - 1 / 10**7)  # one chunk over the slow link, minus the fast one
    # gloo's ring sends from rank r to r - 1: rank 2 is one hop after the straggler (rank 3).
    assert waits == pytest.approx([2 * chunk_time, chunk_time, 0.0, 0.0])
    assert model.straggler_wait_seconds(payload, [10**7] * 4) == [0.0] * 4


def test_round_time_decomposition_from_the_reduced_block() -> None:
    """Two ranks' rows summed as the evaluation all-reduce would; wait = latest arrival - own."""
    timers = [RoundTimer(rank=r, world_size=2) for r in range(2)]
    arrivals = [[100.0, 100.5], [200.0, 200.0]]  # rank 0 early in round 1, both together in round 2
    for round_num in (1, 2):
        for rank, timer in enumerate(timers):
            in_collective = 1.0 if rank == 0 and round_num == 1 else 0.5
            timer.record(round_num, round_s=2.0, arrival=arrivals[round_num - 1][rank], in_collective_s=in_collective)
    block = sum((t.eval_block(2, torch.device("cpu")) for t in timers), torch.zeros(2, 2, 3, dtype=torch.float64))
    rounds = timers[0].absorb(2, block)
    assert [r.round for r in rounds] == [1, 2]
    assert rounds[0].wait_s == pytest.approx([0.5, 0.0])
    assert rounds[0].comm_s == pytest.approx([0.5, 0.5])
    assert rounds[0].compute_s == pytest.approx([1.0, 1.5])
    assert rounds[1].wait_s == pytest.approx([0.0, 0.0])
    summary = timers[0].summary()
    assert summary["measured_rounds"] == 2
    assert summary["per_rank_per_round"]["wait_s"] == pytest.approx([0.25, 0.0])
    assert summary["train_s"] == pytest.approx(4.0)
    # The next block starts after the evaluated round, whatever the ranks still hold.
    assert timers[0].eval_block(3, torch.device("cpu")).shape == (2, 1, 3)


def test_rounds_a_rank_did_not_measure_are_skipped() -> None:
    """After a resume, rounds before it have no rows: the block carries zeros, not a fake wait."""
    timer = RoundTimer(rank=0, world_size=1)
    timer.load_state_dict(None, round_num=3, eval_every=2)
    assert timer.last_eval_round == 2
    timer.record(4, round_s=1.0, arrival=5.0, in_collective_s=0.25)
    rounds = timer.absorb(4, None)
    assert [r.round for r in rounds] == [4]  # round 3 ran before the resume
    assert rounds[0].compute_s == [0.75]


def run_netem(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pfl_dist.netem", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize(("args", "names"), [
    (["--rate", "10mbit"], "--nodes"),
    (["--nodes", "4", "--rate", "ten"], "--rate"),
    (["--nodes", "4", "--rate", "1mbit", "--node-rate", "9=1mbit"], "node 9"),
    (["--nodes", "4", "--bogus"], "unrecognized"),
    (["--nodes", "2", "--rate", "1mbit", "algorithm.lam=-1"], "algorithm.lam"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], names: str) -> None:
    done = run_netem(*args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pfl_dist: error: ") and names in lines[0], done.stderr


ANY_METHOD = ("data.kind=fashion_mnist", "model.kind=cnn")  # a task every method can run on (body/head split)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_the_sweep_takes_every_method_and_a_lambda_where_the_method_uses_it(name: str) -> None:
    from pfl_dist.netem.sweep import check_methods, method_overrides

    plain = load_config(None, [*ANY_METHOD, *method_overrides(name)]).algorithm
    assert plain.name == name
    if METHODS[name].uses_lam:
        assert plain.lam == 0.5  # the config's lambda (here the default) is kept
        tuned = load_config(None, [*ANY_METHOD, *method_overrides(f"{name}:2.5")]).algorithm
        assert (tuned.name, tuned.lam) == (name, 2.5)
    else:  # lambda cannot matter, and the config's lam may be 'auto' (fedclup only)
        assert plain.lam == 0.0
        with_auto = load_config(None, [*ANY_METHOD, "algorithm.lam=auto", *method_overrides(name)]).algorithm
        assert (with_auto.name, with_auto.lam) == (name, 0.0)
    check_methods([name], overrides=ANY_METHOD)


def assert_methods_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], methods: list[str],
                           names: list[str]) -> None:
    """`netem.sweep --methods METHODS` is one line naming `names`, exit 2, before anything runs."""
    from pfl_dist.netem import sweep

    code = sweep.main(["--out", str(tmp_path / "out"), "--nodes", "2", "--rates", "1mbit", "--methods", *methods])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("pfl_dist: error: --methods: "), lines
    assert all(name in lines[0] for name in names), lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("methods", "names"), [
    (["fedavg:0.5"], ["'fedavg:0.5'", "fedavg does not use algorithm.lam"]),
    (["scaffold:1"], ["scaffold does not use algorithm.lam"]),
    (["dito"], ["unknown method 'dito'", "did you mean 'ditto'?", ", ".join(METHOD_NAMES)]),
    (["fedclup", "FedAvg"], ["unknown method 'FedAvg'", "did you mean 'fedavg'?"]),
    (["ditto:"], ["'ditto:'", "lambda after ':' is missing"]),
    (["ditto:-1"], ["'ditto:-1'", "algorithm.lam must be >= 0"]),
    (["pfedme:auto"], ["'pfedme:auto'", "only defined for fedclup"]),
    (["ditto:0.5", "ditto:0.5"], ["'ditto:0.5' is given twice"]),
    (["fedavg", "fedrep"], ["'fedrep'", "needs a model with a body/head split"]),  # not on the synthetic default
])
def test_bad_sweep_methods_are_one_line_and_exit_2_before_anything_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], methods: list[str], names: list[str]) -> None:
    assert_methods_refused(tmp_path, capsys, methods, names)


LAM_PLUGIN = '''
from pfl_dist.algorithms import FedProx
from pfl_dist.methods import MethodInfo


class Prox(FedProx):
    info = MethodInfo("prox", "Prox", uses_lam=True)
'''


@pytest.fixture
def plugins_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/ (custom_algorithm:FedAvgM, no lambda) and lam_plugin:Prox (uses lambda) importable."""
    (tmp_path / "lam_plugin.py").write_text(LAM_PLUGIN)
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.parametrize(("method", "overrides"), [
    ("custom_algorithm:FedAvgM", ["algorithm.name=custom_algorithm:FedAvgM", "algorithm.lam=0.0"]),
    ("lam_plugin:Prox", ["algorithm.name=lam_plugin:Prox"]),
    ("lam_plugin:Prox:2.5", ["algorithm.name=lam_plugin:Prox", "algorithm.lam=2.5"]),
    ("fedclup:auto", ["algorithm.name=fedclup", "algorithm.lam=auto"]),  # a built-in's name wins
])
def test_the_sweep_takes_a_plugin_algorithm_and_its_lambda(plugins_on_path: None, method: str,
                                                           overrides: list[str]) -> None:
    from pfl_dist.netem.sweep import check_methods, method_overrides, run_dir_name

    assert method_overrides(method) == overrides
    check_methods([method], overrides=ANY_METHOD)  # the whole point's config validates
    assert ":" not in run_dir_name(method, 0)


@pytest.mark.parametrize(("methods", "names"), [
    (["custom_algorithm:FedAvgM:0.5"], ["'custom_algorithm:FedAvgM:0.5'",
                                        "custom_algorithm:FedAvgM does not use algorithm.lam"]),
    (["lam_plugin:Prox:"], ["'lam_plugin:Prox:'", "lambda after ':' is missing"]),
    (["lam_plugin:Prox:-1"], ["'lam_plugin:Prox:-1'", "algorithm.lam must be >= 0"]),
    (["custom_algorithm:FedAvgN"], ["'custom_algorithm:FedAvgN'", "has no class FedAvgN"]),
    (["no_such_module:Algo"], ["'no_such_module:Algo'", "cannot find module no_such_module"]),
    (["custom_algorithm:"], ["unknown method 'custom_algorithm'", "or a plug-in 'package.module:Class'"]),
])
def test_bad_plugin_methods_are_one_line_and_exit_2_before_anything_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], plugins_on_path: None, methods: list[str],
        names: list[str]) -> None:
    assert_methods_refused(tmp_path, capsys, methods, names)


def test_time_to_target_and_the_fastest_method_per_rate() -> None:
    from pfl_dist.netem.sweep import fastest
    from pfl_dist.sweep.tradeoff import Curve, seconds_to_reach, tradeoff_rows

    def curve(label: str, facet: str, seconds: list[float], values: list[float]) -> Curve:
        return Curve(label=label, facet=facet, rounds=list(range(len(values))), num_bytes=[0.0] * len(values),
                     values=values, communicates=True, seconds=seconds)

    slow_link = [curve("FedAvg", "1", [0, 20, 40], [0.4, 0.8, 0.95]), curve("Local", "1", [0, 1, 2], [0.4, 0.9, 0.9])]
    fast_link = [curve("FedAvg", "100", [0, 1, 2], [0.4, 0.8, 0.95]), curve("Local", "100", [0, 1, 2], [0.4, 0.7, 0.9])]
    assert seconds_to_reach(slow_link[0], 0.9, metric="acc_personal") == (40, 2)
    assert seconds_to_reach(slow_link[1], 0.95, metric="acc_personal") is None
    assert fastest([*slow_link, *fast_link], 0.8, "acc_personal") == {"1": ("Local", 1), "100": ("FedAvg", 1)}
    rows = tradeoff_rows(slow_link, metric="acc_personal", targets=[0.9])
    assert rows[0]["time to acc_personal >= 0.9"] == "40.0 s (round 2)" and rows[0]["train time"] == "40.0 s"
    untimed = Curve(label="x", facet="", rounds=[0], num_bytes=[0.0], values=[0.5], communicates=True)
    assert "train time" not in tradeoff_rows([untimed], metric="acc_personal", targets=[0.9])[0]


def test_the_tool_compares_the_other_ranks_mean_wait_with_the_straggler_model() -> None:
    from pfl_dist.netem.cli import compare

    payload, rounds = 1_000_000, 4
    links = [LinkSpec(rate_bps=10**7)] * 3 + [LinkSpec(rate_bps=10**6)]
    wire = 4 * 2 * 3 * payload // 4 * rounds
    summary = {"world_size": 4, "num_rounds_completed": rounds, "config": {"train": {"eval_every": 2}},
               "comm": {"payload_bytes": 4 * payload * rounds, "wire_bytes_model": wire, "num_collectives": rounds,
                        "wire_bytes_measured": int(wire * 1.05)},
               "time": {"comm_s_per_round": 6.0, "measured_rounds": rounds,
                        "per_rank_per_round": {"wait_s": [1.0, 0.5, 0.0, 0.0], "comm_s": [6.0] * 4,
                                               "compute_s": [0.1] * 4}}}
    waits = [[2.0, 1.0, 0.0, 0.2]]  # round 2 follows a training round; round 1 and 3 follow evaluations
    records = [{"time": {"rounds": [{"round": 1, "wait_s": [0.0] * 4}, {"round": 2, "wait_s": waits[0]}]}},
               {"time": {"rounds": [{"round": 3, "wait_s": [0.0] * 4}, {"round": 4, "wait_s": waits[0]}]}}]
    result = compare(summary, links, records)
    chunk = 8 * payload / 4 * (1 / 10**6 - 1 / 10**7)
    assert result["comm_s_model"] == pytest.approx(8 * 2 * 3 * payload / 4 / 10**6)
    assert result["wire_ratio"] == pytest.approx(1.05, abs=1e-6)
    assert result["steady_rounds"] == [2, 4]
    assert result["wait_s_model_steady"] == pytest.approx([2 * chunk, chunk, 0.0, 0.0])
    assert result["others_wait_s_model_steady"] == pytest.approx(chunk)  # mean over ranks 0, 1, 2
    assert result["others_wait_s_measured_steady"] == pytest.approx(1.0)
    assert result["others_wait_s_model"] == pytest.approx(chunk / 2)  # half the rounds follow an evaluation


def test_each_seed_runs_in_its_own_dir_with_its_run_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--seeds reaches every point's command as run.seed, one run dir per (rate, method, seed),
    seed by seed; the default is 0 1 2."""
    from pfl_dist.netem import sweep

    commands: list[list[str]] = []
    monkeypatch.setattr(sweep.subprocess, "run",
                        lambda command, **_: commands.append(command) or subprocess.CompletedProcess(command, 0))
    args, netem_args = sweep.parse_args(["--out", str(tmp_path), "--nodes", "2", "--rates", "1mbit", "10mbit",
                                         "--methods", "fedavg", "--seeds", "7", "3", "--config", "c.yaml", "x.y=1"])
    sweep.run_points(args, netem_args)
    seen = [(c[c.index("--rate") + 1], next(a for a in c if a.startswith("run.seed=")),
             next(a for a in c if a.startswith("run.name=")), next(a for a in c if a.startswith("run.out_dir=")))
            for c in commands]
    assert seen == [("1mbit", "run.seed=7", "run.name=fedavg__seed=7", f"run.out_dir={tmp_path / '1mbit'}"),
                    ("10mbit", "run.seed=7", "run.name=fedavg__seed=7", f"run.out_dir={tmp_path / '10mbit'}"),
                    ("1mbit", "run.seed=3", "run.name=fedavg__seed=3", f"run.out_dir={tmp_path / '1mbit'}"),
                    ("10mbit", "run.seed=3", "run.name=fedavg__seed=3", f"run.out_dir={tmp_path / '10mbit'}")]
    assert all(c.index("--config") < c.index(s[1]) for c, s in zip(commands, seen, strict=True))  # after the config
    default, _ = sweep.parse_args(["--out", str(tmp_path), "--nodes", "2", "--rates", "1mbit", "--methods", "local"])
    assert default.seeds == [0, 1, 2]


@pytest.mark.parametrize(("extra", "names"), [
    (["--seeds", "1", "1"], "--seeds: 1 is given twice"),
    (["--seeds", "x"], "--seeds"),
    (["--seeds", "-1"], "--seeds"),
    (["--seeds", "0", "--target", "0.5", "run.seed=4"], "run.seed is set by the sweep"),
])
def test_bad_seeds_are_one_line_and_exit_2_before_anything_runs(tmp_path: Path, extra: list[str], names: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pfl_dist.netem.sweep", "--out", str(tmp_path / "out"), "--nodes",
                           "2", "--rates", "1mbit", "--methods", "fedavg", *extra],
                          capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2
    assert len(lines) == 1 and lines[0].startswith("pfl_dist: error: ") and names in lines[0], done.stderr
    assert not (tmp_path / "out").exists()


T_975_2 = 4.302652729911275  # Student t, 97.5% quantile, 2 degrees of freedom (statistical tables)


def fake_netem_run(path: Path, *, method: str, seed: int, accs: list[float], seconds: list[float],
                   comm_s: float) -> None:
    """A finished 2-node run of `method` on one seed: an evaluation per round (round 0 at 0 s)."""
    records = [{"round": r, "metrics": {"eval/acc_personal": a, "eval/acc_global": a / 2},
                "comm": {"wire_bytes_model": 100 * r, "uplink_bytes": 10 * r, "downlink_bytes": 10 * r},
                "time": {"train_s": s}} for r, (a, s) in enumerate(zip(accs, seconds, strict=True))]
    config = {"run": {"seed": seed}, "data": {"kind": "fashion_mnist", "num_clients": 2},
              "algorithm": {"name": method, "lam": 0.0}, "train": {"num_rounds": len(accs) - 1},
              "comm": {"codec": "none"}}
    summary = {"config": config, "world_size": 2, "final": records[-1]["metrics"], "comm": records[-1]["comm"],
               "time": {"wall_s": 1.0, "compute_s_per_round": 0.5, "comm_s_per_round": comm_s,
                        "wait_s_per_round": 0.0}, "num_rounds_completed": len(accs) - 1}
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_the_report_gives_the_mean_and_t_interval_over_seeds(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from pfl_dist.netem import sweep

    finals = {0: 0.6, 1: 0.8, 2: 0.7}
    for seed, final in finals.items():
        fake_netem_run(tmp_path / "1mbit" / f"fedavg__seed={seed}", method="fedavg", seed=seed,
                       accs=[0.1, 0.5, final], seconds=[0.0, 10.0 + seed, 20.0 + 2 * seed], comm_s=9.0 + seed)
        fake_netem_run(tmp_path / "1mbit" / f"local__seed={seed}", method="local", seed=seed,
                       accs=[0.1, 0.9, 0.9], seconds=[0.0, 1.0, 2.0], comm_s=0.0)
    code = sweep.main(["--out", str(tmp_path), "--nodes", "2", "--rates", "1mbit", "--methods", "fedavg", "local",
                       "--target", "0.75", "--budget", "15", "--report-only"])
    assert code == 0
    with open(tmp_path / "time_to_accuracy.csv", newline="") as f:
        rows = {row["method"]: row for row in csv.DictReader(f)}
    fedavg, local = rows["FedAvg"], rows["LocalTrain"]
    sd = statistics.stdev(finals.values())  # independent of pfl_dist.sweep.stats
    assert float(fedavg["final acc_personal"]) == pytest.approx(0.7)
    assert float(fedavg["final acc_personal ci95"]) == pytest.approx(T_975_2 * sd / 3 ** 0.5)
    assert float(fedavg["comm s/round"]) == pytest.approx(10.0)
    assert float(fedavg["comm s/round ci95"]) == pytest.approx(T_975_2 * 1.0 / 3 ** 0.5)
    assert float(fedavg["train time s"]) == pytest.approx(22.0)
    # seed 1 reaches 0.75 at round 2 (22 s), seeds 0 and 2 never: each seed's own curve counts
    assert fedavg["time to acc_personal >= 0.75"] == "seed 1: 22.0 s (round 2); seed 0, 2: not reached"
    assert local["time to acc_personal >= 0.75"] == "1.0 s on every seed (round 1)"
    assert local["final acc_personal"] == "0.9 (on every seed)"
    # after 15 s: seed 0 holds round 1 (10 s), seed 1 round 1 (11 s), seed 2 round 1 (12 s): 0.5 each
    assert fedavg["acc_personal at 15 s"] == "0.5 (on every seed)"
    assert "LocalTrain" in capsys.readouterr().out.split("first to acc_personal >= 0.75: ")[1].splitlines()[0]
    note = (tmp_path / "time_to_accuracy.md").read_text()
    assert "over n = 3 seeds" in note and "Times to a target: each seed's own curve." in note
    assert "Bytes to a target" not in note
