"""The two kernel sets of the synthetic solver: float64 reference (bitwise equal to the
definition in LinearSoftmax.loss_and_grad) and float32 class-major (the same maths)."""

from __future__ import annotations

import pytest
import torch

from pfl_dist.models.linear import LinearSoftmax
from pfl_dist.solvers import linear as local_solver
from pfl_dist.solvers.linear import prox_gd_linear_softmax


def _problem(*, num_clients: int, num_classes: int, bias: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    model = LinearSoftmax(5, num_classes, bias=bias)
    return {
        "models": torch.randn(num_clients, model.num_params, generator=g, dtype=torch.float64),
        "features": torch.randn(num_clients, 40, 5, generator=g, dtype=torch.float64),
        "labels": torch.randint(0, num_classes, (num_clients, 40), generator=g),
        "anchor": torch.randn(model.num_params, generator=g, dtype=torch.float64),
    }


def _by_definition(
    model: LinearSoftmax, p: dict[str, torch.Tensor], *, lam: float, lr: float, steps: int
) -> torch.Tensor:
    w = p["models"].clone()
    for _ in range(steps):
        _, grad = model.loss_and_grad(w, p["features"], p["labels"], need_loss=False)
        if lam:
            grad.add_(w - p["anchor"], alpha=lam)
        w.sub_(grad, alpha=lr)
    return w


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("lam", [0.0, 0.3])
def test_float64_solver_is_the_definition_bit_for_bit(bias: bool, lam: float) -> None:
    # Prepare
    model = LinearSoftmax(5, 3, bias=bias)
    p = _problem(num_clients=7, num_classes=3, bias=bias)
    expected = _by_definition(model, p, lam=lam, lr=0.1, steps=25)
    # Execute
    got = prox_gd_linear_softmax(model, p["models"].clone(), p["features"], p["labels"], anchor=p["anchor"],
                                    lam=lam, lr=0.1, num_steps=25)
    # Assert
    assert torch.equal(got, expected)


@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("lam", [0.0, 0.3])
def test_float32_class_major_solver_matches_the_reference(
    num_classes: int, bias: bool, lam: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: cache chunks of 8 clients, so 30 clients take 4 chunks, the last one short.
    monkeypatch.setattr(local_solver, "_CHUNK_FEATURE_BYTES", 8 * 40 * 5 * 4)
    model = LinearSoftmax(5, num_classes, bias=bias)
    p = _problem(num_clients=30, num_classes=num_classes, bias=bias)
    expected = _by_definition(model, p, lam=lam, lr=0.1, steps=30)
    # Execute
    got = prox_gd_linear_softmax(model, p["models"].float(), p["features"].float(), p["labels"],
                                    anchor=p["anchor"].float(), lam=lam, lr=0.1, num_steps=30)
    # Assert: float32 rounding only
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("bias", [False, True])
def test_float32_evaluation_matches_the_reference(num_classes: int, bias: bool) -> None:
    model = LinearSoftmax(5, num_classes, bias=bias)
    p = _problem(num_clients=6, num_classes=num_classes, bias=bias)
    loss64, correct64 = model.loss_and_correct(p["models"], p["features"], p["labels"])
    loss32, correct32 = model.loss_and_correct(p["models"].float(), p["features"].float(), p["labels"])
    torch.testing.assert_close(loss32.double(), loss64, rtol=1e-5, atol=1e-6)
    assert torch.equal(correct32, correct64)
    shared = p["anchor"]
    loss64, correct64 = model.shared_loss_and_correct(shared, p["features"], p["labels"])
    expected = model.loss_and_correct(shared.expand(6, -1), p["features"], p["labels"])
    assert torch.equal(loss64, expected[0]) and torch.equal(correct64, expected[1])  # float64: the same kernels
    loss32, correct32 = model.shared_loss_and_correct(shared.float(), p["features"].float(), p["labels"])
    torch.testing.assert_close(loss32.double(), loss64, rtol=1e-5, atol=1e-6)
    assert torch.equal(correct32, correct64)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_float32_evaluation_breaks_ties_like_argmax(num_classes: int) -> None:
    """A zero model ties every class: argmax predicts class 0, so exactly the class-0 samples count."""
    model = LinearSoftmax(5, num_classes, bias=False)
    p = _problem(num_clients=4, num_classes=num_classes, bias=False)
    zeros = torch.zeros(4, model.num_params)
    expected = (p["labels"] == 0).sum(dim=1)
    assert torch.equal(model.loss_and_correct(zeros, p["features"].float(), p["labels"])[1], expected)
    assert torch.equal(model.shared_loss_and_correct(zeros[0], p["features"].float(), p["labels"])[1], expected)
