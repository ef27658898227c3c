"""OCP Microscaling (MX): blocks of 32 values sharing one power-of-two scale.

An MX block is ``k`` elements ``P_i`` in a small float format and one shared scale ``X``, and
means the values ``X * P_i`` (OCP MX v1.0, section 5.1). The concrete formats (section 5.2,
Table 1) all use ``k = 32`` and an E8M0 scale, 8 bits that hold only a power of two,
``X = 2^(e - 127)`` for e = 0..254 (section 5.4.1; 0xFF is NaN, there is no zero):

    MXFP8   E4M3 or E5M2 elements    8 bits + 8/32 = 8.25 bits per value
    MXFP6   E2M3 or E3M2 elements    6 bits + 8/32 = 6.25
    MXFP4   E2M1 elements            4 bits + 8/32 = 4.25

**The scale** (section 6.3, the conversion from scalar floats): "Set X to be the largest
power-of-two less than or equal to max_i |V_i|, divided by the largest power-of-two
representable in the element data type"; then each P_i is V_i / X rounded to the element
format, where "normal numbers that exceed the max normal ... should be clamped to the max
normal, preserving the sign". In exponents (Rouhani et al. 2023, arXiv:2310.10537,
Algorithm 1)::

    shared_exp = floor(log2(max_i |V_i|)) - emax_elem     (emax_elem: E4M3 8, E5M2 15,
    X = 2^shared_exp                                        E2M3 2, E3M2 4, E2M1 2)
    P_i = round_to_element(V_i / X), saturating

The exponent is clamped to E8M0's range [-127, 127]; an all-zero block gets the smallest scale,
2^-127. The rule keeps the block's largest value in the element format's top binade, so it
can exceed the format's largest number: with E2M1 (max 6 = 1.5 * 2^2), a block whose amax is
3.5 gets X = 2^(1 - 2) = 0.5 and amax / X = 7, which saturates to 6 (error 0.5). Rounding the
scale up instead (NVIDIA's "RCEIL", ``X = 2^ceil(log2(amax / max))``) never saturates but
wastes part of the top binade; the specification's rule is the floor.

torchao's ``to_mx(x, elem_dtype, block_size)`` implements this rule as its default
``ScaleCalculationMode.FLOOR`` and agrees with :func:`quantize_mx` bit for bit, except for
blocks whose scale code is 0 (2^-127, blocks with amax below 2^(emax - 126)): it divides such
blocks by 2^-126 (``F32_MIN_NORMAL``, to avoid FP32 subnormals on GPUs) but stores 2^-127, so
their dequantized values come out half as large (``tests/test_formats_references.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptqlib.errors import InputError
from ptqlib.formats.blocks import (
    block_count,
    join_blocks,
    repeat_per_element,
    split_into_blocks,
)
from ptqlib.formats.minifloat import (
    E2M1,
    E2M3,
    E3M2,
    E4M3,
    E5M2,
    E8M0,
    Minifloat,
    decode,
    encode,
    lookup,
)
from ptqlib.quantization import check_finite

MX_BLOCK_SIZE = 32  # OCP MX v1.0, section 5.2, Table 1: k = 32 for every concrete format
MX_ELEMENT_FORMATS = (E4M3, E5M2, E2M3, E3M2, E2M1)
SCALE_EXPONENT_RANGE = (-127, 127)  # E8M0: 2^-127 .. 2^127


@dataclass(frozen=True)
class MXTensor:
    """A tensor in an MX format: one element code per value (``[..., K]``, unpacked) and one
    E8M0 scale code per block of ``block_size`` along the last axis (``[..., n_blocks]``)."""

    element_codes: torch.Tensor
    scale_codes: torch.Tensor
    element_format: Minifloat
    block_size: int = MX_BLOCK_SIZE

    def scales(self) -> torch.Tensor:
        """The shared scale X of every block, float32 (2^-127 is a float32 subnormal)."""
        return decode(self.scale_codes, E8M0)

    def dequantize(self) -> torch.Tensor:
        """``X * P_i`` for every element, float32."""
        length = self.element_codes.shape[-1]
        per_element = repeat_per_element(self.scales(), self.block_size, length)
        return lookup(self.element_codes, self.element_format) * per_element

    @property
    def numel(self) -> int:
        return self.element_codes.numel()

    @property
    def storage_bits(self) -> int:
        """Element bits for every value plus 8 bits per block (padding is not stored)."""
        blocks = block_count(tuple(self.element_codes.shape), self.block_size)
        return self.numel * self.element_format.bits + blocks * E8M0.bits


def shared_exponent(block_amax: torch.Tensor, element_emax: int) -> torch.Tensor:
    """``floor(log2(amax)) - emax_elem`` of every block, clamped to [-127, 127] (int64).

    ``element_emax`` is the exponent of the element format's largest normal number
    (``Minifloat.max_exponent``: E4M3 8, E2M1 2). ``floor(log2(amax))`` comes from ``frexp``
    (amax = m * 2^p with m in [0.5, 1), so it is p - 1): exact, also for FP32 subnormals.
    An amax of 0 gives -127."""
    _, power = torch.frexp(torch.as_tensor(block_amax).double())
    exponent = power.to(torch.int64) - 1 - element_emax
    exponent = torch.where(torch.as_tensor(block_amax) == 0, SCALE_EXPONENT_RANGE[0], exponent)
    return exponent.clamp(*SCALE_EXPONENT_RANGE)


def quantize_mx(
    x: torch.Tensor, element_format: Minifloat = E4M3, block_size: int = MX_BLOCK_SIZE
) -> MXTensor:
    """``x`` in MX with ``element_format`` elements, blocks along the last axis (section 6.3).

    ``block_size`` 32 is the specification's; other sizes are for experiments (the E8M0 scale
    and the rule stay the same)."""
    check_finite(x, "x")
    if element_format not in MX_ELEMENT_FORMATS:
        names = ", ".join(fmt.name for fmt in MX_ELEMENT_FORMATS)
        raise InputError(f"element_format: MX elements are {names}; got {element_format.name}")
    blocks = split_into_blocks(x.detach().float(), block_size)
    exponent = shared_exponent(blocks.abs().amax(dim=-1), element_format.max_exponent)
    # V_i / X: dividing by a power of two is exact in float32 (a quotient below 2^-126, where
    # float32 would round, is far below every element format's smallest value).
    scaled = torch.ldexp(blocks, -exponent.unsqueeze(-1))
    element_codes = join_blocks(encode(scaled, element_format, saturate=True), x.shape[-1])
    scale_codes = (exponent - SCALE_EXPONENT_RANGE[0]).to(torch.uint8)  # E8M0: e = exp + 127
    return MXTensor(element_codes, scale_codes, element_format, block_size)
