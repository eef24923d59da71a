"""ImageTask, local SGD and the CNN (pfl_dist.tasks.images, pfl_dist.solvers.padded, the client-maths path
of pfl_dist.algorithms.base, pfl_dist.models.cnn).

Mechanics run on a small learnable MNIST-layout dataset written here (class templates plus
noise). The paper's expected shape and the accuracy bars on the real data are slow runs in
tests/integration/test_paper_shape.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch

from pfl_dist.algorithms.base import local_sgd
from pfl_dist.checkpoint import StopRequest
from pfl_dist.config import Config, load_config
from pfl_dist.data.images import load_images
from pfl_dist.errors import ConfigError
from pfl_dist.evaluation import CLIENT_PREFIX
from pfl_dist.models.cnn import CNNModel, PaperCNN
from pfl_dist.runtime import init_runtime
from pfl_dist.sampling import client_block
from pfl_dist.solvers.padded import epoch_permutation, full_batch_weights, plan_epoch
from pfl_dist.tasks.base import Batch, Task, padded_batches
from pfl_dist.tasks.images import ImageTask, LogRegModel, check_image_config, client_index_sets, global_test_slice
from pfl_dist.train import run_session
from tests.helpers import run_inprocess, run_main, write_learnable_mnist

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_learnable_mnist(tmp_path_factory.mktemp("mnist"))


def small_config(mnist_dir: Path, *overrides: str) -> Config:
    """30 partitions of 2 classes x 50 images (90 train / 10 test each), 10 clients used."""
    return load_config(None, [f"data.data_dir={mnist_dir}", "data.kind=mnist", "data.num_partitions=30",
                              "data.num_clients=10", "algorithm.local_lr=0.01", "algorithm.global_lr=1/lam",
                              "algorithm.batch_size=32", "algorithm.local_epochs=1", *overrides])


# --- local SGD ---------------------------------------------------------------------------------


def test_epoch_plan_is_each_clients_own_shuffled_epoch() -> None:
    # Prepare: three clients with different sample counts, batch 4.
    counts, ids = [10, 3, 7], [5, 8, 9]
    # Execute
    plan = plan_epoch(counts, client_ids=ids, batch_size=4, seed=1, round_idx=2, epoch=0, dtype=torch.float64)
    # Assert: client i walks its own permutation in ceil(n_i / 4) steps, then sits out.
    assert plan.positions.shape == (3, 3, 4) and plan.ragged
    assert plan.active.tolist() == [[1, 1, 1], [1, 0, 1], [1, 0, 0]]
    for i, (n, client_id) in enumerate(zip(counts, ids, strict=True)):
        real = plan.weights[:, i] > 0
        expected = epoch_permutation(n, seed=1, round_idx=2, client_id=client_id, epoch=0)
        assert plan.positions[:, i][real].tolist() == expected.tolist()
        sums = plan.weights[:, i].sum(dim=1)
        assert torch.allclose(sums, plan.active[:, i])  # each real batch is a mean over its samples
    assert plan.weights[2, 0].tolist() == [0.5, 0.5, 0.0, 0.0]  # 10 = 4 + 4 + 2


class PaddedClients:
    """The two primitives the client-maths path reads (`batches`, `gradient`) on raw padded data."""

    def __init__(self, model: LogRegModel, x: torch.Tensor, y: torch.Tensor, counts: list[int], cfg: Config) -> None:
        self.model, self.x, self.y, self.counts, self.cfg = model, x, y, counts, cfg

    def full_batch(self, rows: torch.Tensor) -> Batch:
        weights = full_batch_weights([self.counts[int(r)] for r in rows], num_positions=self.x.shape[1],
                                     dtype=self.x.dtype)
        return Batch(self.x[rows], self.y[rows], weights)

    def batches(self, rows: torch.Tensor, *, round_idx: int, epochs: int | None = None,
                stream: int = 0) -> Iterator[Batch]:
        return padded_batches(self.full_batch, self.x, self.y, rows, counts=self.counts, first_client_id=0,
                              cfg=self.cfg, round_idx=round_idx, epochs=epochs, stream=stream, dtype=self.x.dtype)

    def gradient(self, models: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.model.weighted_grad(models, batch.x, batch.y, batch.weights)


def test_batched_sgd_equals_each_client_alone() -> None:
    # Prepare: 3 clients with 50, 37 and 12 samples, padded to 50, float64 logreg.
    g = torch.Generator().manual_seed(0)
    model, counts = LogRegModel(bias=True), [50, 37, 12]
    x = torch.rand(3, 50, 784, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (3, 50), generator=g)
    start = torch.randn(3, model.num_params, generator=g, dtype=torch.float64) * 0.01
    anchor = torch.zeros(model.num_params, dtype=torch.float64)
    cfg = load_config(None, ["data.kind=mnist", "algorithm.batch_size=8", "algorithm.local_epochs=3", "run.seed=3"])
    task = cast(Task, PaddedClients(model, x, y, counts, cfg))
    common = dict(anchor=anchor, lam=0.7, lr=0.05, round_idx=4)
    # Execute: all three at once, then each alone (as it would run on its own rank).
    together = local_sgd(task, start.clone(), torch.arange(3), **common)  # type: ignore[arg-type]
    alone = [local_sgd(task, start[i:i + 1].clone(), torch.tensor([i]), **common)  # type: ignore[arg-type]
             for i in range(3)]
    # Assert
    assert torch.allclose(together, torch.cat(alone), rtol=0, atol=1e-12)
    assert not torch.allclose(together, start)


def test_logreg_weighted_gradient_matches_autograd() -> None:
    g = torch.Generator().manual_seed(1)
    model = LogRegModel(bias=True)
    w = torch.randn(2, model.num_params, generator=g, dtype=torch.float64) * 0.1
    x = torch.rand(2, 6, 784, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (2, 6), generator=g)
    weights = torch.tensor([[0.25] * 4 + [0, 0], [1 / 6] * 6], dtype=torch.float64)
    leaf = w.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model.logits(leaf, x).transpose(1, 2), y, reduction="none")
    (loss * weights).sum().backward()
    assert leaf.grad is not None
    assert torch.allclose(model.weighted_grad(w, x, y, weights), leaf.grad, atol=1e-12)


# --- the CNN -----------------------------------------------------------------------------------


def test_cnn_vmap_equals_per_client_autograd_fallback() -> None:
    # Prepare: two clients with different weights, a padded batch of 3 for the second.
    vectorized, looped = CNNModel(), CNNModel(vectorize=False)
    assert vectorized.vectorize and not looped.vectorize
    assert vectorized.num_params == 320 + 18496 + 401536 + 1290  # conv1, conv2, fc1 (3136->128), fc2
    params = torch.stack([vectorized.init_params(s, dtype=torch.float64) for s in (0, 1)])
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 4, 1, 28, 28, generator=g, dtype=torch.float64)
    y = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    weights = torch.tensor([[0.25] * 4, [1 / 3] * 3 + [0.0]], dtype=torch.float64)
    # Execute
    grad_v = vectorized.weighted_grad(params, x, y, weights)
    grad_l = looped.weighted_grad(params, x, y, weights)
    # Assert: same gradients; logits equal the nn.Module with the state_dict loaded.
    assert torch.allclose(grad_v, grad_l, atol=1e-12) and grad_v.abs().sum() > 0
    module = PaperCNN().double()
    module.load_state_dict(vectorized.state_dict(params[1]))
    assert torch.allclose(vectorized.logits(params, x)[1], module(x[1]), atol=1e-12)
    assert torch.allclose(looped.logits(params, x), vectorized.logits(params, x), atol=1e-12)


def test_cnn_init_is_shared_by_seed() -> None:
    model = CNNModel()
    first, again, other = (model.init_params(s, dtype=torch.float32) for s in (0, 0, 1))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert float(first.abs().max()) <= 1 / 3 + 1e-6  # PyTorch's default bounds; conv1 has fan-in 9


# --- ImageTask ---------------------------------------------------------------------------------


def test_rank_materializes_exactly_its_clients(mnist_dir: Path) -> None:
    # Prepare
    cfg = small_config(mnist_dir)
    labels = load_images("mnist", data_dir=mnist_dir).train.labels
    full = client_index_sets(cfg, labels, client_ids=range(10))
    # Execute: the block rank 2 of 5 hosts.
    block = client_block(2, world_size=5, num_clients=10)
    task = ImageTask(cfg, client_ids=block, device=CPU, dtype=torch.float32)
    # Assert: its clients are clients 4 and 5 of the 1-rank partition, with their own pixels.
    assert [c.client_id for c in task.clients] == [4, 5]
    images = load_images("mnist", data_dir=mnist_dir).train.images
    for row, split in enumerate(task.clients):
        assert np.array_equal(split.train, full[split.client_id].train)
        assert np.array_equal(split.test, full[split.client_id].test)
        expected = torch.from_numpy(images[split.train].reshape(-1, 784) / 255.0).float()
        assert torch.equal(task.train_x[row, : len(split.train)], expected)
    assert task.sample_counts.tolist() == [90.0, 90.0] and task.test_counts.tolist() == [10, 10]
    assert task.class_mask.sum(dim=1).tolist() == [2, 2]


def test_partition_is_the_same_for_every_world_size(mnist_dir: Path) -> None:
    cfg = small_config(mnist_dir)
    labels = load_images("mnist", data_dir=mnist_dir).train.labels
    full = client_index_sets(cfg, labels, client_ids=range(10))
    for world_size in (2, 3, 5):
        pieces = [s for r in range(world_size)
                  for s in client_index_sets(cfg, labels, client_ids=client_block(r, world_size=world_size,
                                                                                  num_clients=10))]
        assert all(np.array_equal(a.train, b.train) and np.array_equal(a.test, b.test)
                   for a, b in zip(pieces, full, strict=True))
    assert len({c.partition_id for c in full}) == 10


def test_global_test_slices_cover_the_test_set_once() -> None:
    for world_size in (1, 3, 4, 10):
        covered = [i for r in range(world_size)
                   for i in range(10000)[global_test_slice(10000, client_ids=client_block(r, world_size=world_size,
                                                                                    num_clients=10),
                                                    num_clients=10)]]
        assert covered == list(range(10000))


def _reduce(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The sums over ranks, without the per-client pairs (the Trainer places or summarizes them)."""
    return {k: sum((p[k] for p in parts), torch.zeros((), dtype=torch.float64)) for k in parts[0]
            if not k.startswith(CLIENT_PREFIX)}


