"""Multinomial logistic regression, batched over clients, with an analytic gradient.

Parameters are one flat row per client: (k, P) with P = d*C (+ C with a bias). A row views as
W (d, C) [then b (C)], so logits = x @ W + b. The gradient is written out (X^T (softmax - onehot)
/ n) rather than taken by autograd: for this model it is two batched matmuls, which is what makes
a rank's virtual clients one computation.

Two sets of kernels compute the same maths (`reference_kernels` decides, by dtype):
- float64: the reference kernels below (sample-major (k, n, C) logits), bitwise reproducible;
- float32 and others: class-major (k, C, n) logits, several times faster at small C (softmax and
  log-softmax along a middle dimension vectorize over samples; along a last dimension of size 2
  they run row by row). See pfl_dist/solvers/linear.py for the training side.
"""

from __future__ import annotations

import torch


def reference_kernels(dtype: torch.dtype) -> bool:
    """float64 runs the reference kernels: results are pinned bit for bit (tests/unit/test_golden.py)."""
    return dtype == torch.float64


def _softmax_residual(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """softmax(logits) - onehot(y), (k, n, C): the cross-entropy gradient w.r.t. the logits."""
    probs = torch.softmax(logits, dim=-1)
    return probs.scatter_add_(-1, y.unsqueeze(-1), torch.full_like(probs[..., :1], -1.0))


class LinearSoftmax:
    def __init__(self, dim: int, num_classes: int, *, bias: bool) -> None:
        self.dim = dim
        self.num_classes = num_classes
        self.bias = bias
        self.num_weights = dim * num_classes
        self.num_params = self.num_weights + (num_classes if bias else 0)

    def init_params(self, generator: torch.Generator, *, dtype: torch.dtype) -> torch.Tensor:
        """N(0, 1) weights and zero bias, the same for every client (one shared seed)."""
        weights = torch.randn(self.num_weights, generator=generator, dtype=torch.float64)
        params = torch.cat([weights, torch.zeros(self.num_params - self.num_weights, dtype=torch.float64)])
        return params.to(dtype)

    def weight_matrix(self, w: torch.Tensor) -> torch.Tensor:
        """(k, P) -> (k, d, C) view of the weights."""
        return w[:, : self.num_weights].view(-1, self.dim, self.num_classes)

    def state_dict(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """One flat model (P,) -> named tensors: weight (d, C) [and bias (C,)]."""
        named = {"weight": w[: self.num_weights].reshape(self.dim, self.num_classes).clone()}
        if self.bias:
            named["bias"] = w[self.num_weights :].clone()
        return named

    def logits(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x: (k, n, d) -> (k, n, C)."""
        out = torch.bmm(x, self.weight_matrix(w))
        if self.bias:
            out = out + w[:, self.num_weights :].unsqueeze(1)
        return out

    def loss_and_grad(
        self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *, need_loss: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Mean cross-entropy per client (k,) and its gradient (k, P) on (x, y)."""
        logits = self.logits(w, x)
        residual = _softmax_residual(logits, y)
        loss = None
        if need_loss:
            log_probs = torch.log_softmax(logits, dim=-1)
            loss = -log_probs.gather(-1, y.unsqueeze(-1)).squeeze(-1).mean(dim=1)
        residual.div_(x.shape[1])
        grad = torch.empty_like(w)
        torch.bmm(x.transpose(1, 2), residual, out=grad[:, : self.num_weights].view(-1, self.dim, self.num_classes))
        if self.bias:
            grad[:, self.num_weights :] = residual.sum(dim=1)
        return loss, grad

    def weighted_grad(self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """(k, P) gradients of sum_j weights[i, j] * CE(x[i, j]) (local SGD's batches, padding at 0)."""
        residual = _softmax_residual(self.logits(w, x), y)
        residual.mul_(weights.unsqueeze(-1))
        # Not `loss_and_grad`'s bmm into a slice of one (k, P) buffer: with a bias that slice is
        # strided, and float32 rounds differently there; this is the image solver's arithmetic.
        grad_weights = torch.bmm(x.transpose(1, 2), residual).flatten(1)
        return torch.cat([grad_weights, residual.sum(dim=1)], dim=1) if self.bias else grad_weights

    def loss_and_correct(self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-client mean loss (k,) and number of correct predictions (k,)."""
        if reference_kernels(w.dtype):
            logits = self.logits(w, x)
            loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(dim=1)
            correct = (logits.argmax(dim=-1) == y).sum(dim=1)
            return loss, correct
        weights = w[:, : self.num_weights].view(-1, self.dim, self.num_classes)
        if self.num_classes == 2:
            direction = (weights[:, :, 1] - weights[:, :, 0]).unsqueeze(1)  # (k, 1, d)
            margin = torch.bmm(direction, x.transpose(1, 2)).squeeze(1)  # (k, n): logit_1 - logit_0
            if self.bias:
                margin += (w[:, -1] - w[:, -2]).unsqueeze(-1)
            loss, correct = binary_loss_and_correct(margin, y)
        else:
            logits = torch.bmm(weights.transpose(1, 2), x.transpose(1, 2))  # (k, C, n)
            if self.bias:
                logits += w[:, self.num_weights :].unsqueeze(-1)
            loss, correct = class_major_loss_and_correct(logits, y, class_dim=1)
        return loss.mean(dim=1), correct.sum(dim=1)

    def shared_loss_and_correct(
        self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`loss_and_correct` of ONE model w (P,) on every client's data, as if it were each row."""
        num_clients, num_samples = x.shape[:2]
        if reference_kernels(w.dtype):
            return self.loss_and_correct(w.expand(num_clients, -1), x, y)
        # One matrix product over all k*n samples instead of k small ones.
        weights = w[: self.num_weights].view(self.dim, self.num_classes)
        samples = x.reshape(-1, self.dim)
        if self.num_classes == 2:
            margin = samples @ (weights[:, 1] - weights[:, 0])
            if self.bias:
                margin += w[-1] - w[-2]
            loss, correct = binary_loss_and_correct(margin.view(num_clients, num_samples), y)
        else:
            logits = (weights.t() @ samples.t()).view(self.num_classes, num_clients, num_samples)
            if self.bias:
                logits += w[self.num_weights :].view(-1, 1, 1)
            loss, correct = class_major_loss_and_correct(logits, y, class_dim=0)
        return loss.mean(dim=1), correct.sum(dim=1)


def binary_loss_and_correct(margin: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes from the margin z = logit_1 - logit_0: CE = softplus(+-z), predicted class z > 0
    (a tie predicts class 0, as argmax does)."""
    positive = y == 1
    loss = torch.nn.functional.softplus(torch.where(positive, -margin, margin))
    return loss, (margin > 0) == positive


def class_major_loss_and_correct(
    logits: torch.Tensor, y: torch.Tensor, *, class_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample cross-entropy and correctness of logits whose classes run along `class_dim`.

    argmax along a middle dimension is ~300x slower than amax here, so the predicted class (the
    first maximum, as argmax) is found with amax: rank each maximum by C - class and take the best.
    """
    picked = logits.gather(class_dim, y.unsqueeze(class_dim)).squeeze(class_dim)
    loss = torch.logsumexp(logits, dim=class_dim).sub_(picked)
    num_classes = logits.shape[class_dim]
    shape = [1] * logits.dim()
    shape[class_dim] = num_classes
    rank = torch.arange(num_classes, 0, -1, device=logits.device).view(shape)
    is_max = logits == logits.amax(dim=class_dim, keepdim=True)
    predicted = num_classes - (is_max * rank).amax(dim=class_dim)
    return loss, predicted == y
