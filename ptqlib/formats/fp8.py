"""FP8 with one FP32 scale per tensor: the format of H100-class tensor cores.

FP8's dynamic range is wide (E4M3 spans 2^-9 .. 448, E5M2 2^-16 .. 57344) but not wide enough
to hold a tensor's values as they are: a weight matrix lives around 0.01-1, where E4M3 has
few codes, and an activation may exceed 448. So a tensor is first divided by a scale that maps
its largest magnitude onto the format's largest number, then rounded::

    scale = amax / max_value             (FP32; max_value = 448 for E4M3, 57344 for E5M2)
    code  = encode(x / scale)            (round to nearest even; saturating)
    x~    = decode(code) * scale

This is "per-tensor scaling" (Micikevicius et al. 2022, section 4: one scale per tensor,
calibrated or computed from the tensor's amax), what ``torch._scaled_mm(a, b, scale_a,
scale_b)`` consumes: it computes ``(decode(a) * scale_a) @ (decode(b) * scale_b)`` in FP32.
After scaling, the relative error of a value is set by the mantissa alone (at most 2^-4 for
E4M3, 2^-3 for E5M2, in the normal range): FP8 keeps small values relatively as precise as
large ones, unlike a uniform integer grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptqlib.errors import InputError
from ptqlib.formats.minifloat import E4M3, Minifloat, encode, lookup
from ptqlib.quantization import check_finite

# Bits of the FP32 per-tensor scale.
TENSOR_SCALE_BITS = 32


@dataclass(frozen=True)
class FP8Tensor:
    """A tensor in FP8: one ``element_format`` code per value and one FP32 ``scale``."""

    codes: torch.Tensor  # uint8, the shape of the tensor
    scale: torch.Tensor  # float32, 0-d
    element_format: Minifloat

    def dequantize(self) -> torch.Tensor:
        return lookup(self.codes, self.element_format) * self.scale

    @property
    def numel(self) -> int:
        return self.codes.numel()

    @property
    def storage_bits(self) -> int:
        """Bits to store it: one code per value plus the FP32 scale."""
        return self.numel * self.element_format.bits + TENSOR_SCALE_BITS


def tensor_scale(amax: float | torch.Tensor, element_format: Minifloat = E4M3) -> torch.Tensor:
    """``amax / max_value`` in FP32, so that the largest magnitude lands on the largest code
    (1.0 for an all-zero tensor, whose codes are all 0 whatever the scale)."""
    amax = torch.as_tensor(amax, dtype=torch.float32)
    if amax.dim() != 0 or not bool(torch.isfinite(amax)) or float(amax) < 0:
        raise InputError(f"amax: expected one finite number >= 0, got {amax}")
    if float(amax) == 0:
        return torch.tensor(1.0)
    return amax / element_format.max_value


def quantize_fp8(
    x: torch.Tensor, element_format: Minifloat = E4M3, amax: float | torch.Tensor | None = None
) -> FP8Tensor:
    """``x`` in ``element_format`` with one scale: from ``x``'s own amax, or from ``amax`` (a
    calibrated range, e.g. of an activation; values beyond it saturate at +-max_value)."""
    check_finite(x, "x")
    if not element_format.signed:
        raise InputError(f"element_format: {element_format.name} is unsigned; use E4M3 or E5M2")
    scale = tensor_scale(x.detach().abs().max() if amax is None else amax, element_format)
    codes = encode(x.detach().float() / scale, element_format, saturate=True)
    return FP8Tensor(codes, scale, element_format)
