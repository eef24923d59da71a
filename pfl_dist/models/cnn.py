"""The paper's CNN, built through the same path as a plug-in model (`models/module.py`).

    conv3x3 1->32, ReLU, maxpool2, conv3x3 32->64, ReLU, maxpool2, fc 3136->128, ReLU, fc 128->10

(docs/METHOD.md §4; padding 1 keeps 28x28 -> 14x14 -> 7x7, so the flattened size is 64*7*7 = 3136.)

`paper_cnn` is its factory (the model registry's `cnn` entry names it, as `model.kind:
"package.module:factory"` names a user's), and `CNNModel` is `ModuleModel` around it with the
registry's head (fc2): the flat (k, P) rows, functional_call + vmap over a rank's clients, the
seeded initialisation and the vmap fallback are the wrapper's (see its module docstring).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pfl_dist.data.images import MNIST_CLASSES, MNIST_INPUT_SHAPE
from pfl_dist.models import MODELS
from pfl_dist.models.module import ModuleModel


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


def paper_cnn(input_shape: tuple[int, ...], num_classes: int) -> PaperCNN:
    """The model registry's factory for `cnn`: factory(input_shape, num_classes), as a plug-in's."""
    channels, height, width = input_shape
    return PaperCNN(num_classes, (channels, height, width))


class CNNModel(ModuleModel):
    """Flat-parameter view of `PaperCNN`: logits and weighted minibatch gradients for (k, P)."""

    def __init__(self, num_classes: int = MNIST_CLASSES, *, input_shape: tuple[int, int, int] = MNIST_INPUT_SHAPE,
                 vectorize: bool = True) -> None:
        super().__init__(paper_cnn, kind="cnn", input_shape=input_shape, num_classes=num_classes,
                         head=MODELS["cnn"].head, vectorize=vectorize)
