"""The arithmetic of ONNX Runtime's INT8 CPU kernels, as pure functions.

ptqlib's teaching path requantizes with integers only (``ptqlib.integer_arithmetic``)::

    q_y = clamp(((acc M0 + 2^(n-1)) >> n) + Z_y, lo, hi)          M ~= M0 2^-n

ONNX Runtime (its MLAS library, ``MlasRequantizeOutput``) does the same step in float32::

    M_f32 = float32(float32(S_x S_w) / S_y)                     per output channel
    q_y   = clamp(round_half_even(float32(acc) * M_f32) + Z_y, lo, hi)

and quantizes a float input by *dividing* by its scale (ONNX's QuantizeLinear), where
PyTorch multiplies by ``1 / S``::

    q_x = clamp(round_half_even(float32(x / S_x)) + Z_x, quant_min, quant_max)

Both roundings are exact to within one step of the real ``M acc``; they land on different
neighbours only when ``M acc`` lies within a rounding error of a half-integer. Notebook 08
counts how often. Every operation here is float32 in the order ORT performs it, so the
integers agree with ORT bit for bit (``tests/test_onnx_export.py`` checks every layer).

The accumulator's conversion to float32 is exact while ``|acc| < 2^24``; above that it
rounds, as it does in ORT.

This module is flat, beside ``ptqlib.integer_arithmetic``, rather than in ``ptqlib.deploy``:
a converted model can requantize either way (``convert(..., requantization="float32")``,
:class:`~ptqlib.integer_arithmetic.Requantization`), and the core never imports
``ptqlib.deploy``.
"""

from __future__ import annotations

import torch

from ptqlib.errors import InputError
from ptqlib.quantization import QParams, check_finite


def float32_multiplier(
    input_scale: torch.Tensor, weight_scale: torch.Tensor, output_scale: torch.Tensor
) -> torch.Tensor:
    """``M = S_x S_w / S_y`` as ORT computes it: a float32 product, then a float32 division.

    All three scales are float32 (``weight_scale`` per output channel or one value); the
    result has the shape of ``weight_scale``.
    """
    named = {"input_scale": input_scale, "weight_scale": weight_scale, "output_scale": output_scale}
    scales = [torch.as_tensor(scale, dtype=torch.float32) for scale in named.values()]
    for name, scale in zip(named, scales, strict=True):
        if not bool(torch.isfinite(scale).all()) or bool((scale <= 0).any()):
            raise InputError(f"{name}: expected positive finite float32 scales, got {scale}")
    input_scale, weight_scale, output_scale = scales
    return (input_scale * weight_scale) / output_scale


def requantize_float32(
    accumulator: torch.Tensor,
    multiplier: torch.Tensor,
    zero_point: int,
    quant_min: int,
    quant_max: int,
) -> torch.Tensor:
    """``q_y = clamp(round_half_even(float32(acc) * M_f32) + Z_y, quant_min, quant_max)``.

    ``accumulator`` is the int32 sum (bias included), ``[N, out]``; ``multiplier`` the
    float32 ``M`` of :func:`float32_multiplier` (one per column, or one value). Like ORT,
    the zero-point is added after rounding and the clamp is the last step. Returns int64.
    The conversion of acc to float32 is exact while ``|acc| < 2^24``; above, it rounds as
    it does in ORT.
    """
    if accumulator.is_floating_point():
        raise TypeError(f"accumulator: expected an integer tensor, got {accumulator.dtype}")
    multiplier = torch.as_tensor(multiplier, dtype=torch.float32)
    # torch.round rounds half to even, like the x86 instruction MLAS uses (cvtps2dq).
    scaled = torch.round(accumulator.to(torch.float32) * multiplier)
    return (scaled.to(torch.int64) + zero_point).clamp(quant_min, quant_max)


def quantize_by_division(x: torch.Tensor, qparams: QParams) -> torch.Tensor:
    """ONNX's QuantizeLinear for per-tensor qparams: ``clamp(round(x / S) + Z)`` with the
    division in float32 (``ptqlib.quantization.quantize`` multiplies by ``1 / S`` instead,
    as PyTorch does; the two differ by one step on rare values)."""
    if not isinstance(qparams, QParams) or qparams.axis is not None:
        raise InputError(f"qparams: expected per-tensor QParams, got {qparams!r}")
    check_finite(x, "x")
    scale = qparams.scale.to(torch.float32)
    quantized = torch.round(x.float() / scale) + qparams.zero_point.to(torch.float32)
    return quantized.clamp(qparams.quant_min, qparams.quant_max).to(qparams.dtype)
