"""Results over seeds: tables print mean ± 95% t interval and mark paired differences against
FedAvg / LocalTrain / FedCLUP; figures draw the mean with a shaded band; byte axes say their
units are decimal; and each seed of a shipped sweep draws its own data, initial model and
sampled clients. The expected numbers are computed here by hand with numpy and the published
t_{0.975, 4} = 2.776 (not with pfl_dist.sweep.stats)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.collections import PolyCollection

from pfl_dist.config import Config
from pfl_dist.data.synthetic import generate_clients
from pfl_dist.methods import METHODS
from pfl_dist.sampling import sample_clients
from pfl_dist.sweep.plot import plot_tradeoff, plot_vs_rounds, plot_vs_setting
from pfl_dist.sweep.results import Run
from pfl_dist.sweep.spec import load_sweep
from pfl_dist.sweep.style import BAND_GID
from pfl_dist.sweep.tradeoff import build_curves, markdown_table, tradeoff_rows, write_table
from pfl_dist.tasks import build_task
from tests.figures import Saved, data_axes, save_run, titled
from tests.helpers import REPO

T_975_4 = 2.776445105  # two-sided 95% critical value for 4 degrees of freedom (published tables: 2.776)
SEEDS = (0, 1, 2, 3, 4)
# Made-up final ITR per seed: the seeds differ by several units (each draws its own problem), the
# methods by less; FedCLUP is below FedAvg on every seed by 0.3-0.5, and LocalTrain is above or
# below FedCLUP depending on the seed.
ITR = {"fedavg": [10.0, 14.0, 11.0, 7.5, 8.0],
       "fedclup": [9.6, 13.5, 10.7, 7.1, 7.6],
       "local": [9.0, 14.9, 10.1, 7.9, 7.0]}
ROUNDS = (0, 5, 10)


def write_run(root: Path, *, method: str, seed: int, final: float, R: float = 1.0, lam: float = 0.5) -> Run:
    """A finished synthetic run: ITR falls linearly from final + 2 to `final` over ROUNDS, 80 B
    up and down per round (none for LocalTrain)."""
    info = METHODS[method]
    sends = 1.0 if info.communicates else 0.0
    records = [{"round": t, "metrics": {"eval/ITR": final + 2.0 - 2.0 * t / ROUNDS[-1], "eval/ATR": final / 3},
                "comm": {"wire_bytes_model": 0.0, "uplink_bytes": sends * 80.0 * t, "downlink_bytes": sends * 80.0 * t}}
               for t in ROUNDS]
    config = {"run": {"seed": seed}, "data": {"kind": "synthetic", "R": R, "num_clients": 4, "classes_per_client": 2},
              "algorithm": {"name": method, "lam": lam if info.uses_lam else 0.0, "num_local_steps": 5,
                            "sample_fraction": 1.0, "batch_size": None},
              "train": {"num_rounds": ROUNDS[-1]}, "comm": {"codec": "none"}}
    summary = {"config": config, "world_size": 1, "method": info.to_dict(), "final": records[-1]["metrics"],
               "comm": {**records[-1]["comm"], "uplink_bytes_dense": records[-1]["comm"]["uplink_bytes"],
                        "num_collectives": 2}, "time": {"wall_s": 1.0, "round_s_median": 0.1}}
    return save_run(root / f"{method}__lam={lam}__R={R}__seed={seed}", summary, records)


def three_methods(root: Path, seeds: tuple[int, ...] = SEEDS, R: float = 1.0) -> list[Run]:
    return [write_run(root, method=m, seed=s, final=ITR[m][s] + (R - 1.0), R=R) for m in ITR for s in seeds]


def by_hand(values: list[float]) -> tuple[float, float]:
    x = np.array(values)
    return float(x.mean()), float(T_975_4 * x.std(ddof=1) / np.sqrt(len(x)))


def test_table_cells_are_mean_and_t_interval_with_paired_marks(tmp_path: Path) -> None:
    # Prepare: FedAvg, FedCLUP and LocalTrain on the same 5 seeds
    curves = build_curves(three_methods(tmp_path), metric="ITR", kind="fl")
    # Execute
    rows = {row["method"]: row for row in tradeoff_rows(curves, metric="ITR")}
    text = markdown_table(list(rows.values()))
    # Assert: each cell is mean ± half-width as computed by hand
    for method, label in (("fedavg", "FedAvg"), ("fedclup", "FedCLUP λ=0.5"), ("local", "LocalTrain")):
        mean, half = by_hand(ITR[method])
        cell = rows[label]["final eval/ITR"]
        assert cell.estimate.mean == pytest.approx(mean, rel=1e-12)
        assert cell.estimate.half_width == pytest.approx(half, rel=1e-8)
        assert cell.text().startswith(f"{mean:.4g} ± {half:.2g}")
    # FedCLUP - FedAvg = -0.4, -0.5, -0.3, -0.4, -0.4 on the seeds: the paired interval excludes 0
    d_mean, d_half = by_hand(list(np.subtract(ITR["fedclup"], ITR["fedavg"])))
    assert d_mean + d_half < 0  # hand check that the made-up numbers are what the test says
    assert rows["FedCLUP λ=0.5"]["final eval/ITR"].marks == ("A+",)  # lower ITR: better than FedAvg
    assert rows["FedAvg"]["final eval/ITR"].marks == ("C\u2212",)  # and FedAvg worse than FedCLUP
    # LocalTrain - FedCLUP changes sign across seeds: not significant, no mark; while unpaired the
    # 5-seed intervals of FedAvg and FedCLUP overlap, so only pairing separates them
    l_mean, l_half = by_hand(list(np.subtract(ITR["local"], ITR["fedclup"])))
    assert l_mean - l_half < 0 < l_mean + l_half
    assert "C" not in " ".join(rows["LocalTrain"]["final eval/ITR"].marks)
    assert by_hand(ITR["fedclup"])[0] + by_hand(ITR["fedclup"])[1] > by_hand(ITR["fedavg"])[0]
    # the table says how it was computed and what the marks mean
    assert "95% Student t interval over n = 5 seeds" in text and "A = FedAvg, L = LocalTrain, C = FedCLUP" in text
    assert f"| FedCLUP λ=0.5 | {by_hand(ITR['fedclup'])[0]:.4g} ± {by_hand(ITR['fedclup'])[1]:.2g} A+ |" in text


def test_the_csv_has_mean_half_width_and_marks_as_columns(tmp_path: Path) -> None:
    curves = build_curves(three_methods(tmp_path / "runs"), metric="ITR", kind="fl")
    _, csv_path = write_table(tradeoff_rows(curves, metric="ITR"), stem=tmp_path / "table")
    with open(csv_path, newline="") as f:
        rows = {row["method"]: row for row in csv.DictReader(f)}
    mean, half = by_hand(ITR["fedclup"])
    row = rows["FedCLUP λ=0.5"]
    assert float(row["final eval/ITR"]) == pytest.approx(mean)
    assert float(row["final eval/ITR ci95"]) == pytest.approx(half)
    assert row["final eval/ITR marks"] == "A+"


def test_one_seed_keeps_the_plain_table(tmp_path: Path) -> None:
    curves = build_curves(three_methods(tmp_path, seeds=(0,)), metric="ITR", kind="fl")
    rows = tradeoff_rows(curves, metric="ITR")
    assert [row["final eval/ITR"] for row in rows] == [10.0, 9.6, 9.0]  # numbers, no interval
    text = markdown_table(rows)
    assert "±" not in text and "Student" not in text


def test_a_method_with_several_curves_is_no_reference(tmp_path: Path) -> None:
    runs = three_methods(tmp_path) + [write_run(tmp_path, method="fedclup", seed=s, final=ITR["fedclup"][s] - 1.0,
                                                lam=0.1) for s in SEEDS]
    rows = {row["method"]: row for row in tradeoff_rows(build_curves(runs, metric="ITR", kind="fl"), metric="ITR")}
    assert rows["FedAvg"]["final eval/ITR"].compared == (("L", "LocalTrain"),)  # two FedCLUP lambdas: no "the" FedCLUP
    assert rows["FedCLUP λ=0.1"]["final eval/ITR"].marks[0] == "A+"


def band_limits(ax: object) -> list[tuple[np.ndarray, np.ndarray]]:
    """(xs, [low, high] per x) of each shaded band in the panel."""
    bands = [c for c in ax.collections if isinstance(c, PolyCollection) and c.get_gid() == BAND_GID]  # type: ignore[attr-defined]
    out = []
    for band in bands:
        vertices = band.get_paths()[0].vertices
        xs = np.unique(vertices[:, 0])
        out.append((xs, np.array([[vertices[vertices[:, 0] == x, 1].min(), vertices[vertices[:, 0] == x, 1].max()]
                                  for x in xs])))
    return out


def test_rounds_figure_draws_the_mean_and_a_t_band(tmp_path: Path, drawn: list[Saved]) -> None:
    runs = three_methods(tmp_path / "runs")
    plot_vs_rounds(runs, ["ITR"], tmp_path / "rounds.png", "error per round")
    (fig,) = titled(drawn, "error per round")
    assert "mean over 5 seeds; shaded: 95% Student t interval" in fig.get_suptitle()
    ax, paired = data_axes(fig)
    bands = band_limits(ax)
    assert len(bands) == 3  # one per method
    lines = {line.get_label(): line for line in ax.get_lines()}
    fedavg = lines["FedAvg"]
    assert list(fedavg.get_ydata()) == pytest.approx([np.mean(ITR["fedavg"]) + 2 - 2 * t / 10 for t in ROUNDS])
    for xs, limits in bands:  # each band is its curve's mean ± the hand-computed half-width, per round
        if np.allclose(limits.mean(axis=1)[-1], np.mean(ITR["fedavg"])):
            mean, half = by_hand(ITR["fedavg"])
            assert list(xs) == list(ROUNDS)
            assert limits[-1] == pytest.approx([mean - half, mean + half])
            break
    else:
        pytest.fail("no band around FedAvg's final mean")
    # the row below: each method minus FedAvg on the same seed, with the paired t band
    assert "FedAvg's ITR, same seed" in paired.get_ylabel()
    diffs = {line.get_label(): line for line in paired.get_lines() if line.get_label() in ("FedCLUP $\\lambda$=0.5",)}
    (line,) = diffs.values()
    d = list(np.subtract(ITR["fedclup"], ITR["fedavg"]))
    assert list(line.get_ydata()) == pytest.approx([np.mean(d)] * len(ROUNDS))  # the slope is the same for both
    mean, half = by_hand(d)
    assert any(lim[-1] == pytest.approx([mean - half, mean + half]) for _, lim in band_limits(paired))
    assert mean + half < 0  # the paired band is below 0 although the unpaired bands above overlap


def test_setting_figure_has_bands_not_error_bars(tmp_path: Path, drawn: list[Saved]) -> None:
    runs = three_methods(tmp_path / "a", R=1.0) + three_methods(tmp_path / "b", R=2.0)
    plot_vs_setting(runs, "data.R", ["ITR"], tmp_path / "r.png", "vs R")
    (fig,) = titled(drawn, "vs R")
    ax, paired = data_axes(fig)
    assert not ax.containers  # no errorbar containers
    limits = {tuple(np.round(lim[:, 0] + lim[:, 1], 9)): (xs, lim) for xs, lim in band_limits(ax)}
    mean, half = by_hand(ITR["local"])
    xs, lim = next(v for v in limits.values() if np.allclose(v[1].mean(axis=1), [mean, mean + 1.0]))
    assert list(xs) == [1.0, 2.0] and lim[0] == pytest.approx([mean - half, mean + half])
    d_mean, d_half = by_hand(list(np.subtract(ITR["local"], ITR["fedavg"])))
    assert any(list(xs) == [1.0, 2.0] and lim[0] == pytest.approx([d_mean - d_half, d_mean + d_half])
               for xs, lim in band_limits(paired))


def test_tradeoff_figure_bands_and_decimal_byte_label(tmp_path: Path, drawn: list[Saved]) -> None:
    runs = three_methods(tmp_path / "runs")
    plot_tradeoff(runs, tmp_path / "t.png", facet_key=None)
    (fig,) = titled(drawn, "trade-off")
    for ax in data_axes(fig):
        assert "decimal units: 1 KB = 1000 B" in ax.get_xlabel()
        assert len(band_limits(ax)) == 2  # FedAvg and FedCLUP against bytes
        assert any(c.get_gid() == BAND_GID for c in ax.patches)  # LocalTrain's final interval, across the panel
    one = [write_run(tmp_path / "one", method=m, seed=0, final=ITR[m][0]) for m in ITR]
    drawn.clear()
    plot_tradeoff(one, tmp_path / "one.png", facet_key=None)
    (fig,) = titled(drawn, "trade-off")
    assert "seeds" not in fig.get_suptitle() and not any(band_limits(ax) for ax in data_axes(fig))


# --- each seed draws its own data, initial model and client samples ----------------------------

SYNTHETIC_SWEEPS = ("stat_error_vs_R.yaml", "stat_error_vs_R_center.yaml", "total_error_1000.yaml",
                    "local_steps_ablation.yaml")


@pytest.mark.parametrize("name", SYNTHETIC_SWEEPS)
def test_synthetic_sweeps_have_five_seeds_that_change_data_init_and_sampling(name: str) -> None:
    sweep = load_sweep(REPO / "configs" / "sweeps" / name)
    assert sweep.seeds == SEEDS
    first = sweep.points[0]
    twin = next(p for p in sweep.points if p.name == first.name.replace("seed=0", "seed=1"))
    configs: list[Config] = [first.cfg, twin.cfg]
    assert [c.run.seed for c in configs] == [0, 1]
    data = [generate_clients(range(3), seed=c.run.seed, num_clients=c.data.num_clients,
                             num_samples=c.data.samples_per_client, dim=c.data.dim, num_classes=c.data.num_classes,
                             R=c.data.R, center_scale=c.data.center_scale) for c in configs]
    assert not np.array_equal(data[0].features, data[1].features)
    assert not np.array_equal(data[0].true_models, data[1].true_models)
    inits = [build_task(c, client_ids=range(2), device=torch.device("cpu")).init_model() for c in configs]
    assert not torch.equal(inits[0], inits[1])
    fraction = 0.5  # the paper sweeps sample every client except total_error_1000 (10%): draw half of 10
    samples = [[tuple(sample_clients(t, seed=c.run.seed, num_clients=10, sample_fraction=fraction)) for t in range(5)]
               for c in configs]
    assert samples[0] != samples[1]
    if configs[0].algorithm.sample_fraction < 1.0:
        drawn_ = [sample_clients(0, seed=c.run.seed, num_clients=c.data.num_clients,
                                 sample_fraction=c.algorithm.sample_fraction) for c in configs]
        assert not np.array_equal(drawn_[0], drawn_[1])


# --- the family table and figure over seeds ---------------------------------------------------

T_975_2 = 4.302652730  # two-sided 95% critical value for 2 degrees of freedom (published tables: 4.303)
FAMILY_ACC = {"fedavg": [0.70, 0.80, 0.75], "fedclup": [0.78, 0.86, 0.83], "ditto": [0.60, 0.95, 0.80],
              "local": [0.72, 0.81, 0.79]}


def write_family_run(root: Path, method: str, seed: int) -> Run:
    """Personal accuracy rises linearly to FAMILY_ACC[method][seed] over rounds 2, 4, 6; 1 MB of
    uplink per evaluation (none for LocalTrain)."""
    info = METHODS[method]
    final = FAMILY_ACC[method][seed]
    up = 1e6 if info.communicates else 0.0
    records = [{"round": t, "metrics": {"eval/acc_personal": final * t / 6, "eval/acc_global": 0.5},
                "comm": {"uplink_bytes": up * t / 2, "downlink_bytes": up * t / 2, "wire_bytes_model": 0.0}}
               for t in (0, 2, 4, 6)]
    config = {"run": {"seed": seed}, "algorithm": {"name": method, "lam": 0.5}, "data": {"kind": "fashion_mnist"}}
    summary = {"config": config, "method": info.to_dict(), "final": records[-1]["metrics"],
               "personal": {"acc_personal_mean": final, "acc_personal_p10": final - 0.2, "acc_personal_std": 0.1},
               "comm": records[-1]["comm"], "time": {"wall_s": 1.0}}
    return save_run(root / f"{method}__seed={seed}", summary, records)


def test_family_table_and_figure_over_three_seeds(tmp_path: Path, drawn: list[Saved]) -> None:
    from pfl_dist.sweep.family import markdown, table_rows, write_family

    runs = [write_family_run(tmp_path / "runs", m, s) for m in FAMILY_ACC for s in range(3)]
    rows = {row["method"]: row for row in table_rows(runs, fraction=0.95)[0]}
    for method, label in (("fedavg", "FedAvg"), ("fedclup", "FedCLUP λ=0.5"), ("ditto", "Ditto λ=0.5")):
        x = np.array(FAMILY_ACC[method])
        cell = rows[label]["acc_personal"]
        assert cell.estimate.mean == pytest.approx(x.mean())
        assert cell.estimate.half_width == pytest.approx(T_975_2 * x.std(ddof=1) / np.sqrt(3), rel=1e-8)
    # FedCLUP is above FedAvg by 0.08, 0.06, 0.08: the paired interval excludes 0; Ditto's
    # differences (-0.10, +0.15, +0.05) change sign: no mark against FedAvg
    assert rows["FedCLUP λ=0.5"]["acc_personal"].marks == ("A+", "L+")  # and above LocalTrain by 0.06, 0.05, 0.04
    assert not any(m.startswith("A") for m in rows["Ditto λ=0.5"]["acc_personal"].marks)
    assert rows["FedAvg"]["acc_personal"].marks == ("C\u2212",)
    # the target is 0.95 x the best mean final (FedCLUP's 0.823); FedCLUP's mean curve reaches it at round 6 (3 MB)
    target = 0.95 * np.mean(FAMILY_ACC["fedclup"])
    assert table_rows(runs, fraction=0.95)[1] == pytest.approx(target)
    assert rows["FedCLUP λ=0.5"]["uplink_bytes_to_target"] == pytest.approx(3e6)
    assert rows["FedAvg"]["uplink_bytes_to_target"] is None
    text = markdown(list(rows.values()), target=target, fraction=0.95)
    mean, half = np.mean(FAMILY_ACC["fedclup"]), T_975_2 * np.std(FAMILY_ACC["fedclup"], ddof=1) / np.sqrt(3)
    assert f"| FedCLUP λ=0.5 | {mean:.3f} ± {half:.3f} A+ L+ |" in text and "n = 3 seeds" in text
    # the figure: a mean curve with its band per communicating method, on a decimal byte axis
    write_family(runs, tmp_path / "out")
    (ax,) = data_axes(drawn[-1].figure)
    assert "decimal units" in ax.get_xlabel() and "3 seeds" in ax.get_title()
    bands = band_limits(ax)
    assert len(bands) == 3  # FedAvg, FedCLUP, Ditto (LocalTrain: a span across the panel)
    x = np.array(FAMILY_ACC["ditto"])
    half = T_975_2 * x.std(ddof=1) / np.sqrt(3)
    assert any(list(xs) == [1e6, 2e6, 3e6] and lim[-1] == pytest.approx([x.mean() - half, x.mean() + half])
               for xs, lim in bands)
    with open(tmp_path / "out" / "family_table.csv", newline="") as f:
        by_method = {row["method"]: row for row in csv.DictReader(f)}
    assert float(by_method["Ditto λ=0.5"]["acc_personal ci95"]) == pytest.approx(half)


IMAGE_SWEEPS = ("images.yaml", "codecs.yaml", "downlink.yaml", "pfl_family.yaml", "pfl_family_dirichlet.yaml",
                "pfl_family_options.yaml", "pfl_family_tuned.yaml")


@pytest.mark.parametrize("name", IMAGE_SWEEPS)
def test_image_sweeps_have_three_seeds_that_change_partition_init_and_sampling(name: str) -> None:
    from pfl_dist.tasks.images import build_image_model, client_index_sets

    sweep = load_sweep(REPO / "configs" / "sweeps" / name)
    assert sweep.seeds == (0, 1, 2)
    first = next(p for p in sweep.points if p.cfg.data.kind != "synthetic")
    twin = next(p for p in sweep.points if p.name == first.name.replace("seed=0", "seed=1"))
    configs = [first.cfg, twin.cfg]
    labels = np.repeat(np.arange(10), 6000)  # a Fashion-MNIST-sized training set: 6000 images per class
    splits = [client_index_sets(c, labels, client_ids=range(c.data.num_clients)) for c in configs]
    assert [s.partition_id for s in splits[0]] != [s.partition_id for s in splits[1]]
    assert not np.array_equal(splits[0][0].train, splits[1][0].train)
    inits = [build_image_model(c.model.kind, input_shape=(1, 28, 28), num_classes=10, head=c.model.head)
             .init_params(c.run.seed, dtype=torch.float32) for c in configs]
    assert not torch.equal(inits[0], inits[1])
    fraction = configs[0].algorithm.sample_fraction if configs[0].algorithm.sample_fraction < 1.0 else 0.5
    draws = [[tuple(sample_clients(t, seed=c.run.seed, num_clients=c.data.num_clients, sample_fraction=fraction))
              for t in range(5)] for c in configs]
    assert draws[0] != draws[1]


# --- the codec table and figure over seeds ----------------------------------------------------

CODEC_ACC = {"none": [0.80, 0.90, 0.85], "fp16": [0.80, 0.91, 0.85], "topk:0.01": [0.70, 0.85, 0.78]}
CODEC_UP = {"none": 1e6, "fp16": 5e5, "topk:0.01": 2e4}  # uplink bytes per round


def write_codec_run(root: Path, codec: str, seed: int) -> Run:
    """FedAvg on Fashion-MNIST with `codec`: personal accuracy rises linearly to CODEC_ACC[codec][seed]
    over rounds 0..4, CODEC_UP[codec] bytes up per round, 4 MB dense."""
    final = CODEC_ACC[codec][seed]
    records = [{"round": t, "metrics": {"eval/acc_personal": final * t / 4, "eval/acc_global": 0.4},
                "comm": {"uplink_bytes": CODEC_UP[codec] * t, "downlink_bytes": 1e6 * t,
                         "wire_bytes_model": CODEC_UP[codec] * t / 2, "uplink_bytes_dense": 1e6 * t}}
               for t in range(5)]
    config = {"run": {"seed": seed}, "algorithm": {"name": "fedavg", "lam": 0.0},
              "data": {"kind": "fashion_mnist"}, "comm": {"codec": codec}}
    summary = {"config": config, "method": METHODS["fedavg"].to_dict(), "world_size": 2,
               "final": records[-1]["metrics"], "comm": {**records[-1]["comm"], "num_collectives": 8},
               "num_rounds_completed": 4, "time": {"wall_s": 1.0}}
    return save_run(root / f"{codec.replace(':', '_')}__seed={seed}", summary, records)


def test_codec_table_and_figure_over_three_seeds(tmp_path: Path, drawn: list[Saved]) -> None:
    from pfl_dist.sweep.codecs import plot_codecs
    from pfl_dist.sweep.codecs import table_rows as codec_rows

    runs = [write_codec_run(tmp_path / "runs", codec, s) for codec in CODEC_ACC for s in range(3)]
    rows = {row["codec"]: row for row in codec_rows(runs)}
    assert list(rows) == ["none", "fp16", "topk:0.01"]  # one row per codec, not per run
    for codec in CODEC_ACC:
        x = np.array(CODEC_ACC[codec])
        cell = rows[codec]["final acc_personal"]
        assert cell.estimate.mean == pytest.approx(x.mean())
        assert cell.estimate.half_width == pytest.approx(T_975_2 * x.std(ddof=1) / np.sqrt(3), rel=1e-8)
    # top-k is below dense by 0.10, 0.05, 0.07 on the same seeds: significant; fp16 by 0, -0.01, 0: not
    assert rows["topk:0.01"]["final acc_personal"].marks == ("D\u2212",)
    assert rows["fp16"]["final acc_personal"].marks == ()
    # the target is the dense mean final (0.85) minus 0.01 = 0.84: fp16's mean curve reaches it at
    # round 4 (0.853), top-k's (0.777) never
    assert rows["fp16"]["target"] == "eval/acc_personal >= 0.84"
    assert rows["fp16"]["uplink to target"] == "2 MB" and rows["topk:0.01"]["uplink to target"] == ""
    assert rows["topk:0.01"]["compression"] == "50.0x"
    assert "D = codec=none" in markdown_table(list(rows.values()))
    plot_codecs(runs, tmp_path / "codecs.png", kind="fl", axis_label="cumulative FL bytes", title="FL bytes")
    (fig,) = titled(drawn, "update codecs")
    assert "mean over 3 seeds" in fig.get_suptitle()
    (ax,) = data_axes(fig)
    x = np.array(CODEC_ACC["topk:0.01"])
    half = T_975_2 * x.std(ddof=1) / np.sqrt(3)
    assert any(lim[-1] == pytest.approx([x.mean() - half, x.mean() + half]) for _, lim in band_limits(ax))
