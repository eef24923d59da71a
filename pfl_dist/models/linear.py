"""Multinomial logistic regression, batched over clients, with an analytic gradient.

Parameters are one flat row per client: (k, P) with P = d*C (+ C with a bias). A row views as
W (d, C) [then b (C)], so logits = x @ W + b. The gradient is written out (X^T (softmax - onehot)
/ n) rather than taken by autograd: for this model it is two batched matmuls, which is what makes
a rank's virtual clients one computation.
"""

from __future__ import annotations

import torch


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
        probs = torch.softmax(logits, dim=-1)
        loss = None
        if need_loss:
            log_probs = torch.log_softmax(logits, dim=-1)
            loss = -log_probs.gather(-1, y.unsqueeze(-1)).squeeze(-1).mean(dim=1)
        residual = probs.scatter_add_(-1, y.unsqueeze(-1), torch.full_like(probs[..., :1], -1.0))
        residual.div_(x.shape[1])
        grad = torch.empty_like(w)
        torch.bmm(x.transpose(1, 2), residual, out=grad[:, : self.num_weights].view(-1, self.dim, self.num_classes))
        if self.bias:
            grad[:, self.num_weights :] = residual.sum(dim=1)
        return loss, grad

    def loss_and_correct(self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-client mean loss (k,) and number of correct predictions (k,)."""
        logits = self.logits(w, x)
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(dim=1)
        correct = (logits.argmax(dim=-1) == y).sum(dim=1)
        return loss, correct
