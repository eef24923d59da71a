"""A user's algorithm from outside the repo (examples/custom_algorithm.py's FedAvgM, copied to a
temporary folder on PYTHONPATH) launched by the CLI (`python -m pfl_dist.launch`) on 2 torchrun
ranks: at momentum 0 its final global model is a FedAvg run's to 1e-10 in float64, and the ledger
counts exactly messages x its model's parameter bytes (issue 23's acceptance)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, messages_sent, read_summary, run_cli, user_folder

pytestmark = pytest.mark.distributed

ROUNDS, CLIENTS, FRACTION = 4, 6, 0.5
OVERRIDES = ("--nproc-per-node=2", f"data.num_clients={CLIENTS}", "data.samples_per_client=60",
             f"train.num_rounds={ROUNDS}", f"train.eval_every={ROUNDS}", "algorithm.num_local_steps=20",
             f"algorithm.sample_fraction={FRACTION}", "train.dtype=float64")


def final_model(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "final" / "global.pt", weights_only=True)


def test_the_fedavgm_plugin_on_two_ranks_at_momentum_0_is_fedavg_with_exact_bytes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: the user's module in a folder of its own, on the ranks' PYTHONPATH
    user_folder(tmp_path, monkeypatch, user_algorithm=(REPO / "examples" / "custom_algorithm.py").read_text())
    out = tmp_path / "runs"
    messages = messages_sent(ROUNDS, num_clients=CLIENTS, sample_fraction=FRACTION)
    # Execute: the plug-in (run.name auto) and FedAvg, each launched on 2 ranks
    plugin = run_cli(*OVERRIDES, f"run.out_dir={out}", "algorithm.name=user_algorithm:FedAvgM",
                     "algorithm.params.momentum=0.0", module="pfl_dist.launch", timeout=600)
    fedavg = run_cli(*OVERRIDES, f"run.out_dir={out}", "algorithm.name=fedavg", "run.name=fedavg",
                     module="pfl_dist.launch", timeout=600)
    # Assert: both ran on 2 ranks; the plug-in's run dir has no ':'; the same w_g to 1e-10;
    # uplink = messages x the model's float64 parameter bytes, exactly, for both
    assert plugin.returncode == 0, plugin.stderr
    assert fedavg.returncode == 0, fedavg.stderr
    (plugin_dir,) = out.glob("user_algorithm.FedAvgM-*")
    summary, reference = read_summary(plugin_dir), read_summary(out / "fedavg")
    assert summary["world_size"] == reference["world_size"] == 2
    assert summary["method"]["name"] == "user_algorithm:FedAvgM" and summary["algorithm"]["momentum"] == 0.0
    ours, theirs = final_model(plugin_dir), final_model(out / "fedavg")
    assert list(ours) == list(theirs)
    difference = max(float((ours[key] - theirs[key]).abs().max()) for key in ours)
    assert difference <= 1e-10, difference
    param_bytes = 8 * sum(t.numel() for t in ours.values())
    assert summary["participation"]["num_local_updates"] == messages == 12
    assert summary["comm"]["uplink_bytes"] == reference["comm"]["uplink_bytes"] == messages * param_bytes
