"""Where an INT8 forward pass spends its time: the input, the GEMMs, the requantization.

A forward pass of ``Int8Model`` (the teaching path) or ``FastInt8Model`` (the fast path) has
three stages: turning the images into int8 carriers, the int8 GEMMs (or the exact float32
GEMMs), and everything else, which is requantization (zero-point correction, bias, multiply,
shift, clamp, casts). :func:`time_split` times the whole pass, the input stage alone and the
GEMMs alone, interleaved in one run (``ptqlib.evaluation.time_interleaved``), and reports the
requantization as the difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptqlib.data import normalise
from ptqlib.evaluation import time_interleaved
from ptqlib.fast.folding import requantize_folded
from ptqlib.fast.model import FastInt8Model
from ptqlib.int8_gemm import int8_matmul
from ptqlib.int8_layers import Int8Linear
from ptqlib.int8_model import Int8Model


@dataclass(frozen=True)
class TimeSplit:
    """Median milliseconds of one forward pass and of its stages."""

    total_ms: float
    input_ms: float
    gemm_ms: float

    @property
    def requantization_ms(self) -> float:
        return max(self.total_ms - self.input_ms - self.gemm_ms, 0.0)


def _gemms(model: Int8Model | FastInt8Model, carriers: torch.Tensor) -> list:
    """``(function, argument)`` per layer: the GEMM alone, on that layer's real input."""
    calls, x = [], carriers
    if isinstance(model, FastInt8Model):
        for layer in model.model.layers:
            if not isinstance(layer, Int8Linear):
                x = layer(x)
                continue
            folded = model.folded(layer)
            gemm = torch._int_mm if model.use_int8_gemm else torch.mm
            argument = x if model.use_int8_gemm else x.to(folded.weight_t.dtype)
            calls.append((gemm, argument, folded.weight_t))
            x = requantize_folded(int8_matmul(x, folded.weight_t), layer, folded)
        return calls
    for layer in model.layers:
        if isinstance(layer, Int8Linear):
            calls.append((int8_matmul, x, layer.weight.t()))
        x = layer(x)
    return calls


def time_split(
    model: Int8Model | FastInt8Model, batch_size: int, threads: int = 2, repeats: int = 21
) -> TimeSplit:
    """Time ``model`` on a random batch of ``batch_size`` digits (pixels for a model that
    takes pixels), and its input and GEMM stages alone."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (batch_size, 1, 28, 28), dtype=torch.uint8, generator=generator)
    images = pixels if model.takes_pixels else normalise(pixels[:, 0])
    carriers = model.quantize_input(images)
    if carriers.dim() > 2:  # the teaching path's Flatten runs as its first layer
        carriers = carriers.flatten(1)
    gemms = _gemms(model, carriers)

    def all_gemms() -> None:
        for gemm, x, weight in gemms:
            gemm(x, weight)

    samples = time_interleaved(
        {
            "total": lambda: model.integer_forward(images),
            "input": lambda: model.quantize_input(images),
            "gemm": all_gemms,
        },
        threads=threads,
        repeats=repeats,
    )
    median = {name: sorted(times)[len(times) // 2] for name, times in samples.items()}
    return TimeSplit(median["total"], median["input"], median["gemm"])
