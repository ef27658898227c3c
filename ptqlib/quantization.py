"""The quantization math: from a float range to a scale and a zero-point, and back.

Affine (asymmetric) quantization maps a real value r to an integer q with a scale S
(a positive float) and a zero-point Z (an integer)::

    q = clamp(round(r / S) + Z, quant_min, quant_max)        quantize
    r ~ S * (q - Z)                                           dequantize

Given the range [min_val, max_val] that a tensor takes, first widened to include 0
so that the real value 0.0 is exactly representable (it is: q = Z gives r = 0)::

    affine:     S = (max_val - min_val) / (quant_max - quant_min)
                Z = quant_min - round(min_val / S)               (clamped to the range)
    symmetric:  S = max(|min_val|, |max_val|) / ((quant_max - quant_min) / 2)
                Z = 0 for signed int8, 128 (the middle) for unsigned uint8

Per-channel quantization gives every slice along one axis (``axis``) its own S and Z.
Every formula here is written with the same float32 operations in the same order as
``torch.ao.quantization``'s observers and ``torch.quantize_per_tensor`` /
``torch.quantize_per_channel``, so the results agree bit for bit (the tests check it).
The integers are stored in plain ``torch.uint8`` / ``torch.int8`` tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ptqlib.errors import InputError

SUPPORTED_DTYPES = (torch.uint8, torch.int8)

# The smallest scale allowed, as in torch.ao: keeps S > 0 even for an all-zero tensor.
EPS = torch.finfo(torch.float32).eps


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"dtype: expected torch.uint8 or torch.int8, got {dtype}")


def quant_range(
    dtype: torch.dtype = torch.uint8,
    reduce_range: bool = False,
    quant_min: int | None = None,
    quant_max: int | None = None,
) -> tuple[int, int]:
    """The integer range ``(quant_min, quant_max)`` for ``dtype``.

    By default the whole dtype: 0..255 for uint8, -128..127 for int8. ``reduce_range``
    drops one bit (0..127, -64..63), which keeps the int16 intermediate sums of some
    older x86 kernels from overflowing. A custom range (both ``quant_min`` and
    ``quant_max``) must include 0 and fit in the dtype; ``reduce_range`` halves it too.
    """
    _check_dtype(dtype)
    info = torch.iinfo(dtype)
    if (quant_min is None) != (quant_max is None):
        raise InputError("quant_min and quant_max: give both or neither")
    if quant_min is None:
        quant_min, quant_max = info.min, info.max
    else:
        if not (isinstance(quant_min, int) and isinstance(quant_max, int)):
            raise TypeError(
                f"quant_min/quant_max: expected integers, got {quant_min!r}, {quant_max!r}"
            )
        if quant_min >= quant_max:
            raise InputError(
                f"quant_min ({quant_min}) must be smaller than quant_max ({quant_max})"
            )
        if not quant_min <= 0 <= quant_max:
            raise InputError(
                f"quant_min/quant_max: the range {quant_min}..{quant_max} must include 0"
            )
        if quant_min < info.min or quant_max > info.max:
            raise InputError(
                f"quant_min/quant_max: the range {quant_min}..{quant_max} does not fit in "
                f"{dtype} ({info.min}..{info.max})"
            )
    if reduce_range:
        quant_min, quant_max = quant_min // 2, quant_max // 2
        if quant_min >= quant_max:
            raise InputError(
                f"reduce_range: halving leaves {quant_min}..{quant_max}, no range at all; "
                "use a wider range or reduce_range=False"
            )
    return quant_min, quant_max


def bit_range(bits: int, dtype: torch.dtype = torch.uint8) -> tuple[int, int]:
    """The range of a ``bits``-bit integer stored in ``dtype``: 0..2^b-1 or -2^(b-1)..2^(b-1)-1."""
    _check_dtype(dtype)
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise InputError(f"bits: expected a whole number from 2 to 8, got {bits!r}")
    if dtype == torch.uint8:
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


# The restricted symmetric int8 grid: -127..127, S = max|w| / 127, so that -w is exactly as
# representable as w. ONNX Runtime's quantizer, TFLite and CMSIS-NN put weights on it; torch's
# own symmetric grid is the full -128..127 (notebook 02).
RESTRICTED_WEIGHT_RANGE = (-127, 127)


@dataclass(frozen=True)
class QParams:
    """Everything needed to quantize one tensor: r = scale * (q - zero_point).

    ``scale`` (float32) and ``zero_point`` (int64) are 0-d tensors for per-tensor
    quantization, or 1-d tensors with one entry per slice along ``axis`` for per-channel.
    The integers live in ``quant_min..quant_max``, stored as ``dtype``.
    """

    scale: torch.Tensor
    zero_point: torch.Tensor
    quant_min: int
    quant_max: int
    dtype: torch.dtype = torch.uint8
    axis: int | None = None

    def __repr__(self) -> str:
        if self.axis is None:
            return (
                f"QParams(scale={self.scale.item():.6g}, zero_point={self.zero_point.item()}, "
                f"range={self.quant_min}..{self.quant_max}, dtype={self.dtype})"
            )
        return (
            f"QParams(per-channel along axis {self.axis}: {self.scale.numel()} scales in "
            f"[{self.scale.min().item():.4g}, {self.scale.max().item():.4g}], "
            f"range={self.quant_min}..{self.quant_max}, dtype={self.dtype})"
        )


def min_max(x: torch.Tensor, axis: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The minimum and maximum of ``x``: overall, or of every slice along ``axis``."""
    check_finite(x, "x")
    if axis is None:
        return torch.aminmax(x)
    axis = normalise_axis(axis, x.dim())
    rows = x.detach().transpose(0, axis).reshape(x.shape[axis], -1)
    return torch.aminmax(rows, dim=1)