def test_metric_sums_add_up_across_ranks_and_match_numpy(mnist_dir: Path) -> None:
    # Prepare: an all-zero logreg model, whose restricted prediction is each client's lowest class.
    cfg = small_config(mnist_dir)
    whole = ImageTask(cfg, client_ids=range(10), device=CPU, dtype=torch.float32)
    shards = [ImageTask(cfg, client_ids=client_block(r, world_size=3, num_clients=10), device=CPU,
                        dtype=torch.float32) for r in range(3)]
    zero = torch.zeros(whole.num_params)
    # Execute
    whole_sums = whole.metric_sums(zero.repeat(10, 1), zero)
    metrics = whole.finalize_metrics(_reduce([whole_sums]), zero)
    sharded = [s.metric_sums(zero.repeat(len(s.client_ids), 1), zero) for s in shards]
    # Assert: the 3-rank sums reduce to the 1-rank metrics; the numbers match a numpy recount.
    assert whole.finalize_metrics(_reduce(sharded), zero) == pytest.approx(metrics, rel=1e-9)
    pairs = [k for k in whole_sums if k.startswith(CLIENT_PREFIX)]
    assert set(pairs) == {f"{CLIENT_PREFIX}{name}" for name in ("acc_personal", "loss_personal", "naive_acc",
                                                                "naive_loss", "improvement_over_naive")}
    for key in pairs:  # each client's own numerator and denominator, in client order, on any sharding
        assert torch.equal(torch.cat([p[key] for p in sharded], dim=1), whole_sums[key])
    assert float(whole_sums["client/acc_personal"][0].sum()) == float(whole_sums["correct_personal"])
    assert float(whole_sums["client/naive_acc"][0].sum()) == float(whole_sums["naive_correct"])
    # A cohort's rows: the sums of those clients only, and their pairs
    rows = torch.tensor([1, 4, 7])
    cohort = whole.metric_sums(zero.repeat(3, 1), zero, rows)
    for key in pairs:
        assert torch.equal(cohort[key], whole_sums[key][:, rows])
    for total, key in (("correct_personal", "acc_personal"), ("naive_correct", "naive_acc"),
                       ("loss_personal_sum", "loss_personal"), ("naive_loss_sum", "naive_loss"),
                       ("num_test_personal", "acc_personal")):
        column = 1 if total == "num_test_personal" else 0
        assert float(cohort[total]) == pytest.approx(float(whole_sums[f"{CLIENT_PREFIX}{key}"][column, rows].sum()),
                                                     rel=1e-12)
    assert float(cohort["correct_global"]) == float(whole_sums["correct_global"])  # the official test set
    labels = load_images("mnist", data_dir=mnist_dir).train.labels
    test = [labels[c.test] for c in whole.clients]
    lowest = [labels[c.train].min() for c in whole.clients]
    majority = [np.bincount(labels[c.train], minlength=10).argmax() for c in whole.clients]
    num_test = sum(len(t) for t in test)

    def share(predicted: list[int]) -> float:
        return sum(int((t == k).sum()) for t, k in zip(test, predicted, strict=True)) / num_test

    assert metrics["acc_personal"] == pytest.approx(share(lowest))
    assert metrics["naive_acc"] == pytest.approx(share(majority))
    assert metrics["loss_personal"] == pytest.approx(np.log(2), rel=1e-6)  # uniform over 2 own classes
    assert metrics["acc_global"] == pytest.approx(0.1) and metrics["loss_global"] == pytest.approx(np.log(10))
    assert metrics["improvement_over_naive"] == pytest.approx(metrics["acc_personal"] - metrics["naive_acc"])


