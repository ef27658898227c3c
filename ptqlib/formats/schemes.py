"""The named number formats, each a recipe: element format, block size and scale format.

Every format here stores a tensor as small codes plus scales, and each is described by three
choices, which also give its cost in bits per value::

    name        elements     block          scale                      bits per value
    fp8-e4m3    E4M3         whole tensor   FP32                       8 (+ 32 per tensor)
    fp8-e5m2    E5M2         whole tensor   FP32                       8 (+ 32 per tensor)
    mxfp8       E4M3         32             E8M0 (a power of two)      8 + 8/32 = 8.25
    mxfp6       E2M3         32             E8M0                       6.25
    mxfp4       E2M1         32             E8M0                       4.25
    nvfp4       E2M1         16             E4M3 (x FP32 per tensor)   4 + 8/16 = 4.5
    int4-g32    INT4 -7..7   32             FP16                       4 + 16/32 = 4.5
    int4-g128   INT4 -7..7   128            FP16                       4.125
    kmeans-16   4-bit index  whole layer    16 FP32 centroids          4 (+ 512 per layer)

(also ``mxfp8-e5m2`` and ``mxfp6-e3m2``, MX's other element choices). :attr:`Scheme.
nominal_bits_per_value` computes the last column from the first three; the ``storage_bits``
of a quantized tensor counts what it really stores (partial blocks included).

``for_activations`` marks the formats meant for activations as well as weights: the FP8 and
block-float formats, which Hopper (FP8) and Blackwell (MX, NVFP4) tensor cores take as both
GEMM operands. E5M2 is meant for gradients (FP8 paper, section 4: its extra range is for
them), the group-wise integers and the codebook for weights only (LLM runtimes keep the
activations in 16 bits).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from ptqlib.errors import InputError
from ptqlib.formats.codebook import CENTROID_BITS, kmeans_codebook
from ptqlib.formats.fp8 import TENSOR_SCALE_BITS, quantize_fp8
from ptqlib.formats.groupwise import SCALE_DTYPES, quantize_groupwise
from ptqlib.formats.microscaling import MX_BLOCK_SIZE, quantize_mx
from ptqlib.formats.minifloat import E2M1, E2M3, E3M2, E4M3, E5M2, E8M0, Minifloat
from ptqlib.formats.nvfp4 import NVFP4_BLOCK_SIZE, quantize_nvfp4


class QuantizedTensor(Protocol):
    """What every format's quantized tensor offers."""

    @property
    def numel(self) -> int: ...

    @property
    def storage_bits(self) -> int: ...

    def dequantize(self) -> torch.Tensor: ...


@dataclass(frozen=True)
class Scheme:
    """A named format: how to quantize a tensor (blocks along its last axis) and what it costs.

    ``quantizer(x, amax)`` returns a :class:`QuantizedTensor`; ``amax`` is a calibrated range
    for a per-tensor scale (ignored by formats without one). ``block_size`` None means one
    scale (or codebook) for the whole tensor."""

    name: str
    description: str
    quantizer: Callable[[torch.Tensor, float | None], QuantizedTensor]
    element_bits: int
    block_size: int | None
    scale_bits: int
    for_activations: bool

    def quantize(self, x: torch.Tensor, amax: float | None = None) -> QuantizedTensor:
        return self.quantizer(x, amax)

    def fake_quantize(self, x: torch.Tensor, amax: float | None = None) -> torch.Tensor:
        """Quantize, then dequantize: the values a kernel in this format would compute with."""
        return self.quantize(x, amax).dequantize()

    @property
    def nominal_bits_per_value(self) -> float:
        """Element bits plus the block's scale shared among its values (per-tensor scales and
        codebooks, amortized over a whole tensor, are left out)."""
        if self.block_size is None:
            return float(self.element_bits)
        return self.element_bits + self.scale_bits / self.block_size


def _fp8_scheme(element_format: Minifloat, description: str, for_activations: bool) -> Scheme:
    return Scheme(
        f"fp8-{element_format.name}",
        description,
        lambda x, amax: quantize_fp8(x, element_format, amax),
        element_format.bits,
        None,
        TENSOR_SCALE_BITS,
        for_activations,
    )


def _mx_scheme(name: str, element_format: Minifloat, for_activations: bool) -> Scheme:
    return Scheme(
        name,
        f"{name.split('-')[0].upper()}: {element_format.name.upper()} in blocks of "
        f"{MX_BLOCK_SIZE}, E8M0 scale",
        lambda x, amax: quantize_mx(x, element_format),
        element_format.bits,
        MX_BLOCK_SIZE,
        E8M0.bits,
        for_activations,
    )


def _groupwise_scheme(group_size: int) -> Scheme:
    return Scheme(
        f"int4-g{group_size}",
        f"INT4 (-7..7), one FP16 scale per group of {group_size}",
        lambda x, amax: quantize_groupwise(x, group_size, bits=4, scale_dtype=torch.float16),
        4,
        group_size,
        SCALE_DTYPES[torch.float16],
        False,
    )


CODEBOOK_ENTRIES = 16

SCHEMES: dict[str, Scheme] = {
    scheme.name: scheme
    for scheme in (
        _fp8_scheme(E4M3, "FP8 E4M3, one FP32 scale per tensor (Hopper)", True),
        _fp8_scheme(E5M2, "FP8 E5M2, one FP32 scale per tensor (the gradient format)", False),
        _mx_scheme("mxfp8", E4M3, True),
        _mx_scheme("mxfp8-e5m2", E5M2, False),
        _mx_scheme("mxfp6", E2M3, True),
        _mx_scheme("mxfp6-e3m2", E3M2, False),
        _mx_scheme("mxfp4", E2M1, True),
        Scheme(
            "nvfp4",
            f"NVFP4: E2M1 in blocks of {NVFP4_BLOCK_SIZE}, E4M3 scale, FP32 tensor scale",
            lambda x, amax: quantize_nvfp4(x, amax),
            E2M1.bits,
            NVFP4_BLOCK_SIZE,
            E4M3.bits,
            True,
        ),
        _groupwise_scheme(32),
        _groupwise_scheme(128),
        Scheme(
            f"kmeans-{CODEBOOK_ENTRIES}",
            f"k-means codebook of {CODEBOOK_ENTRIES} FP32 values per layer, 4-bit indices",
            lambda x, amax: kmeans_codebook(x, CODEBOOK_ENTRIES),
            math.ceil(math.log2(CODEBOOK_ENTRIES)),
            None,
            CODEBOOK_ENTRIES * CENTROID_BITS,
            False,
        ),
    )
}


def get_scheme(name: str) -> Scheme:
    """The scheme called ``name``, or an InputError listing the known ones."""
    if name not in SCHEMES:
        raise InputError(f"format: unknown format {name!r}; expected one of {', '.join(SCHEMES)}")
    return SCHEMES[name]
