"""SimpleNet: the small feedforward network the series quantizes.

784 -> 128 -> 64 -> 10, with a ReLU after each hidden layer. It is an ``nn.Sequential``
with named children, so every quantization point has a name a reader can find:

    flatten -> fc1 -> relu1 -> fc2 -> relu2 -> fc3 -> logits

Hooks on these children observe each Linear's input and output and each activation;
the conversion to INT8 walks the same sequence.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ptqlib.data import NUM_CLASSES

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


def count_parameters(model: nn.Module) -> int:
    """The number of learnable values (weights and biases)."""
    return sum(parameter.numel() for parameter in model.parameters())
