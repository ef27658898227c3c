"""The networks the series quantizes: SimpleNet (an MLP) and SmallCNN (convolutions + BatchNorm).

784 -> 128 -> 64 -> 10, with a ReLU after each hidden layer. It is an ``nn.Sequential``
with named children, so every quantization point has a name a reader can find:

    flatten -> fc1 -> relu1 -> fc2 -> relu2 -> fc3 -> logits

Hooks on these children observe each Linear's input and output and each activation;
the conversion to INT8 walks the same sequence.

SmallCNN (notebook 07) is built the same way, so its quantization points have names too:

    conv1 -> bn1 -> relu1 -> pool1 -> conv2 -> bn2 -> relu2 -> pool2 -> flatten -> fc -> logits

DepthwiseCNN (notebook 09) is a depthwise-separable CNN in the style of MobileNet: each block
is a depthwise 3x3 convolution (one filter per channel, ``groups = channels``) and a pointwise
1x1 convolution that mixes the channels, each followed by BatchNorm and ReLU.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn

from ptqlib.catalog import MODEL_NAMES
from ptqlib.data import MNIST_MEAN, MNIST_STD, NUM_CLASSES
from ptqlib.errors import InputError

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
        raise InputError(f"std: expected a positive number, got {std!r}")
    first = next((module for module in model if isinstance(module, nn.Linear)), None)
    if first is None:
        raise InputError("model: has no Linear layer to fold the normalisation into")
    folded = copy.deepcopy(model).eval()
    linear = next(module for module in folded if isinstance(module, nn.Linear))
    weight, bias = linear.weight.double(), linear.bias.double()
    scale, shift = 1.0 / (255.0 * std), -mean / std
    linear.bias.copy_(bias + shift * weight.sum(dim=1))
    linear.weight.copy_(weight * scale)
    return folded


CNN_CHANNELS = (16, 32)
CNN_FEATURES = CNN_CHANNELS[1] * 7 * 7  # two 2x2 max-pools: 28x28 -> 14x14 -> 7x7


class SmallCNN(nn.Sequential):
    """A small CNN with BatchNorm for 28x28 digits (notebook 07)::

        Conv2d(1, 16, 3, padding=1), BatchNorm2d(16), ReLU, MaxPool2d(2)     [N, 16, 14, 14]
        Conv2d(16, 32, 3, padding=1), BatchNorm2d(32), ReLU, MaxPool2d(2)    [N, 32, 7, 7]
        Flatten, Linear(1568, 10)                                            [N, 10]

    The convolutions have no bias: the BatchNorm after each one has its own shift (beta),
    so a conv bias would be redundant; folding the BatchNorm creates the bias. It returns
    logits (no softmax); train it with cross-entropy.
    """

    def __init__(self) -> None:
        channels1, channels2 = CNN_CHANNELS
        super().__init__(
            OrderedDict(
                conv1=nn.Conv2d(1, channels1, kernel_size=3, padding=1, bias=False),
                bn1=nn.BatchNorm2d(channels1),
                relu1=nn.ReLU(),
                pool1=nn.MaxPool2d(2),
                conv2=nn.Conv2d(channels1, channels2, kernel_size=3, padding=1, bias=False),
                bn2=nn.BatchNorm2d(channels2),
                relu2=nn.ReLU(),
                pool2=nn.MaxPool2d(2),
                flatten=nn.Flatten(),
                fc=nn.Linear(CNN_FEATURES, NUM_CLASSES),
            )
        )


# DepthwiseCNN: (input channels, output channels, stride of the depthwise conv) of each block.
DEPTHWISE_BLOCKS = ((16, 32, 2), (32, 64, 2), (64, 64, 1))
DEPTHWISE_STEM_CHANNELS = 16


class DepthwiseCNN(nn.Sequential):
    """A depthwise-separable CNN with BatchNorm for 28x28 digits (notebook 09), ~9k weights::

        stem    Conv2d(1, 16, 3, padding=1), BatchNorm2d, ReLU                   [N, 16, 28, 28]
        block1  depthwise Conv2d(16, 16, 3, stride 2, groups=16), BN, ReLU       [N, 16, 14, 14]
                pointwise Conv2d(16, 32, 1), BN, ReLU                            [N, 32, 14, 14]
        block2  depthwise 32 (stride 2) -> pointwise 32 -> 64                    [N, 64, 7, 7]
        block3  depthwise 64 (stride 1) -> pointwise 64 -> 64                    [N, 64, 7, 7]
        pool    AdaptiveAvgPool2d(1): the mean of each channel (global average)  [N, 64, 1, 1]
        Flatten, Linear(64, 10)                                                  [N, 10]

    Children are named ``conv1, bn1, relu1`` for the stem and ``dw<k>, dw<k>_bn, dw<k>_relu,
    pw<k>, pw<k>_bn, pw<k>_relu`` for block k, so every quantization point has a name.

    A depthwise convolution gives each channel its own 3x3 filter over that channel only
    (weight ``[C, 1, 3, 3]``): channel c of its output depends on channel c of its input
    alone. That is what makes it fragile after BatchNorm folding (notebook 09): a channel
    whose input is always zero has a BatchNorm variance near 0, and folding multiplies its
    filter by ``gamma / sqrt(var + eps)``. The convolutions have no bias (the BatchNorm's
    beta is the shift).
    """

    def __init__(self) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        stem = DEPTHWISE_STEM_CHANNELS
        layers["conv1"] = nn.Conv2d(1, stem, kernel_size=3, padding=1, bias=False)
        layers["bn1"] = nn.BatchNorm2d(stem)
        layers["relu1"] = nn.ReLU()
        for index, (channels_in, channels_out, stride) in enumerate(DEPTHWISE_BLOCKS, start=1):
            layers[f"dw{index}"] = nn.Conv2d(
                channels_in,
                channels_in,
                kernel_size=3,
                stride=stride,
                padding=1,
                groups=channels_in,
                bias=False,
            )
            layers[f"dw{index}_bn"] = nn.BatchNorm2d(channels_in)
            layers[f"dw{index}_relu"] = nn.ReLU()
            layers[f"pw{index}"] = nn.Conv2d(channels_in, channels_out, kernel_size=1, bias=False)
            layers[f"pw{index}_bn"] = nn.BatchNorm2d(channels_out)
            layers[f"pw{index}_relu"] = nn.ReLU()
        layers["pool"] = nn.AdaptiveAvgPool2d(1)
        layers["flatten"] = nn.Flatten()
        layers["fc"] = nn.Linear(DEPTHWISE_BLOCKS[-1][1], NUM_CLASSES)
        super().__init__(layers)


# The models ptqlib can train and quantize, by the name checkpoints and the CLI use.
MODELS = dict(zip(MODEL_NAMES, (SimpleNet, SmallCNN, DepthwiseCNN), strict=True))


def build_model(name: str) -> nn.Sequential:
    """A fresh, untrained model by its name in :data:`MODELS` ("simplenet", "cnn", "dwcnn")."""
    if name not in MODELS:
        raise InputError(f"model: unknown model {name!r}; expected one of {sorted(MODELS)}")
    return MODELS[name]()


def model_name(model: nn.Module) -> str:
    """The name in :data:`MODELS` of ``model``'s class ("simplenet", "cnn" or "dwcnn")."""
    for name, model_class in MODELS.items():
        if type(model) is model_class:
            return name
    raise InputError(
        f"model: a {type(model).__name__} is none of ptqlib's models "
        f"({', '.join(cls.__name__ for cls in MODELS.values())})"
    )


def count_parameters(model: nn.Module) -> int:
    """The number of learnable values (weights and biases)."""
    return sum(parameter.numel() for parameter in model.parameters())
