"""The paper's CNN as a function of flat per-client parameters, batched over clients.

    conv3x3 1->32, ReLU, maxpool2, conv3x3 32->64, ReLU, maxpool2, fc 3136->128, ReLU, fc 128->10

(docs/METHOD.md §4; padding 1 keeps 28x28 -> 14x14 -> 7x7, so the flattened size is 64*7*7 = 3136.)

Every client's model is one row of a (k, P) tensor, like the linear models, so the engine's
aggregation, checkpointing and byte accounting are model-agnostic. The `nn.Module` is only a
template: `torch.func.functional_call` runs it with a row's parameters (views into the row, no
copy), and `torch.func.vmap(torch.func.grad(...))` turns k clients' minibatch gradients into
one batched computation (vmap maps the k weight sets onto grouped convolutions and batched
matmuls). Each client's loss and gradient depend only on its own row and batch, so a client
trains the same whether it shares its rank with 0 or 99 other clients.

A single client (k = 1, e.g. one client per process) always takes the plain path below: vmap
over a batch of one only adds overhead.

Fallback: `vectorize=False` computes the same gradients with a Python loop of ordinary autograd
calls, one client at a time. It exists for backends without vmap batching rules for these ops;
`CNNModel` probes vmap once at construction and falls back (with a warning) if the probe raises.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from pfl_dist.data.images import MNIST_CLASSES, MNIST_INPUT_SHAPE


class PaperCNN(nn.Module):
    """The paper's CNN, sized for its input: conv3x3(32) - pool2 - conv3x3(64) - pool2 - fc(128) - fc(C).
    The default is the paper's (Fashion-)MNIST shape; CIFAR-10's (3, 32, 32) gives fc1 an input of
    64 * 8 * 8. Layers are created in the same order for every shape (the seeded init depends on it)."""

    def __init__(self, num_classes: int = MNIST_CLASSES, input_shape: tuple[int, int, int] = MNIST_INPUT_SHAPE) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.conv1 = nn.Conv2d(channels, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(64 * (height // 4) * (width // 4), 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class CNNModel:
    """Flat-parameter view of `PaperCNN`: logits and weighted minibatch gradients for (k, P)."""

    def __init__(self, num_classes: int = MNIST_CLASSES, *, input_shape: tuple[int, int, int] = MNIST_INPUT_SHAPE,
                 vectorize: bool = True) -> None:
        self.num_classes = num_classes
        self.input_shape = input_shape  # (channels, height, width) of one sample
        self.template = PaperCNN(num_classes, input_shape).requires_grad_(False)
        named = list(self.template.named_parameters())
        self.names = [name for name, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.num_params = sum(self.sizes)
        self.vectorize = vectorize and _vmap_works(self)

    def init_params(self, seed: int, *, dtype: torch.dtype) -> torch.Tensor:
        """PyTorch's default layer init from a fixed seed: the same flat model on every rank."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = PaperCNN(self.num_classes, self.input_shape)
        return torch.cat([p.detach().flatten() for p in fresh.parameters()]).to(dtype)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """One flat row (P,) -> {parameter name: view of that row}."""
        return {name: part.view(shape) for name, part, shape in
                zip(self.names, flat.split(self.sizes), self.shapes, strict=True)}

    def state_dict(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """The flat model (P,) as the named tensors `PaperCNN.load_state_dict` accepts."""
        return {name: tensor.clone() for name, tensor in self.unflatten(flat).items()}

    def _batched(self, params: torch.Tensor) -> bool:
        """vmap for k > 1 clients; one client (the 1-client-per-process layout) takes the plain
        autograd path, which skips vmap's batching overhead (benchmarks/cnn_throughput.py)."""
        return self.vectorize and params.shape[0] > 1

    def _forward(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.template, self.unflatten(flat), (x,))

    def _weighted_loss(self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """sum_j w_j CE(f(x_j), y_j): with w_j = 1/b on a batch of b, the usual mean loss."""
        return (F.cross_entropy(self._forward(flat, x), y, reduction="none") * w).sum()

    @torch.no_grad()
    def logits(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """params (k, P), x (k, n, *input_shape) -> (k, n, C); each client's own model on its own x."""
        if self._batched(params):
            return vmap(self._forward)(params, x)
        return torch.stack([self._forward(p, xi) for p, xi in zip(params, x, strict=True)])

    def weighted_grad(self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                      weights: torch.Tensor) -> torch.Tensor:
        """Gradient (k, P) of each client's weighted loss; rows with all-zero weights get 0."""
        if self._batched(params):
            return vmap(grad(self._weighted_loss))(params, x, y, weights)
        return torch.stack([self._autograd_grad(p, xi, yi, wi)
                            for p, xi, yi, wi in zip(params, x, y, weights, strict=True)])

    def _autograd_grad(self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        leaf = flat.detach().requires_grad_(True)
        with torch.enable_grad():
            (result,) = torch.autograd.grad(self._weighted_loss(leaf, x, y, w), leaf)
        return result


def _vmap_works(model: CNNModel) -> bool:
    """Run one tiny batched gradient; False (and a warning) if this backend cannot vmap it."""
    params = torch.zeros(2, model.num_params)
    x = torch.zeros(2, 1, *model.input_shape)
    y = torch.zeros(2, 1, dtype=torch.long)
    try:
        vmap(grad(model._weighted_loss))(params, x, y, torch.ones(2, 1))
    except RuntimeError as err:  # a missing batching rule surfaces as a RuntimeError
        warnings.warn(f"torch.func.vmap unavailable for the CNN ({err}); training clients one at a time",
                      RuntimeWarning, stacklevel=3)
        return False
    return True

