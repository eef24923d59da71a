"""The one client-maths path (pfl_dist/algorithms/base.py: `prox_step`, `local_sgd`) and its fast path.

`local_sgd(..., fused=True)` hands the configured local phase to the task's fused solver where one
applies (`Task.fused_local_phase`: the linear softmax kernels of pfl_dist/solvers/linear.py on
equal-count clients, full-batch). Each kernel of that solver must compute the generic loop's
steps (`prox_step` over `Task.batches`) on the same inputs: measured here to 1e-12 in float64
(the kernels divide by n where the loop multiplies by the weights 1/n, so they are not bitwise
equal; the goldens pin the fused one for the paper's four methods). The padded image solvers the
loop replaced were bitwise the loop (their steps, in their order), so there is no fast path left
for them; tests/unit/test_image_task.py checks the loop against each client alone.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pfl_dist.algorithms import Algorithm, FedAvg, FedProx
from pfl_dist.algorithms.base import ClientRound, local_sgd
from pfl_dist.config import load_config
from pfl_dist.solvers import linear as linear_solver
from pfl_dist.tasks import build_task
from pfl_dist.tasks.base import Task
from tests.helpers import REPO, write_learnable_mnist

CPU = torch.device("cpu")
ROWS = torch.tensor([0, 2, 3, 5])  # a round's sample: not every client, not contiguous


def synthetic(*overrides: str, dtype: str = "float64") -> Task:
    cfg = load_config(None, ["data.num_clients=6", "data.samples_per_client=50", "run.seed=4",
                             "algorithm.num_local_steps=30", f"train.dtype={dtype}", *overrides])
    return build_task(cfg, client_ids=range(6), device=CPU)


def start_and_anchor(task: Task, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    start = torch.randn(len(ROWS), task.num_params, generator=g, dtype=torch.float64)
    anchor = torch.randn(task.num_params, generator=g, dtype=torch.float64)
    return start.to(dtype), anchor.to(dtype)


def stable_lr(task: Task, lam: float) -> float:
    """1/(L + lam), algorithm.local_lr auto: a larger step diverges, and rounding differences with it."""
    return 1.0 / (task.local_smoothness() + lam)


def generic(task: Task, start: torch.Tensor, anchor: torch.Tensor, *, lam: float, lr: float) -> torch.Tensor:
    return local_sgd(task, start.clone(), ROWS, round_idx=1, lr=lr, anchor=anchor, lam=lam)


@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_fused_float64_reference_kernels_are_the_generic_loop(num_classes: int, lam: float) -> None:
    # Prepare
    task = synthetic(f"data.num_classes={num_classes}")
    start, anchor = start_and_anchor(task, torch.float64)
    # Execute: the dispatch (fused=True) and the loop on the same inputs.
    lr = stable_lr(task, lam)
    fused = local_sgd(task, start.clone(), ROWS, round_idx=1, lr=lr, anchor=anchor, lam=lam, fused=True)
    loop = generic(task, start, anchor, lam=lam, lr=lr)
    # Assert: the same steps up to float64 rounding, and the steps did move the models.
    torch.testing.assert_close(fused, loop, rtol=0, atol=1e-12)
    assert float((loop - start).abs().max()) > 1e-2


@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_fused_class_major_kernels_are_the_generic_loop(num_classes: int, lam: float) -> None:
    """The float32 kernels (`_class_major_chunk`: the shrink and the gradient as one baddbmm, and
    the two-class margin form) run on float64 inputs here, so their maths is compared at 1e-12."""
    # Prepare
    task = synthetic(f"data.num_classes={num_classes}")
    start, anchor = start_and_anchor(task, torch.float64)
    features, labels = task.features[ROWS], task.labels[ROWS]  # type: ignore[attr-defined]
    # Execute
    lr = stable_lr(task, lam)
    fused = linear_solver._class_major_chunk(task.model, start.clone(), features, labels,  # type: ignore[attr-defined]
                                             anchor=anchor, lam=lam, lr=lr, num_steps=30)
    loop = generic(task, start, anchor, lam=lam, lr=lr)
    # Assert
    torch.testing.assert_close(fused, loop, rtol=0, atol=1e-12)


def test_float32_dispatch_is_the_generic_loop_up_to_float32_rounding() -> None:
    task = synthetic("data.num_classes=3", dtype="float32")
    start, anchor = start_and_anchor(task, torch.float32)
    lr = stable_lr(task, 0.5)
    fused = local_sgd(task, start.clone(), ROWS, round_idx=1, lr=lr, anchor=anchor, lam=0.5, fused=True)
    loop = generic(task, start, anchor, lam=0.5, lr=lr)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, loop, rtol=1e-5, atol=1e-5)


@pytest.fixture
def fused_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per call of the fused solver from the linear tasks."""
    calls: list[int] = []
    original = linear_solver.prox_gd_linear_softmax

    def counting(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("pfl_dist.tasks.linear_clients.prox_gd_linear_softmax", counting)
    return calls


def test_the_fused_solver_is_taken_only_where_it_applies(fused_calls: list[int]) -> None:
    # Prepare
    calls = fused_calls
    task = synthetic()
    start, anchor = start_and_anchor(task, torch.float64)
    common = {"round_idx": 1, "lr": 0.2, "anchor": anchor, "lam": 0.5}
    # Execute + Assert: asked for and applicable -> fused; otherwise the loop.
    local_sgd(task, start.clone(), ROWS, fused=True, **common)  # type: ignore[arg-type]
    assert len(calls) == 1
    local_sgd(task, start.clone(), ROWS, **common)  # type: ignore[arg-type]  # not asked for
    local_sgd(task, start.clone(), ROWS, fused=True, correction=torch.zeros_like(anchor), **common)  # type: ignore[arg-type]
    local_sgd(task, start.clone(), ROWS, fused=True, trained=slice(0, 5), **common)  # type: ignore[arg-type]
    local_sgd(task, start.clone(), ROWS, fused=True, epochs=2, **common)  # type: ignore[arg-type]
    assert len(calls) == 1


@pytest.mark.parametrize("method", [FedAvg, FedProx])
def test_the_paper_methods_take_the_fused_solver_on_synthetic_data(method: type, fused_calls: list[int]) -> None:
    # Prepare
    calls = fused_calls
    task = synthetic(f"algorithm.name={method.info.name}")
    algorithm = method(task.cfg.algorithm, smoothness=task.local_smoothness())  # type: ignore[attr-defined]
    start, anchor = start_and_anchor(task, torch.float64)
    # Execute
    out = algorithm.client_update(ClientRound(task, ROWS, 0, anchor), {"local_models": start})
    # Assert: fused, and the loop's result to 1e-12.
    assert len(calls) == 1
    loop = local_sgd(task, anchor.expand_as(start).clone(), ROWS, round_idx=0, lr=algorithm.local_lr, anchor=anchor,
                     lam=algorithm.prox_weight)
    torch.testing.assert_close(out.sent, loop, rtol=0, atol=1e-12)


def npz_clients(directory: Path, counts: tuple[int, ...]) -> Task:
    """A client_files task (float64, 3 classes, 4 features) of NPZ clients with these sample counts."""
    rng = np.random.default_rng(1)
    for k, n in enumerate(counts):
        np.savez(directory / f"{k + 1}_client_data.npz", X=rng.standard_normal((n, 4)), y=rng.integers(0, 3, size=n))
    cfg = load_config(None, ["data.kind=client_files", f"data.data_dir={directory}", f"data.num_clients={len(counts)}",
                             "data.dim=4", "data.num_classes=3", "algorithm.num_local_steps=25", "train.dtype=float64"])
    return build_task(cfg, client_ids=range(len(counts)), device=CPU)


@pytest.mark.parametrize("counts", [(5, 9, 14), (9, 9, 9)])
def test_fused_is_taken_on_equal_counts_only(tmp_path: Path, counts: tuple[int, ...]) -> None:
    # Prepare
    task = npz_clients(tmp_path, counts)
    rows = torch.arange(len(counts))
    start = torch.from_numpy(np.random.default_rng(2).standard_normal((len(counts), task.num_params)))
    anchor = start[0].clone()
    lr = stable_lr(task, 0.5)
    # Execute
    fast = task.fused_local_phase(start.clone(), rows, anchor=anchor, lam=0.5, lr=lr, round_idx=0)
    fused = local_sgd(task, start.clone(), rows, round_idx=0, lr=lr, anchor=anchor, lam=0.5, fused=True)
    loop = local_sgd(task, start.clone(), rows, round_idx=0, lr=lr, anchor=anchor, lam=0.5)
    # Assert: clients of different sizes have no fused solver and take the loop, bit for bit;
    # equal ones take the fused solver, equal to the loop up to rounding.
    if len(set(counts)) > 1:
        assert fast is None and torch.equal(fused, loop)
    else:
        assert fast is not None and torch.equal(fused, fast)
        torch.testing.assert_close(fused, loop, rtol=0, atol=1e-12)
    assert not torch.equal(loop, start)


# --- docs/EXTENDING.md, "### The client maths: one path" -----------------------------------------


def documented_classes() -> dict[str, type[Algorithm]]:
    text = (REPO / "docs" / "EXTENDING.md").read_text()
    section = text.split("\n## An algorithm\n", 1)[1].split("\n## ", 1)[0]
    section = section.split("\n### The client maths", 1)[1].split("\n### ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    namespace: dict[str, Any] = {}
    exec(compile(code, "EXTENDING.md", "exec"), namespace)  # noqa: S102 - the documented example
    return {name: namespace[name] for name in ("FedProxByLoop", "FedProxByStep")}


def client_updates(task: Task, classes: list[type[Algorithm]]) -> list[torch.Tensor]:
    """Each class's sent models for the same round, clients and w_g, built as FedProx is."""
    cfg = task.cfg.algorithm  # type: ignore[attr-defined]
    smoothness = 1.0 if cfg.local_lr != "auto" else task.local_smoothness()
    start, global_model = start_and_anchor(task, torch.float64)
    rows = torch.arange(len(start))
    return [cls(cfg, smoothness=smoothness).client_update(ClientRound(task, rows, 1, global_model),
                                                          {"local_models": start.clone()}).sent
            for cls in classes]


def test_the_documented_client_maths_is_fedprox_on_synthetic_data() -> None:
    documented = documented_classes()
    task = synthetic("algorithm.name=fedprox")
    builtin, by_loop, by_step = client_updates(task, [FedProx, documented["FedProxByLoop"],
                                                      documented["FedProxByStep"]])
    assert torch.equal(by_loop, builtin)
    torch.testing.assert_close(by_step, builtin, rtol=0, atol=1e-12)
    assert not torch.equal(by_step, builtin)  # the fused solver rounds otherwise: the loop did run


def test_the_documented_client_maths_is_fedprox_on_images(tmp_path: Path) -> None:
    documented = documented_classes()
    cfg = load_config(None, [f"data.data_dir={write_learnable_mnist(tmp_path)}", "data.kind=mnist",
                             "data.num_partitions=30", "data.num_clients=4", "algorithm.name=fedprox",
                             "algorithm.local_lr=0.05", "algorithm.batch_size=16", "algorithm.local_epochs=2",
                             "train.dtype=float64"])
    task = build_task(cfg, client_ids=range(4), device=CPU)
    builtin, by_loop, by_step = client_updates(task, [FedProx, documented["FedProxByLoop"],
                                                      documented["FedProxByStep"]])
    assert torch.equal(by_loop, builtin) and torch.equal(by_step, builtin)
