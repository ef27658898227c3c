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
integers agree with ORT bit for bit (``tests/test_onnx_runtime.py`` checks every layer).

The accumulator's conversion to float32 is exact while ``|acc| < 2^24``; above that it
rounds, as it does in ORT.

The functions live in the core, ``ptqlib.integer_arithmetic``, since a converted model can
requantize either way (``convert(..., requantization="float32")``) and the core never imports
``ptqlib.deploy``; this module names them for notebook 08.
"""

from __future__ import annotations

from ptqlib.integer_arithmetic import (
    Requantization,
    float32_multiplier,
    quantize_by_division,
    requantize_float32,
)

__all__ = ["Requantization", "float32_multiplier", "quantize_by_division", "requantize_float32"]