def test_logreg_smoothness_is_the_papers_bound(mnist_dir: Path) -> None:
    task = ImageTask(small_config(mnist_dir), client_ids=range(3), device=CPU, dtype=torch.float32)
    expected = 0.0
    for row, n in enumerate(task.train_counts):
        x = np.hstack([task.train_x[row, :n].double().numpy(), np.ones((n, 1))])  # pixels and the bias
        expected = max(expected, np.linalg.norm(x, 2) ** 2 / (4 * n))  # lambda_max(X^T X) / (4 n)
    assert task.local_smoothness() == pytest.approx(expected, rel=1e-9)


def test_image_config_errors_name_the_key(mnist_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.num_clients \(40\) must be <= data.num_partitions \(30\)"):
        check_image_config(small_config(mnist_dir, "data.num_clients=40"))
    with pytest.raises(ConfigError, match="algorithm.smoothness 'auto' has no formula for model.kind 'cnn'"):
        check_image_config(small_config(mnist_dir, "model.kind=cnn", "algorithm.local_lr=auto"))
    check_image_config(small_config(mnist_dir, "model.kind=cnn"))  # explicit step sizes need no L


# --- whole runs (one process) --------------------------------------------------------------------


def test_small_logreg_run_learns(mnist_dir: Path, tmp_path: Path) -> None:
    # (The CNN's whole-run check is tests/distributed/test_images_distributed.py, on real digits.)
    summary = run_inprocess(tmp_path, f"data.data_dir={mnist_dir}", "data.kind=mnist", "data.num_partitions=30",
                            "data.num_clients=2", "algorithm.local_lr=0.05", "algorithm.global_lr=1/lam",
                            "algorithm.batch_size=16", "algorithm.local_epochs=3", "train.num_rounds=2")
    final = summary["final"]
    assert final["eval/acc_personal"] >= 0.9 and final["eval/improvement_over_naive"] >= 0.3, final
    assert final["eval/loss_personal"] < final["eval/naive_loss"], final
    assert final["eval/acc_global"] >= 0.12, final  # 2 clients see at most 4 classes; chance is 0.1
    assert summary["algorithm"]["global_step_factor"] == 1.0


def test_ditto_at_lambda_200_with_default_steps_trains_on_images(mnist_dir: Path, tmp_path: Path) -> None:
    # Execute: local_lr and personal_lr auto (1/L and 1/(L + lam)) on logistic regression
    summary = run_inprocess(tmp_path, f"data.data_dir={mnist_dir}", "data.kind=mnist", "data.num_partitions=30",
                            "data.num_clients=3", "algorithm.name=ditto", "algorithm.lam=200",
                            "algorithm.batch_size=32", "algorithm.local_epochs=1", "train.num_rounds=3")
    # Assert
    final, algo = summary["final"], summary["algorithm"]
    assert final["eval/acc_personal"] >= 0.9, final  # was 0.77
    assert final["eval/loss_personal"] < final["eval/naive_loss"], final  # was 6.4
    assert algo["personal_lr"] == pytest.approx(1 / (algo["smoothness"] + 200))


# --- bad data: one clear line, exit code 2 -------------------------------------------------------


def _assert_one_clear_line(result, fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pfl_dist: error: ") and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("module", ["pfl_dist.train", "pfl_dist.launch"])
def test_missing_and_corrupt_data_exit_2_with_one_line(tmp_path: Path, module: str) -> None:
    launch = ["--nproc-per-node=2"] if module == "pfl_dist.launch" else []
    args = [*launch, "--config", "configs/mnist_logreg.yaml", f"run.out_dir={tmp_path}"]
    missing = run_main(*args, f"data.data_dir={tmp_path / 'nowhere'}", module=module)
    _assert_one_clear_line(missing, f"missing MNIST file {tmp_path / 'nowhere'}/train-images-idx3-ubyte(.gz)")
    (tmp_path / "corrupt").mkdir()
    corrupt = write_learnable_mnist(tmp_path / "corrupt", num_train=100, num_test=10)
    raw = (corrupt / "train-images-idx3-ubyte.gz").read_bytes()
    (corrupt / "train-images-idx3-ubyte.gz").write_bytes(raw[: len(raw) // 2])
    result = run_main(*args, f"data.data_dir={corrupt}", module=module)
    _assert_one_clear_line(result, "corrupt IDX file")


def test_an_image_run_on_a_cohort_reports_standard_errors_of_the_clients_metrics(mnist_dir: Path,
                                                                                  tmp_path: Path) -> None:
    # Execute: 10 clients, a cohort of 4 evaluated, on the CNN (a body/head method's path too)
    summary = run_inprocess(tmp_path, f"data.data_dir={mnist_dir}", "data.kind=mnist", "data.num_partitions=30",
                            "data.num_clients=10", "algorithm.local_lr=0.05", "algorithm.global_lr=1/lam",
                            "algorithm.batch_size=16", "algorithm.local_epochs=1", "train.num_rounds=2",
                            "train.eval_clients=4")
    # Assert: the metrics measured on the clients' test splits carry one; w_g's official test set none
    final = summary["final"]
    for name in ("acc_personal", "loss_personal", "naive_acc", "naive_loss", "improvement_over_naive"):
        assert 0 <= final[f"eval/{name}_se"] < 10, final  # acc_personal may be 1.0 on every member: SE 0
    assert final["eval/loss_personal_se"] > 0 and final["eval/naive_loss_se"] > 0, final
    assert "eval/acc_global" in final and "eval/acc_global_se" not in final
    assert set(summary["personal"]) == {"acc_personal_mean", "acc_personal_p10", "acc_personal_std"}


@pytest.mark.parametrize(("method", "model"), [("fedavg_ft", "logreg"), ("perfedavg", "logreg"), ("fedrep", "cnn")])
def test_a_cohort_evaluates_only_its_members_models_on_minibatches(mnist_dir: Path, tmp_path: Path,
                                                                     method: str, model: str) -> None:
    # Prepare: a trained image run on a cohort (FedAvg-FT fine-tunes with minibatch SGD at evaluation)
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "run.name=run", f"data.data_dir={mnist_dir}",
                             "data.kind=mnist", "data.num_partitions=30", "data.num_clients=10", f"model.kind={model}",
                             f"algorithm.name={method}", "algorithm.local_lr=0.05", "algorithm.personal_lr=0.05",
                             "algorithm.batch_size=16", "algorithm.local_epochs=1", "train.num_rounds=1",
                             "train.dtype=float64", "train.eval_clients=4"])
    trainer = run_session(cfg, init_runtime(cfg), StopRequest())
    model = trainer.evaluation_model()
    # Execute / Assert: the members' models alone are the members' rows of every client's
    got = trainer._evaluated_models(model, 1)
    everyone = trainer.algorithm.personal_models(trainer.task, trainer.client_state, model, 1)
    assert trainer.cohort_rows is not None and len(got) == 4
    torch.testing.assert_close(got, everyone[trainer.cohort_rows], rtol=1e-12, atol=1e-12)
