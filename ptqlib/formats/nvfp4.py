"""NVFP4: E2M1 values in blocks of 16, each block with an FP8 E4M3 scale, and one FP32 scale
for the whole tensor (NVIDIA Blackwell).

MXFP4 scales a block of 32 by a power of two. NVFP4 makes two changes (NVIDIA, "Introducing
NVFP4 for Efficient and Accurate Low-Precision Inference", 2025; the exact formulas are in
"Pretraining Large Language Models with NVFP4", arXiv:2509.25149, Appendix B):

- blocks of 16, so an outlier spoils fewer neighbours;
- the block scale is an E4M3 number, not a power of two, so the block's largest magnitude
  can land (almost) exactly on E2M1's largest value 6 instead of somewhere in [4, 8).

E4M3 spans only 2^-9 .. 448, so the block scales are themselves scaled by a per-tensor FP32
``tensor_scale`` that maps the largest block scale onto E4M3's 448::

    tensor_scale   = amax(tensor) / (6 * 448)                              FP32
    block_scale    = E4M3( (amax(block) / 6) / tensor_scale )              round to nearest even
    elements       = E2M1( x * ((1 / tensor_scale) / block_scale) )        saturating at +-6
    x~             = E2M1 value * (tensor_scale * block_scale)

Storage: 4 bits per value + 8 bits per 16 values = 4.5 bits, plus 32 bits per tensor.

The FP32 operations run in the order of torchao's reference ``nvfp4_quantize`` (with its
``per_tensor_scale``), so the two agree bit for bit; the NVIDIA paper writes the element
multiplier as ``1 / (block_scale * tensor_scale)`` and NVIDIA's Model Optimizer divides by
that product (``modelopt.torch.quantization.qtensor.nvfp4_tensor``): the same number up to
FP32 rounding, so the two references can differ on an exact tie.

**Small block scales.** A block whose amax is tiny next to the tensor's (an outlier elsewhere)
needs a block scale below E4M3's smallest normal 2^-6, i.e. an E4M3 subnormal (down to 2^-9).
The scale is clamped below at ``smallest_block_scale`` so that it is never 0 (which would
make the element multiplier infinite). By default that is E4M3's smallest subnormal 2^-9, so
every E4M3 scale can be used (NVIDIA's Model Optimizer clamps at 2^-9 too). torchao
0.18 clamps at 2^-6 (``torch.finfo(float8_e4m3fn).tiny``), so such blocks get a scale up to
8x too large and lose resolution; ``smallest_block_scale=2**-6`` reproduces it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptqlib.errors import InputError
from ptqlib.formats.blocks import block_count, join_blocks, repeat_per_element, split_into_blocks
from ptqlib.formats.fp8 import TENSOR_SCALE_BITS
from ptqlib.formats.minifloat import E2M1, E4M3, decode, encode, lookup
from ptqlib.quantization import check_finite

NVFP4_BLOCK_SIZE = 16


@dataclass(frozen=True)
class NVFP4Tensor:
    """A tensor in NVFP4: E2M1 codes ``[..., K]`` (unpacked), E4M3 block scale codes
    ``[..., n_blocks]`` and the FP32 ``tensor_scale`` (0-d)."""

    element_codes: torch.Tensor
    block_scale_codes: torch.Tensor
    tensor_scale: torch.Tensor
    block_size: int = NVFP4_BLOCK_SIZE

    def dequantize(self) -> torch.Tensor:
        """E2M1 value * (tensor_scale * block_scale), float32."""
        scales = self.tensor_scale * decode(self.block_scale_codes, E4M3)
        per_element = repeat_per_element(scales, self.block_size, self.element_codes.shape[-1])
        return lookup(self.element_codes, E2M1) * per_element

    @property
    def numel(self) -> int:
        return self.element_codes.numel()

    @property
    def storage_bits(self) -> int:
        blocks = block_count(tuple(self.element_codes.shape), self.block_size)
        return self.numel * E2M1.bits + blocks * E4M3.bits + TENSOR_SCALE_BITS


def nvfp4_tensor_scale(amax: float | torch.Tensor) -> torch.Tensor:
    """``amax / (6 * 448)`` in FP32 (1.0 for an all-zero tensor)."""
    amax = torch.as_tensor(amax, dtype=torch.float32)
    if amax.dim() != 0 or not bool(torch.isfinite(amax)) or float(amax) < 0:
        raise InputError(f"amax: expected one finite number >= 0, got {amax}")
    if float(amax) == 0:
        return torch.tensor(1.0)
    return amax / (E2M1.max_value * E4M3.max_value)


def quantize_nvfp4(
    x: torch.Tensor,
    amax: float | torch.Tensor | None = None,
    block_size: int = NVFP4_BLOCK_SIZE,
    smallest_block_scale: float = E4M3.smallest_positive,
) -> NVFP4Tensor:
    """``x`` in NVFP4, blocks along the last axis (see the module docstring).

    ``amax``: the tensor's range for the FP32 scale (a calibrated range for activations;
    default: ``x``'s own). ``smallest_block_scale``: the lower clamp of the block scales,
    a positive E4M3 value (2^-9 by default; 2^-6 as in torchao)."""
    check_finite(x, "x")
    representable = encode(torch.tensor([float(smallest_block_scale)]), E4M3)
    if not 0 < float(smallest_block_scale) <= E4M3.max_value or float(
        decode(representable, E4M3)
    ) != float(smallest_block_scale):
        raise InputError(
            f"smallest_block_scale: expected a positive E4M3 value (2^-9 .. 448), got "
            f"{smallest_block_scale!r}"
        )
    x = x.detach().float()
    tensor_scale = nvfp4_tensor_scale(x.abs().max() if amax is None else amax)
    blocks = split_into_blocks(x, block_size)
    ideal_block_scale = (blocks.abs().amax(dim=-1) / E2M1.max_value) / tensor_scale
    ideal_block_scale = ideal_block_scale.clamp(smallest_block_scale, E4M3.max_value)
    block_scale_codes = encode(ideal_block_scale, E4M3)
    multiplier = (1.0 / tensor_scale) / decode(block_scale_codes, E4M3)
    scaled = (blocks * multiplier.unsqueeze(-1)).clamp(-E2M1.max_value, E2M1.max_value)
    element_codes = join_blocks(encode(scaled, E2M1, saturate=True), x.shape[-1])
    return NVFP4Tensor(element_codes, block_scale_codes, tensor_scale, block_size)
