"""Quantization-aware training (QAT): the contrast to everything else in this series.

**This is training, not post-training quantization.** It needs the labelled training set,
an optimiser, epochs and their time; PTQ needs a few hundred unlabelled images and
seconds. It is here to show what the fixes of notebook 06 leave on the table.

The forward pass uses fake-quantized weights, so the loss sees the rounding; the backward
pass cannot differentiate ``round`` (its gradient is 0 almost everywhere), so it uses the
*straight-through estimator* (Bengio et al. 2013; Jacob et al. 2018): pretend the rounding
was the identity::

    forward   W~ = S clamp(round(W / S), lo, hi)           (S from the current W, per channel)
    backward  dL/dW = dL/dW~                              written  W + (W~ - W).detach()

After fine-tuning, the float weights are rounded once more, to nearest, exactly as in the
forward pass: the PTQ pipeline (``ptqlib.lowbit.weights``) then produces the same grid.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from ptqlib.data import MNISTSplit
from ptqlib.errors import InputError
from ptqlib.lowbit.weights import check_bits, linear_names, weight_qparams
from ptqlib.quantization import fake_quantize


def straight_through(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Fake-quantized ``weight`` in the forward pass, the identity in the backward pass."""
    qparams = weight_qparams(weight.detach(), bits)
    return weight + (fake_quantize(weight.detach(), qparams) - weight).detach()


class FakeQuantLinear(nn.Module):
    """A Linear that computes with its weights fake-quantized to ``bits`` (STE backward)."""

    def __init__(self, linear: nn.Linear, bits: int) -> None:
        super().__init__()
        self.linear, self.bits = linear, check_bits(bits, "bits")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.linear(
            x, straight_through(self.linear.weight, self.bits), self.linear.bias
        )


@dataclass
class QATResult:
    """The fine-tuned float model (round its weights to nearest to quantize it), the
    seconds it took and the mean training loss of every epoch."""

    model: nn.Module
    seconds: float
    losses: list[float]
    epochs: int


def qat_finetune(
    model: nn.Module,
    train: MNISTSplit,
    weight_bits: int,
    epochs: int = 2,
    learning_rate: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
) -> QATResult:
    """Fine-tune a copy of ``model`` with fake-quantized ``weight_bits``-bit weights (all
    Linears) on ``train`` for ``epochs`` with Adam; ``model`` itself is not changed."""
    check_bits(weight_bits, "weight_bits")
    if not isinstance(epochs, int) or epochs < 1:
        raise InputError(f"epochs: expected a positive whole number, got {epochs!r}")
    torch.manual_seed(seed)  # nothing random here but the shuffling; pinned all the same
    tuned = copy.deepcopy(model).train()
    for name in linear_names(tuned):
        setattr(tuned, name, FakeQuantLinear(tuned.get_submodule(name), weight_bits))
    optimizer = torch.optim.Adam(tuned.parameters(), lr=learning_rate)
    start, losses = time.perf_counter(), []
    for epoch in range(epochs):
        total, count = 0.0, 0
        for images, labels in train.loader(batch_size, shuffle=True, seed=seed + epoch):
            loss = functional.cross_entropy(tuned(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, count = total + float(loss.detach()) * len(labels), count + len(labels)
        losses.append(total / count)
    for name in linear_names(model):
        setattr(tuned, name, tuned.get_submodule(name).linear)
    return QATResult(tuned.eval(), time.perf_counter() - start, losses, epochs)