def check_float_tensor(x: object, name: str, action: str = "quantize") -> None:
    """Raise a clear error unless ``x`` is a non-empty float tensor (no pass over the data);
    ``action`` says in the message what an empty tensor leaves nothing to do."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.numel() == 0:
        raise InputError(
            f"{name}: the tensor is empty (shape {tuple(x.shape)}); nothing to {action}"
        )
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a float tensor, got {x.dtype}")


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise a clear error for a non-tensor, an empty tensor, or one holding NaN or Inf."""
    check_float_tensor(x, name)
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{name}: the tensor contains NaN or Inf; quantize finite values only")


def normalise_axis(axis: int, ndim: int) -> int:
    """``axis`` as a non-negative index into ``ndim`` dimensions, or a clear error."""
    if not isinstance(axis, int) or not -ndim <= axis < ndim:
        raise InputError(f"axis (ch_axis): {axis!r} is out of range for a {ndim}-d tensor")
    return axis % ndim


def qparams_from_range(
    min_val: torch.Tensor | float,
    max_val: torch.Tensor | float,
    dtype: torch.dtype = torch.uint8,
    symmetric: bool = False,
    reduce_range: bool = False,
    quant_min: int | None = None,
    quant_max: int | None = None,
    axis: int | None = None,
) -> QParams:
    """Scale and zero-point for values in ``[min_val, max_val]`` (see the module docstring).

    ``min_val``/``max_val`` are numbers or 0-d tensors (per-tensor), or 1-d tensors with
    one entry per channel (then give ``axis``, the channel axis of the tensor to quantize).
    """
    min_val = torch.as_tensor(min_val, dtype=torch.float32)
    max_val = torch.as_tensor(max_val, dtype=torch.float32)
    if min_val.shape != max_val.shape:
        raise InputError(
            f"min_val {tuple(min_val.shape)} and max_val {tuple(max_val.shape)} differ in shape"
        )
    if not bool(torch.isfinite(min_val).all() and torch.isfinite(max_val).all()):
        raise InputError("min_val/max_val: the range must be finite (no NaN or Inf)")
    if bool((min_val > max_val).any()):
        raise InputError(f"min_val must not exceed max_val, got {min_val} > {max_val}")
    if min_val.dim() > 1:
        raise InputError(
            f"min_val/max_val: expected numbers or 1-d tensors, got shape {tuple(min_val.shape)}"
        )
    if (axis is None) != (min_val.dim() == 0):
        raise InputError("axis: give it exactly when min_val/max_val hold one value per channel")
    customised = quant_min is not None
    quant_min, quant_max = quant_range(dtype, reduce_range, quant_min, quant_max)

    # Widen the range to include 0, so that the real 0.0 is exactly representable.
    min_neg = torch.min(min_val, torch.zeros_like(min_val))
    max_pos = torch.max(max_val, torch.zeros_like(max_val))
    eps = torch.tensor(EPS)
    if symmetric:
        max_abs = torch.max(-min_neg, max_pos)
        scale = torch.max(max_abs / (float(quant_max - quant_min) / 2), eps)
        if dtype == torch.int8:
            zero_point = torch.zeros_like(min_val, dtype=torch.int64)
        else:
            # The middle of the unsigned range (torch.ao: 128 for the default 0..255).
            middle = 128 if not customised and not reduce_range else (quant_min + quant_max) // 2
            zero_point = torch.full_like(min_val, middle, dtype=torch.int64)
    else:
        scale = torch.max((max_pos - min_neg) / float(quant_max - quant_min), eps)
        if not bool(torch.isfinite(scale).all()):
            # torch.ao returns an infinite scale here; dequantize would then give NaN.
            raise InputError(
                f"min_val/max_val: the range [{min_val}, {max_val}] is too wide; its width "
                "overflows float32 (use a symmetric scheme or a narrower range)"
            )
        zero_point = quant_min - torch.round(min_neg / scale).to(torch.int64)
        zero_point = torch.clamp(zero_point, quant_min, quant_max)
    return QParams(scale, zero_point, quant_min, quant_max, dtype, axis)


