from __future__ import annotations

import torch

from pfl_dist.models.linear import LinearSoftmax


def _autograd_reference(model: LinearSoftmax, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    w = w.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model.logits(w, x).transpose(1, 2), y, reduction="none").mean(1)
    loss.sum().backward()
    assert w.grad is not None
    return w.grad


def test_analytic_gradient_matches_autograd() -> None:
    g = torch.Generator().manual_seed(0)
    for bias in (False, True):
        model = LinearSoftmax(6, 3, bias=bias)
        w = torch.randn(4, model.num_params, generator=g, dtype=torch.float64)
        x = torch.randn(4, 9, 6, generator=g, dtype=torch.float64)
        y = torch.randint(0, 3, (4, 9), generator=g)
        loss, grad = model.loss_and_grad(w, x, y)
        expected_loss, _ = model.loss_and_correct(w, x, y)
        assert loss is not None and torch.allclose(loss, expected_loss)
        assert torch.allclose(grad, _autograd_reference(model, w, x, y), atol=1e-12)


def test_state_dict_views_flat_parameters() -> None:
    model = LinearSoftmax(3, 2, bias=True)
    named = model.state_dict(torch.arange(8.0))
    assert named["weight"].shape == (3, 2) and torch.equal(named["bias"], torch.tensor([6.0, 7.0]))
