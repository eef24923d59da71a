"""The fused fast path of the client maths: K full-batch proximal steps on
L_i(w) + (lam/2)||w - w_g||^2 for linear softmax models, vectorized over clients,

    w <- w - eta * (grad L_i(w) + lam * (w - w_g)),

the steps of the one client-maths path (pfl_dist/algorithms/base.py: `prox_step` looped by
`local_sgd`), which reaches this through `Task.fused_local_phase` when asked (`fused=True`) on
equal-count clients. tests/unit/test_client_maths.py checks both kernels below against that loop
(1e-12 in float64).

`models` is (k, P), one row per sampled client of this rank, updated in place. Two kernels run
this same update; `reference_kernels(dtype)` (models/linear.py) picks one:

- float64, the reference kernels: exactly the operations of `LinearSoftmax.loss_and_grad`, so a
  float64 run is bitwise reproducible (tests/unit/test_golden.py pins one). Only changes that
  keep every bit are allowed here: preallocated buffers, `p - onehot` for the scatter of -1
  (the same IEEE operation), and a contiguous X^T for the gradient product.
- float32 (the default), the class-major kernels: the same maths, reorganised for speed; float32
  rounding differs from the reference in the last bits. See `_class_major_chunk`.
"""

from __future__ import annotations

import torch

from pfl_dist.models.linear import LinearSoftmax, reference_kernels

# Clients are trained in chunks whose features stay in a core's L2 cache for all K steps
# (clients are independent within the local phase, so chunking changes no result of a client).
_CHUNK_FEATURE_BYTES = 512 * 1024