def _broadcast(values: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Shape per-channel ``values`` so they line up with ``x`` along ``axis``."""
    if axis is None:
        return values
    axis = normalise_axis(axis, x.dim())
    if x.shape[axis] != values.numel():
        raise InputError(
            f"x has {x.shape[axis]} channels along axis {axis} but the qparams have "
            f"{values.numel()}"
        )
    shape = [1] * x.dim()
    shape[axis] = -1
    return values.reshape(shape)


def _check_qparams(qparams: object) -> None:
    if not isinstance(qparams, QParams):
        raise TypeError(
            f"qparams: expected a QParams (e.g. from qparams_from_range), got "
            f"{type(qparams).__name__}"
        )


def quantize(x: torch.Tensor, qparams: QParams) -> torch.Tensor:
    """q = clamp(round(x / S) + Z, quant_min, quant_max), stored as ``qparams.dtype``.

    ``round`` is round-half-to-even, and ``x / S`` is computed as ``x * (1 / S)`` in
    float32, exactly as PyTorch's quantize kernels do.
    """
    _check_qparams(qparams)
    check_finite(x, "x")
    inverse_scale = 1.0 / _broadcast(qparams.scale, x, qparams.axis)
    zero_point = _broadcast(qparams.zero_point, x, qparams.axis)
    # Add Z and clamp while still in float32, as PyTorch does: converting a huge x / S
    # (say 1e20) to an integer first would overflow and land on the wrong end of the range.
    # The float sum is exact wherever it matters: |round(x / S)| < 2^24 inside the range.
    q = torch.round(x.float() * inverse_scale) + zero_point
    return q.clamp(qparams.quant_min, qparams.quant_max).to(qparams.dtype)


def dequantize(q: torch.Tensor, qparams: QParams) -> torch.Tensor:
    """r = S * (q - Z), in float32."""
    _check_qparams(qparams)
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q: expected a torch.Tensor of integers, got {type(q).__name__}")
    if q.is_floating_point() or q.is_complex() or q.dtype == torch.bool:
        raise TypeError(f"q: expected an integer tensor (the output of quantize), got {q.dtype}")
    scale = _broadcast(qparams.scale, q, qparams.axis)
    zero_point = _broadcast(qparams.zero_point, q, qparams.axis)
    return (q.to(torch.int64) - zero_point).to(torch.float32) * scale


def fake_quantize(x: torch.Tensor, qparams: QParams) -> torch.Tensor:
    """Quantize, then dequantize: the float value the integer model will really see."""
    return dequantize(quantize(x, qparams), qparams)


def _check_same_shape(reference: torch.Tensor, approximation: torch.Tensor) -> None:
    # Broadcasting would silently compare every element with every other one.
    for name, tensor in (("reference", reference), ("approximation", approximation)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
        if tensor.numel() == 0:
            raise InputError(f"{name}: the tensor is empty; there is no error to measure")
    if reference.shape != approximation.shape:
        raise InputError(
            f"approximation: shape {tuple(approximation.shape)} differs from the reference's "
            f"{tuple(reference.shape)}"
        )


def mse(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """Mean squared error between a tensor and its (de)quantized approximation."""
    _check_same_shape(reference, approximation)
    return float(((reference.float() - approximation.float()) ** 2).mean())


def sqnr_db(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in decibels: 10 log10(sum r^2 / sum (r - r~)^2).

    Higher is better; each extra bit adds about 6 dB. An exact copy gives infinity.
    """
    _check_same_shape(reference, approximation)
    signal = float((reference.double() ** 2).sum())
    noise = float(((reference.double() - approximation.double()) ** 2).sum())
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf
