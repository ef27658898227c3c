"""SimpleNet: the small feedforward network the series quantizes.

784 -> 128 -> 64 -> 10, with a ReLU after each hidden layer. It is an ``nn.Sequential``
with named children, so every quantization point has a name a reader can find:

    flatten -> fc1 -> relu1 -> fc2 -> relu2 -> fc3 -> logits

Hooks on these children observe each Linear's input and output and each activation;
the conversion to INT8 walks the same sequence.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn

from ptqlib.data import MNIST_MEAN, MNIST_STD, NUM_CLASSES

INPUT_FEATURES = 28 * 28
HIDDEN_FEATURES = (128, 64)


class SimpleNet(nn.Sequential):
    """An MLP for 28x28 digits: ``Flatten, Linear(784, 128), ReLU, Linear(128, 64), ReLU,
    Linear(64, 10)``. It returns logits (no softmax); train it with cross-entropy."""

    def __init__(self) -> None:
        hidden1, hidden2 = HIDDEN_FEATURES
        super().__init__(
            OrderedDict(
                flatten=nn.Flatten(),
                fc1=nn.Linear(INPUT_FEATURES, hidden1),
                relu1=nn.ReLU(),
                fc2=nn.Linear(hidden1, hidden2),
                relu2=nn.ReLU(),
                fc3=nn.Linear(hidden2, NUM_CLASSES),
            )
        )


@torch.no_grad()
def fold_input_normalization(
    model: nn.Sequential, mean: float = MNIST_MEAN, std: float = MNIST_STD
) -> nn.Sequential:
    """A copy of ``model`` that takes raw pixel values ``p`` (0..255, as float) instead of
    normalised images ``x = (p / 255 - mean) / std``.

    ``x`` is an affine function of ``p``, ``x = a p + c`` with ``a = 1 / (255 std)`` and
    ``c = -mean / std``, so the first Linear absorbs it (computed in float64)::

        W x + b = (a W) p + (b + c sum_k W_k)         i.e.  W' = a W,  b' = b + c W 1

    The folded model computes the same logits (to float32 rounding). Its input needs no
    normalisation: quantized with S = 1, Z = 0 it *is* the uint8 pixel.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(
            f"model: expected an nn.Sequential like SimpleNet, got {type(model).__name__}"
        )
    if not (isinstance(std, int | float) and std > 0):
        raise ValueError(f"std: expected a positive number, got {std!r}")
    first = next((module for module in model if isinstance(module, nn.Linear)), None)
    if first is None:
        raise ValueError("model: has no Linear layer to fold the normalisation into")
    folded = copy.deepcopy(model).eval()
    linear = next(module for module in folded if isinstance(module, nn.Linear))
    weight, bias = linear.weight.double(), linear.bias.double()
    scale, shift = 1.0 / (255.0 * std), -mean / std
    linear.bias.copy_(bias + shift * weight.sum(dim=1))
    linear.weight.copy_(weight * scale)
    return folded


def count_parameters(model: nn.Module) -> int:
    """The number of learnable values (weights and biases)."""
    return sum(parameter.numel() for parameter in model.parameters())