def prox_gd_linear_softmax(
    model: LinearSoftmax,
    models: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    anchor: torch.Tensor,
    lam: float,
    lr: float,
    num_steps: int,
) -> torch.Tensor:
    """Full-batch GD for `num_steps` steps (the paper's synthetic solver); returns `models`."""
    if len(models) == 0:
        return models
    if reference_kernels(models.dtype):
        return _reference_steps(model, models, features, labels, anchor=anchor, lam=lam, lr=lr, num_steps=num_steps)
    client_bytes = max(1, features[0].numel() * features.element_size())
    chunk = max(1, _CHUNK_FEATURE_BYTES // client_bytes)
    for start in range(0, len(models), chunk):
        rows = slice(start, start + chunk)
        models[rows] = _class_major_chunk(model, models[rows], features[rows], labels[rows], anchor=anchor,
                                          lam=lam, lr=lr, num_steps=num_steps)
    return models


def _reference_steps(
    model: LinearSoftmax,
    models: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    anchor: torch.Tensor,
    lam: float,
    lr: float,
    num_steps: int,
) -> torch.Tensor:
    """`loss_and_grad` then the proximal step, bit for bit, without per-step allocations."""
    num_clients, num_samples = features.shape[:2]
    weights = model.weight_matrix(models)  # a view: follows the in-place updates
    onehot = torch.nn.functional.one_hot(labels, model.num_classes).to(models.dtype)
    features_t = features.transpose(1, 2).contiguous()
    logits = torch.empty(num_clients, num_samples, model.num_classes, dtype=models.dtype, device=models.device)
    grad = torch.empty_like(models)
    grad_weights = grad[:, : model.num_weights].view(-1, model.dim, model.num_classes)
    offset = torch.empty_like(models)
    for _ in range(num_steps):
        torch.bmm(features, weights, out=logits)
        if model.bias:
            logits.add_(models[:, model.num_weights :].unsqueeze(1))
        residual = torch.softmax(logits, dim=-1).sub_(onehot).div_(num_samples)
        torch.bmm(features_t, residual, out=grad_weights)
        if model.bias:
            grad[:, model.num_weights :] = residual.sum(dim=1)
        if lam:
            grad.add_(torch.sub(models, anchor, out=offset), alpha=lam)
        models.sub_(grad, alpha=lr)
    return models


def _class_major_chunk(
    model: LinearSoftmax,
    models: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    anchor: torch.Tensor,
    lam: float,
    lr: float,
    num_steps: int,
) -> torch.Tensor:
    """The float32 kernels, on one chunk of clients; returns the new (k, P) models.

    - Class-major layout: logits are (k, C, n), features (k, D, n) with D = d (+1 for a bias,
      as a row of ones, which makes [W; b] one (D, C) matrix). Small-C softmax along a middle
      dimension vectorizes over samples; along the last dimension it runs row by row (~15x
      slower at C = 2).
    - Deviation from the anchor: with U = (W - W_g)^T, one step is
          U <- (1 - eta lam) U - (eta / n) (P - Y) X,   logits = U X^T + W_g^T X^T,
      so the proximal shrink and the gradient are ONE baddbmm, and W_g^T X^T is computed once
      per round: 4 kernels per step instead of 8.
    - Two classes: softmax shift invariance leaves U_1 + U_0 untouched by the data (it only
      shrinks by (1 - eta lam) per step), and the logit difference follows
          delta <- (1 - eta lam) delta - (2 eta / n) (sigmoid(delta X^T + base) - y) X,
      half the work of the general case; with per-sample sign flips (below) that is 3 kernels
      per step and no allocation.
    """
    num_clients, num_samples = features.shape[:2]
    dtype, device = models.dtype, models.device
    width = model.dim + int(model.bias)
    shape = (num_clients, width, model.num_classes)  # the (k, P) rows viewed as [W; b]
    features_t = torch.empty(num_clients, width, num_samples, dtype=dtype, device=device)
    features_t[:, : model.dim].copy_(features.transpose(1, 2))
    if model.bias:
        features_t[:, model.dim].fill_(1.0)
    samples = features_t.transpose(1, 2)  # (k, n, D) view for the gradient product
    anchor_matrix = anchor.view(width, model.num_classes) if lam else torch.zeros_like(anchor).view(width, -1)
    deviation = (models.view(shape) - anchor_matrix).transpose(1, 2)  # U, (k, C, D)
    shrink, scale = 1.0 - lr * lam, lr / num_samples
    if model.num_classes == 2:
        delta = (deviation[:, 1:] - deviation[:, :1]).contiguous()  # (k, 1, D)
        total = deviation[:, 1:] + deviation[:, :1]
        # sigmoid(z) - y = s * sigmoid(s * z) with s = 1 - 2y: flipping the sign of a sample's
        # features (and base) once per round turns the residual into a plain in-place sigmoid.
        signs = (1 - 2 * labels).to(dtype).unsqueeze(1)  # (k, 1, n)
        features_t.mul_(signs)
        base = torch.matmul((anchor_matrix[:, 1] - anchor_matrix[:, 0]).unsqueeze(0), features_t) if lam else None
        margin = torch.empty(num_clients, 1, num_samples, dtype=dtype, device=device)
        for _ in range(num_steps):
            _logits(delta, features_t, base, out=margin)
            delta.baddbmm_(margin.sigmoid_(), samples, beta=shrink, alpha=-2.0 * scale)
        total = total * torch.tensor(shrink, dtype=torch.float64).pow(num_steps).item()  # inf, not OverflowError
        deviation = torch.cat([(total - delta) / 2, (total + delta) / 2], dim=1)
    else:
        deviation = deviation.contiguous()
        base = torch.matmul(anchor_matrix.t(), features_t) if lam else None
        onehot = torch.nn.functional.one_hot(labels, model.num_classes).to(dtype).transpose(1, 2).contiguous()
        logits = torch.empty(num_clients, model.num_classes, num_samples, dtype=dtype, device=device)
        for _ in range(num_steps):
            _logits(deviation, features_t, base, out=logits)
            residual = torch.softmax(logits, dim=1).sub_(onehot)
            deviation.baddbmm_(residual, samples, beta=shrink, alpha=-scale)
    return (deviation.transpose(1, 2) + anchor_matrix).reshape(num_clients, -1)


def _logits(weights: torch.Tensor, features_t: torch.Tensor, base: torch.Tensor | None, *, out: torch.Tensor) -> None:
    if base is None:
        torch.bmm(weights, features_t, out=out)
    else:
        torch.baddbmm(base, weights, features_t, out=out)
