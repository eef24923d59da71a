"""A model plug-in for pfl_dist: a two-layer perceptron (docs/EXTENDING.md, "A model").

    PYTHONPATH=examples python -m pfl_dist.train --config configs/fmnist_logreg.yaml model.kind=mlp:mlp

`mlp(input_shape, num_classes)` is the factory that `model.kind: "mlp:mlp"` names: pfl_dist calls
it with the dataset's sample shape ((1, 28, 28) for Fashion-MNIST) and class count, and trains
the module it returns for every client of a rank at once. Its head for FedRep and FedPer is
`fc2` (`model.head=fc2.`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

HIDDEN = 64


class MLP(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(math.prod(input_shape), HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def mlp(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return MLP(input_shape, num_classes)
