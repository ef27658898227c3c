"""The integer layers: a Linear and a Conv2d (each with its fused ReLU), computing on
integers only.

Every integer step computes, exactly as notebook 04 writes it (the math is in
``ptqlib.integer_arithmetic``)::

    acc = sum_k (q_x,k - Z_x) q_w,k + q_b                  int8 x int8, summed in int32
    q_y = clamp(round(M acc) + Z_y, lo, hi),  M ~= M0 2^-n  integer requantization

- weights: int8, symmetric (Z_w = 0), one scale per output channel by default (so M and
  its M0, n are per channel too) or one per tensor;
- bias: int32 with scale S_x S_w and zero-point 0, so it adds straight into acc;
- activations: uint8 or int8, affine, with the qparams from calibration. A fused ReLU is
  the lower clamp ``lo = Z_y`` (the integer of real 0).

How the last line is computed is a property of each step, its ``requantization``
(:class:`~ptqlib.integer_arithmetic.Requantization`): ptqlib's fixed point M0 2^-n (the
default) or ONNX Runtime's float32 multiplier rounding half to even, with which the same
model computes ORT's integers exactly (notebook 08).

**Carriers.** ``torch._int_mm`` multiplies int8 by int8. A uint8 activation q (0..255)
therefore travels between layers as the int8 value ``c = q - 128`` (its *carrier*); an int8
activation is its own carrier. Since ``q - Z_x = c - (Z_x - 128)``, the sum splits into
``sum_k c_k q_w,k`` (the int8 GEMM, ``int8_gemm.int8_matmul``) and
``(128 - Z_x) sum_k q_w,k``, the *carrier correction* (``carrier_correction()``), one
integer per output channel.

Every number a layer computes with is in its buffers (int8 weight, int32 bias, scales,
zero-points, M0 and n) or derived from them at each call. ``load_state_dict``, ``.to()``
and ``copy.deepcopy`` carry all of them, so they can never leave a stale constant behind.
This is the *teaching path*: plain and direct, not fast; ``ptqlib.fast`` computes the same
integers quickly.

**A convolution is a matrix product of patches.** Output pixel (i, j) of channel o is the
dot product of filter o (C x kh x kw weights) with the input patch under it. Cut every patch
out of the (padded) input as one row of length K = C kh kw (*im2col*, ``Tensor.unfold``) and
reshape the filters to ``[O, K]``: the convolution is ``patches @ filters^T``, one int8 GEMM
(``int8_matmul``) of ``[N OH OW, K] x [K, O]``. A *depthwise* convolution (``groups`` = C =
O, weight ``[C, 1, kh, kw]``) filters every channel on its own: no single GEMM, but one
``kh kw``-long dot product per pixel and channel (``int8_channelwise_dot``), in int32.
Every row is a Linear's input, so the integer math is that of ``ptqlib.int8_model``::

    acc = sum_k (q_x,k - Z_x) q_w,k + q_b                 int32, per output pixel and channel
    q_y = clamp(round(M acc) + Z_y, lo, hi),  M = S_x S_w / S_y ~= M0 2^-n   (per channel)

with int8 symmetric weights (one scale per output channel), an int32 bias of scale S_x S_w,
the same carriers (a uint8 activation travels as the int8 ``q - 128``) and the same
carrier correction ``(128 - Z_x) sum_k q_w,k`` per channel.

**Padding with the zero-point.** A float conv pads with the *real* 0. Its integer is Z_x,
not 0: a padded pixel must hold Z_x (carrier ``Z_x - 128``), so that ``q_x - Z_x = 0``
there, as in the float model. Padding with the integer 0 would add the real value
``S_x (0 - Z_x)``, a large negative number when Z_x is large, along every border. It also
makes the zero-point correction the same for every output pixel, border or not.

The pools (max and global average) are in ``ptqlib.int8_pooling``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from ptqlib.errors import InputError
from ptqlib.int8_gemm import carrier_of, int8_channelwise_dot, int8_matmul, to_carrier
from ptqlib.int8_pooling import (  # noqa: F401  (the integer layers, importable from here)
    Int8GlobalAvgPool2d,
    Int8MaxPool2d,
    int_pair,
    max_of_windows,
    rounded_mean,
)
from ptqlib.integer_arithmetic import (
    Requantization,
    check_accumulator_fits,
    fixed_point_multiplier,
    requantization_mode,
    requantize,
    zero_point_correction,
)
from ptqlib.ort_arithmetic import float32_multiplier, requantize_float32
from ptqlib.quantization import QParams

DTYPE_NAMES = {torch.uint8: "uint8", torch.int8: "int8"}


def activation_qparams_from(
    scale: torch.Tensor, zero_point: torch.Tensor, like: QParams
) -> QParams:
    """QParams with the stored scale and zero-point and the fixed range and dtype of ``like``."""
    return QParams(scale, zero_point, like.quant_min, like.quant_max, like.dtype)


def check_carriers(x: torch.Tensor, name: str) -> None:
    """Refuse an input to layer ``name`` that is not int8 carriers."""
    if x.dtype != torch.int8:
        raise InputError(f"layer {name!r}: expected int8 carriers, got {x.dtype}")


class Int8Step(nn.Module):
    """What every integer layer (Int8Linear, Int8Conv2d) stores and derives: one fused step
    of the plan, int8 carriers in, int8 carriers out.

    State (buffers): ``weight`` (int8, output channels first), ``bias`` (int32, scale
    S_x S_w), ``weight_scale`` (float32, per output channel or one value; zero-point 0),
    ``input_scale``/``input_zero_point``, ``output_scale``/``output_zero_point``, and the
    integer multiplier ``multiplier``/``shift`` (M0, n per output channel) derived from the
    scales at construction; with float32 requantization also ``float32_multiplier``
    (ORT's M_f32 per channel). Fixed at construction: the activations' dtypes and integer
    ranges, whether a ReLU is fused, and the ``requantization``.
    """

    def __init__(
        self,
        *,
        weight: torch.Tensor,
        bias: torch.Tensor,
        weight_qparams: QParams,
        input_qparams: QParams,
        output_qparams: QParams,
        relu: bool,
        name: str,
        requantization: Requantization | str = Requantization.FIXED_POINT,
    ) -> None:
        """Every argument is a keyword: the one way to build an integer layer, whether from
        the plan (``ptqlib.int8_model.convert``), a checkpoint (``ptqlib.int8_checkpoint``) or
        another layer (:func:`rebuilt`)."""
        super().__init__()
        if weight_qparams.dtype != torch.int8 or bool((weight_qparams.zero_point != 0).any()):
            raise InputError(
                f"layer {name!r}: weights must be int8 and symmetric (zero-point 0), "
                f"got {weight_qparams}"
            )
        self.name = name
        self.relu = relu
        self.requantization = requantization_mode(requantization)
        self.register_buffer("weight", weight.to(torch.int8).contiguous())
        self.register_buffer("bias", bias.to(torch.int32).contiguous())
        self.register_buffer("weight_scale", weight_qparams.scale.to(torch.float32))
        self.register_buffer("input_scale", input_qparams.scale.to(torch.float32))
        self.register_buffer("input_zero_point", input_qparams.zero_point.to(torch.int64))
        self.register_buffer("output_scale", output_qparams.scale.to(torch.float32))
        self.register_buffer("output_zero_point", output_qparams.zero_point.to(torch.int64))
        self.weight_range = (weight_qparams.quant_min, weight_qparams.quant_max)
        self._input_like, self._output_like = input_qparams, output_qparams
        # M = S_x S_w / S_y per output channel (float64: the product of float32 scales is
        # exact), kept as its integers (M0, n): state like the rest, so the forward pass
        # touches no float.
        real_multiplier = (
            self.input_scale.double() * self.weight_scale.double() / self.output_scale.double()
        )
        try:
            multiplier, shift = fixed_point_multiplier(real_multiplier.expand(len(self.weight)))
        except InputError as error:  # name the layer whose scales these are
            raise InputError(f"layer {name!r}: M = S_x S_w / S_y: {error}") from error
        self.register_buffer("multiplier", multiplier)
        self.register_buffer("shift", shift)
        if self.requantization == Requantization.FLOAT32:
            scales = (self.input_scale, self.weight_scale, self.output_scale)
            multiplier_f32 = float32_multiplier(*scales).expand(len(self.weight))
            self.register_buffer("float32_multiplier", multiplier_f32.contiguous())
        check_accumulator_fits(
            self.name, self.weight_matrix(), self.bias, self.carrier_correction()
        )

    # The qparams, always built from the buffers (the state), never cached.
    @property
    def input_qparams(self) -> QParams:
        return activation_qparams_from(self.input_scale, self.input_zero_point, self._input_like)

    @property
    def output_qparams(self) -> QParams:
        return activation_qparams_from(self.output_scale, self.output_zero_point, self._output_like)

    @property
    def weight_qparams(self) -> QParams:
        axis = 0 if self.weight_scale.dim() == 1 else None
        zero_point = torch.zeros(self.weight_scale.shape, dtype=torch.int64)
        return QParams(self.weight_scale, zero_point, *self.weight_range, torch.int8, axis=axis)

    @property
    def input_dtype(self) -> torch.dtype:
        return self._input_like.dtype

    @property
    def output_dtype(self) -> torch.dtype:
        return self._output_like.dtype

    def construction_arguments(self) -> dict[str, object]:
        """The keyword arguments that build this layer again, from its state now."""
        return {
            "weight": self.weight,
            "bias": self.bias,
            "weight_qparams": self.weight_qparams,
            "input_qparams": self.input_qparams,
            "output_qparams": self.output_qparams,
            "relu": self.relu,
            "name": self.name,
            "requantization": self.requantization,
        }

    def weight_matrix(self) -> torch.Tensor:
        """The weights as rows ``[out, K]``, one row per output channel."""
        return self.weight.reshape(len(self.weight), -1)

    def carrier_correction(self) -> torch.Tensor:
        """``(offset - Z_x) sum_k q_w,k`` per output channel (int32): what the int8 carriers
        ``c = q - offset`` leave out of ``sum_k (q_x,k - Z_x) q_w,k``. It is the
        zero-point correction ``-Z sum_k q_w,k`` taken at ``Z = Z_x - offset``."""
        return zero_point_correction(self.weight_matrix(), self.zero_carrier())

    def zero_carrier(self) -> int:
        """The carrier of the input's real 0, ``Z_x - offset``: what a conv's padded pixels
        hold."""
        return carrier_of(int(self.input_zero_point), self.input_dtype)

    def output_range(self) -> tuple[int, int]:
        """The clamp ``(lo, hi)`` of the output's integers; a fused ReLU raises lo to Z_y."""
        lowest, highest = self._output_like.quant_min, self._output_like.quant_max
        if self.relu:
            lowest = max(lowest, int(self.output_zero_point))
        return lowest, highest

    def output_integers(self, accumulator: torch.Tensor) -> torch.Tensor:
        """Integer accumulators ``[..., out]`` (one column per output channel) to the output's
        integers ``q_y = clamp(round(M acc) + Z_y, lo, hi)`` (int64), rounded the way this
        step's ``requantization`` rounds; the ReLU is lo = Z_y."""
        lowest, highest = self.output_range()
        zero_point = int(self.output_zero_point)
        if self.requantization == Requantization.FLOAT32:
            # ONNX Runtime's way: q_y = clamp(round_half_even(float32(acc) M_f32) + Z_y).
            return requantize_float32(
                accumulator, self.float32_multiplier, zero_point, lowest, highest
            )
        # M ~= M0 2^-n in integers
        return requantize(accumulator, self.multiplier, self.shift, zero_point, lowest, highest)

    def requantize(self, accumulator: torch.Tensor) -> torch.Tensor:
        """int32 accumulators ``[..., out]`` to the output's int8 carriers:
        :meth:`output_integers`, then ``q_y - offset``."""
        return to_carrier(self.output_integers(accumulator), self.output_dtype)

    def _describe(self) -> str:
        granularity = "per-channel" if self.weight_scale.dim() == 1 else "per-tensor"
        relu = ", relu" if self.relu else ""
        mode = ", float32 requantization" if self.requantization == "float32" else ""
        return f"int8 weights {granularity}, output {DTYPE_NAMES[self.output_dtype]}{relu}{mode}"


class Int8Linear(Int8Step):
    """A Linear (and its fused ReLU) on integers: int8 carriers ``[N, in]`` in, ``[N, out]``
    out. The state is :class:`Int8Step`'s; its weight already is the matrix ``[out, in]``."""

    def __init__(self, *, weight: torch.Tensor, name: str = "linear", **step_arguments) -> None:
        """``step_arguments``: the other keyword arguments of :class:`Int8Step`."""
        if weight.dim() != 2:
            raise InputError(f"layer {name!r}: weight must be [out, in], got {tuple(weight.shape)}")
        super().__init__(weight=weight, name=name, **step_arguments)
        self.out_features, self.in_features = self.weight.shape

    def weight_matrix(self) -> torch.Tensor:
        """A Linear's weight already is the matrix ``[out, in]``."""
        return self.weight

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        """Refuse an input that is not ``[N, in_features]``: the teaching path and the fast
        path (``ptqlib.fast``) both ask this before multiplying."""
        if len(shape) != 2 or shape[1] != self.in_features:
            raise InputError(
                f"layer {self.name!r}: expected input [N, {self.in_features}], got "
                f"{tuple(shape)} (images of another size than the model was built for?)"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """int8 carriers ``[N, in]`` to int8 carriers ``[N, out]``, in integers."""
        check_carriers(x, self.name)
        self.check_input_shape(tuple(x.shape))
        # acc = sum_k (q_x,k - Z_x) q_w,k + q_b: the int8 GEMM, the carrier
        # correction and the int32 bias, all int32.
        accumulator = int8_matmul(x, self.weight.t())
        accumulator = accumulator + self.carrier_correction() + self.bias
        # q_y = clamp(round(M acc) + Z_y, lo, hi), as int8 carriers.
        return self.requantize(accumulator)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, {self._describe()}"


def patches(x: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """im2col: every ``kh x kw`` window of the (already padded) ``x [N, C, H, W]`` as one row
    ``[C kh kw]``, rows ordered by (image, output row, output column): ``[N OH OW, C kh kw]``.
    Works on any dtype (``Tensor.unfold`` only takes views)."""
    (kernel_h, kernel_w), (stride_h, stride_w) = kernel_size, stride
    windows = x.unfold(2, kernel_h, stride_h).unfold(3, kernel_w, stride_w)  # N C OH OW kh kw
    batch, channels, out_h, out_w = windows.shape[:4]
    rows = windows.permute(0, 2, 3, 1, 4, 5)  # N OH OW C kh kw: a row per output pixel
    return rows.reshape(batch * out_h * out_w, channels * kernel_h * kernel_w)


def conv_accumulators(rows: torch.Tensor, conv: Int8Conv2d) -> torch.Tensor:
    """int32 accumulators ``[M, O]`` of ``conv`` for its patches ``rows [M, C kh kw]``
    (int8 carriers, columns in (C, kh, kw) order), carrier correction and bias included:
    one int8 GEMM, or per-channel dot products for a depthwise convolution."""
    if conv.depthwise:
        by_channel = rows.reshape(len(rows), conv.in_channels, -1)  # M, C, kh kw
        accumulator = int8_channelwise_dot(by_channel, conv.weight_matrix())
    else:
        accumulator = int8_matmul(rows, conv.weight_matrix().t())
    # Add the per-channel constants together first: one pass over the large accumulator.
    return accumulator + (conv.carrier_correction() + conv.bias)


class Int8Conv2d(Int8Step):
    """A Conv2d (BatchNorm folded, ReLU fused) on integers: int8 carriers ``[N, C, H, W]`` in,
    int8 carriers ``[N, O, OH, OW]`` out.

    The state is :class:`Int8Step`'s, with ``weight`` as ``[O, C / groups, kh, kw]``: its
    ``weight_matrix()`` rows ``[O, C kh kw]`` are in the order of :func:`patches`' columns
    (``[C, kh kw]`` for a depthwise conv). Fixed at construction besides: stride, padding and
    ``groups`` (1, or C = O for a depthwise convolution).
    """

    def __init__(
        self,
        *,
        weight: torch.Tensor,
        stride: int | tuple[int, int] = (1, 1),
        padding: int | tuple[int, int] = (0, 0),
        groups: int = 1,
        name: str = "conv",
        **step_arguments,
    ) -> None:
        """``step_arguments``: the other keyword arguments of :class:`Int8Step`."""
        if weight.dim() != 4:
            raise InputError(
                f"layer {name!r}: weight must be [O, C, kh, kw], got {tuple(weight.shape)}"
            )
        if not isinstance(groups, int) or not (
            groups == 1 or (weight.shape[1] == 1 and groups == weight.shape[0] > 1)
        ):
            raise InputError(
                f"layer {name!r}: groups={groups!r} with weight {tuple(weight.shape)}; expected "
                "1, or a depthwise conv (groups == channels, weight [C, 1, kh, kw])"
            )
        super().__init__(weight=weight, name=name, **step_arguments)
        self.stride, self.padding = int_pair(stride, "stride", 1), int_pair(padding, "padding", 0)
        self.groups = groups
        self.out_channels = self.weight.shape[0]
        self.in_channels = self.weight.shape[1] * groups
        self.kernel_size = tuple(self.weight.shape[2:])

    @property
    def depthwise(self) -> bool:
        return self.groups > 1

    def check_input_shape(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """The output's height and width for an input of ``shape`` ``[N, C, H, W]``:
        ``(H + 2 p - k) // s + 1`` each. Refuses the wrong channel count and an image
        smaller than the kernel (with the padding); both paths ask this."""
        if len(shape) != 4 or shape[1] != self.in_channels:
            raise InputError(
                f"layer {self.name!r}: expected input [N, {self.in_channels}, H, W], got "
                f"{tuple(shape)}"
            )
        sizes = [
            (size + 2 * pad - kernel) // stride + 1
            for size, pad, kernel, stride in zip(
                shape[2:], self.padding, self.kernel_size, self.stride, strict=True
            )
        ]
        if min(sizes) < 1:
            raise InputError(
                f"layer {self.name!r}: an input of {shape[2]} x {shape[3]} pixels is smaller "
                f"than its kernel {self.kernel_size[0]} x {self.kernel_size[1]} (padding "
                f"{self.padding}); give it larger images"
            )
        return sizes[0], sizes[1]

    def construction_arguments(self) -> dict[str, object]:
        """:meth:`Int8Step.construction_arguments` and the convolution's geometry."""
        geometry = {"stride": self.stride, "padding": self.padding, "groups": self.groups}
        return {**super().construction_arguments(), **geometry}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_carriers(x, self.name)
        out_h, out_w = self.check_input_shape(tuple(x.shape))
        pad_h, pad_w = self.padding
        # Pad with the integer of the real 0 (see the module docstring), not with 0.
        padded = functional.pad(x, (pad_w, pad_w, pad_h, pad_h), value=self.zero_carrier())
        # acc = sum_k (q_x,k - Z_x) q_w,k + q_b for every output pixel and channel (columns),
        # then requantize per channel.
        accumulator = conv_accumulators(patches(padded, self.kernel_size, self.stride), self)
        carriers = self.requantize(accumulator)
        # rows are (image, row, column); channels last -> [N, O, OH, OW]
        return carriers.reshape(x.shape[0], out_h, out_w, self.out_channels).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        kind = "depthwise, " if self.depthwise else ""
        return (
            f"{self.in_channels} -> {self.out_channels}, {kind}kernel {self.kernel_size}, "
            f"stride {self.stride}, padding {self.padding}, {self._describe()}"
        )


def rebuilt(layer: Int8Step, **changes) -> Int8Step:
    """``layer`` built again from its state, with the keyword arguments in ``changes``
    replaced (e.g. ``requantization="float32"``): the same class, the same constructor."""
    return type(layer)(**{**layer.construction_arguments(), **changes})
