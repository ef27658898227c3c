"""Where an INT8 forward pass spends its time: the input, the GEMMs, the requantization.

A forward pass of ``Int8Model`` (the teaching path) or ``FastInt8Model`` (the fast path) has
three stages: turning the images into int8 carriers, the int8 GEMMs (or the exact float32
GEMMs), and everything else, which is requantization (zero-point correction, bias, multiply,
shift, clamp, casts). :func:`time_split` times the whole pass, the input stage alone and the
GEMMs alone, interleaved in one run (``ptqlib.evaluation.time_interleaved``), and reports the
requantization as the difference. :func:`gemm_speedup` measures how much faster the int8 GEMM
path is than the FP32 GEMM on this CPU: the bound of the fast path's speed-up over FP32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ptqlib.data import normalise
from ptqlib.evaluation import time_interleaved
from ptqlib.fast.folding import requantize_folded
from ptqlib.fast.model import FastInt8Model
from ptqlib.int8_gemm import default_uses_int8_gemm, gemm_product, gemm_weight, int8_matmul
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


def _gemms(model: Int8Model | FastInt8Model, carriers: torch.Tensor) -> list[Callable]:
    """One call per Linear: its GEMM on that layer's real input, as each path calls it (the
    teaching path ``int8_matmul``; the fast path ``gemm_product`` with its prepared weight,
    which keeps the float GEMM's sums as floats)."""
    calls, x = [], carriers
    if isinstance(model, FastInt8Model):
        for layer in model.model.layers:
            if not isinstance(layer, Int8Linear):
                x = layer(x)
                continue
            folded = model.folded(layer)
            argument = x.to(folded.weight_t.dtype)  # the GEMM's own type, converted before
            calls.append(functools.partial(gemm_product, argument, folded.weight_t))
            x = requantize_folded(gemm_product(argument, folded.weight_t), layer, folded)
        return calls
    for layer in model.layers:
        if isinstance(layer, Int8Linear):
            calls.append(functools.partial(int8_matmul, x, layer.weight.t()))
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
        for gemm in gemms:
            gemm()

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


def gemm_speedup(
    batch_size: int = 1024,
    depth: int = 784,
    outputs: int = 128,
    use_int8_gemm: bool | None = None,
    threads: int = 2,
    repeats: int = 21,
) -> float:
    """How many times faster this CPU's int8 GEMM path is than its FP32 GEMM, on SimpleNet's
    first layer (``[batch_size, depth] x [depth, outputs]``): the median time of
    ``torch.mm`` on float32 over that of ``gemm_product`` as the fast path calls it
    (``torch._int_mm`` where it is fast, else the exact float GEMM), interleaved.

    The GEMMs are most of both models' work at a large batch, and the fast path adds its
    input quantization and requantization to the GEMM, so this ratio bounds the speed-up
    over FP32 the eager fast path can reach: about 1 where the "int8" GEMM is an exact float32
    GEMM of the same size."""
    use_int8_gemm = default_uses_int8_gemm() if use_int8_gemm is None else use_int8_gemm
    generator = torch.Generator().manual_seed(0)
    carriers = torch.randint(-128, 128, (batch_size, depth), dtype=torch.int8, generator=generator)
    weight_t = torch.randint(-128, 128, (depth, outputs), dtype=torch.int8, generator=generator)
    weight_t = gemm_weight(weight_t, use_int8_gemm)
    gemm_input = carriers.to(weight_t.dtype)  # the type the fast path keeps its carriers in
    images, weights = torch.randn(batch_size, depth), torch.randn(depth, outputs)
    samples = time_interleaved(
        {
            "fp32": lambda: torch.mm(images, weights),
            "int8": lambda: gemm_product(gemm_input, weight_t),
        },
        threads=threads,
        repeats=repeats,
    )
    median = {name: sorted(times)[len(times) // 2] for name, times in samples.items()}
    return median["fp32"] / median["int8"]
