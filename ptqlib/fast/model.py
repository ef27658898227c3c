"""The fast path: an :class:`~ptqlib.int8_model.Int8Model` run with its constants folded.

One class for the MLP and the CNN. :class:`FastInt8Model` computes exactly the teaching
path's integers, with the changes of ``ptqlib.fast.folding`` (requantization folded into one
multiply-add) and ``ptqlib.fast.conv`` (convolutions channels last, max-pool before
requantizing), plus:

- **Input quantization folded.** The teaching path quantizes the images
  (``clamp(round(x (1 / S)) + Z)``, or ``round(x / S)`` for ORT's arithmetic), then subtracts
  the carrier offset. Here the offset is folded into the zero-point and the clamp,
  ``clamp(round(x (1 / S)) + Z', lo', hi')`` with ``Z' = Z - offset``: the same float32
  operations, the same integers (exact: every integer involved is below 2^24). A model
  outside that (a hand-set Z beyond 2^24, or 1 / S overflowing after ``.half()``) gets the
  teaching path's own quantization.
- **Raw pixels in.** For a model converted with ``pixel_input=True`` (input qparams S = 1,
  Z = 0, uint8), a uint8 image already is the quantized input; its carrier ``p - 128`` is
  ``p XOR 0x80`` read as int8 (flipping the top bit of a byte subtracts 128 modulo 256): no
  float work at all before the first GEMM.
- **The right GEMM for this CPU**: ``int8_gemm.int8_matmul``'s choice, ``torch._int_mm`` or
  the exact float GEMM (``use_int8_gemm``; default: whichever is fast here), with the weight
  prepared once when folding (``gemm_weight``) and ``gemm_product`` on every call. With the
  float GEMM the carriers stay floats between layers (exact integers, far below 2^24):
  converting them to int8 and back would cost two passes per layer and change nothing.

**State.** Like the teaching path, the fast path follows the model's state. It holds the
teaching model and, on every call, checks that the model still has the layers, the buffer
objects (held here, not their ``id()``, which a new tensor can reuse), the buffer versions
and the steps' requantization modes and ReLU flags it folded its constants from (every
in-place write, ``load_state_dict`` included, bumps a tensor's version). If anything
changed, it folds again before computing. So ``load_state_dict`` on the teaching model
changes the fast path's results too. Some writes leave nothing to check: ``buffer.data =
...`` swaps the data under the same tensor and version, a write through ``buffer.numpy()``
bumps no version, and buffers deleted and registered again under each other's names are the
same objects in the same order (checking the names too would cost about 1 us a call). Assign
the buffer itself instead. A buffer that is an inference tensor (made under
``torch.inference_mode()``) has no version at all: with one among the buffers, the fast path
folds on every call.
"""

from __future__ import annotations

import itertools
import math
import operator
from dataclasses import dataclass

import torch
from torch import nn

from ptqlib.errors import InputError
from ptqlib.fast.conv import conv_products, max_pool_channels_last
from ptqlib.fast.folding import FoldedStep, fold, requantize_folded, zero_operand
from ptqlib.int8_gemm import (
    FLOAT32_EXACT_INTEGERS,
    carrier_of,
    default_uses_int8_gemm,
    gemm_product,
)
from ptqlib.int8_layers import (
    Int8Conv2d,
    Int8GlobalAvgPool2d,
    Int8Linear,
    Int8MaxPool2d,
    Int8Step,
    max_of_windows,
    rounded_mean,
)
from ptqlib.int8_model import Int8Model, check_batch
from ptqlib.integer_arithmetic import Requantization
from ptqlib.quantization import check_finite

SIGN_BIT = torch.tensor(0x80, dtype=torch.uint8)  # a tensor: XOR with it is ~3x faster than 128
FAST_LAYERS = (Int8Linear, Int8Conv2d, Int8MaxPool2d, Int8GlobalAvgPool2d, nn.Flatten)


VERSION = operator.attrgetter("_version")
STEP_FLAGS = operator.attrgetter("requantization", "relu")  # read by the fold, not buffers


@dataclass(frozen=True)
class PlannedLayer:
    """One layer of the fast forward pass: the teaching layer, its folded constants (integer
    steps), the max-pool run before its requantization (a conv followed by one), and the
    activation layout it starts from (``[N, H, W, C]`` after the first convolution)."""

    layer: nn.Module
    folded: FoldedStep | None
    pool: Int8MaxPool2d | None
    channels_last: bool


def plan_layers(layers: tuple[nn.Module, ...], steps: dict[int, FoldedStep]) -> list[PlannedLayer]:
    """The layers as the fast path runs them: a conv absorbs the max-pool after it where its
    requantization is non-decreasing (``FoldedStep.monotone``)."""
    plan, channels_last, index = [], False, 0
    while index < len(layers):
        layer = layers[index]
        following = layers[index + 1] if index + 1 < len(layers) else None
        pool = (
            following
            if isinstance(layer, Int8Conv2d)
            and isinstance(following, Int8MaxPool2d)
            and steps[id(layer)].monotone
            else None
        )
        plan.append(PlannedLayer(layer, steps.get(id(layer)), pool, channels_last))
        if isinstance(layer, Int8Conv2d):
            channels_last = True
        elif isinstance(layer, nn.Flatten):
            channels_last = False
        index += 2 if pool is not None else 1
    return plan


class FoldedModel:
    """Everything the fast path computes with, folded from the teaching model's state once,
    and that state (model, layers, buffer objects, versions, flags) to tell when it is stale."""

    def __init__(self, model: Int8Model, use_int8_gemm: bool) -> None:
        self.layer_list = model.layers
        self.layers = tuple(model.layers)
        self.integer_steps = tuple(layer for layer in self.layers if isinstance(layer, Int8Step))
        # Live views of the modules' own buffer dicts: module.buffers() walks the module
        # tree and costs several times as much on every call.
        self.buffer_dicts = tuple(module._buffers for module in (model, *self.integer_steps))
        self.buffer_views = tuple(buffers.values() for buffers in self.buffer_dicts)
        self.buffers = list(itertools.chain(*self.buffer_views))
        self.tensors = [buffer for buffer in self.buffers if buffer is not None]
        # An inference tensor (made under torch.inference_mode()) has no version to watch:
        # with one among the buffers, the fast path folds again on every call.
        self.watchable = not any(tensor.is_inference() for tensor in self.tensors)
        self.versions = list(map(VERSION, self.tensors)) if self.watchable else []
        self.model = model
        self.flags = (model.requantization, *map(STEP_FLAGS, self.integer_steps))
        self.steps = {id(step): fold(step, use_int8_gemm) for step in self.integer_steps}
        self.plan = plan_layers(self.layers, self.steps)
        self.last = self.steps[id(self.integer_steps[-1])]
        qparams = model.input_qparams
        self.pixels = model.takes_pixels
        self.divide = model.requantization == Requantization.FLOAT32
        # The teaching path's own numbers: S in float32 for the division (ORT's arithmetic),
        # and 1 / S computed in S's own dtype, as ``quantize`` does (float32, unless the
        # model was converted with .double() or .half()).
        self.input_scale = qparams.scale.to(torch.float32).clone()
        self.inverse_input_scale = 1.0 / qparams.scale
        # Folding the carrier offset into Z is exact while Z and Z' = Z - offset are exact
        # float32 numbers; and a scale whose 1 / S overflows (S = EPS after .half()) makes
        # 0 * inf = NaN, which only the teaching path's own conversion turns into its
        # integers. Outside those bounds the fast path runs the teaching path's quantization.
        zero_point = int(qparams.zero_point)
        zero_carrier = carrier_of(zero_point, qparams.dtype)
        exact_zero = float(qparams.zero_point) == zero_point and (
            max(abs(zero_point), abs(zero_carrier)) <= FLOAT32_EXACT_INTEGERS
        )
        finite_inverse = bool(torch.isfinite(self.inverse_input_scale).all())
        self.teaching_input = not (exact_zero and finite_inverse)
        # Z' as a 0-d tensor: with a Python int, add_ makes a tensor of it and converts that
        # on every call (2 of its 3 us in the profiler on an Intel Xeon, torch 2.14.1).
        self.input_zero_carrier = zero_operand(zero_carrier, qparams.zero_point.device)
        self.input_lowest = carrier_of(qparams.quant_min, qparams.dtype)
        self.input_highest = carrier_of(qparams.quant_max, qparams.dtype)

    # Dict views cannot be pickled (copy.deepcopy, torch.save): made again from the dicts.
    def __getstate__(self) -> dict:
        return {name: value for name, value in vars(self).items() if name != "buffer_views"}

    def __setstate__(self, state: dict) -> None:
        vars(self).update(state)
        self.buffer_views = tuple(buffers.values() for buffers in self.buffer_dicts)

    def is_current(self, model: Int8Model) -> bool:
        """Whether ``model`` is the model these constants were folded from, with the same
        layers, buffer objects, versions and flags. Runs on every call: C-level loops
        (``map``) only."""
        if (
            not self.watchable
            or model is not self.model
            or model._modules.get("layers") is not self.layer_list
        ):
            return False
        layers = self.layer_list._modules.values()
        if len(layers) != len(self.layers) or not all(map(operator.is_, layers, self.layers)):
            return False
        # The same layers: their buffers now against the ones folded from, and if they are
        # the same objects, the versions of those.
        buffers = list(itertools.chain(*self.buffer_views))
        return (
            len(buffers) == len(self.buffers)
            and all(map(operator.is_, buffers, self.buffers))
            and list(map(VERSION, self.tensors)) == self.versions
            and (model.requantization, *map(STEP_FLAGS, self.integer_steps)) == self.flags
        )


def finite_test_sum(x: torch.Tensor) -> float:
    """The sum of ``x`` as a number, without recording it for autograd (images that
    require grad would warn when turned into a number)."""
    return float((x.detach() if x.requires_grad else x).sum())


def nchw_shape(x: torch.Tensor, channels_last: bool) -> tuple[int, ...]:
    """The shape of activations as the teaching path has them, ``[N, C, H, W]``, from the
    fast path's ``[N, H, W, C]`` (``channels_last``) or ``[N, C, H, W]``."""
    if channels_last:
        return (x.shape[0], x.shape[3], x.shape[1], x.shape[2])
    return tuple(x.shape)


class FastInt8Model(nn.Module):
    """An :class:`~ptqlib.int8_model.Int8Model` (MLP or CNN), folded for speed: same input,
    same integers, same float logits (module docstring). ``use_int8_gemm`` picks the GEMM:
    ``torch._int_mm`` or the exact float GEMM (default: whichever is fast on this CPU)."""

    def __init__(self, model: Int8Model, use_int8_gemm: bool | None = None) -> None:
        super().__init__()
        if not isinstance(model, Int8Model):
            raise TypeError(f"model: expected an Int8Model (from convert), got {type(model)}")
        self.model = model
        self.use_int8_gemm = default_uses_int8_gemm() if use_int8_gemm is None else use_int8_gemm
        self._folded = self._fold()  # refuses an unsupported layer now, not at the first call

    def _fold(self) -> FoldedModel:
        for layer in self.model.layers:
            if not isinstance(layer, FAST_LAYERS):
                raise InputError(f"model: the fast path cannot run a {type(layer).__name__}")
        # Normal tensors even when folded under torch.inference_mode(): the constants are
        # kept, and a later call with images that require grad must be able to use them.
        with torch.inference_mode(False):
            return FoldedModel(self.model, self.use_int8_gemm)

    def current(self) -> FoldedModel:
        """The folded constants of the model's state now, folded again if it changed."""
        # (self._modules["model"]: nn.Module's lookup of self.model costs ~0.9 us a call.)
        if not self._folded.is_current(self._modules["model"]):
            self._folded = self._fold()
        return self._folded

    def folded(self, step: Int8Step) -> FoldedStep:
        """``step``'s folded constants, from the model's state now."""
        return self.current().steps[id(step)]

    @property
    def accumulator(self) -> str:
        """Which GEMM sums the int8 products: for reports and the benchmark table."""
        if self.use_int8_gemm:
            return "int8 GEMM (_int_mm)"
        dtypes = {folded.weight_t.dtype for folded in self.current().steps.values()}
        return "float64 GEMM (exact)" if torch.float64 in dtypes else "float32 GEMM (exact)"

    @property
    def input_qparams(self):
        return self.model.input_qparams

    @property
    def output_qparams(self):
        return self.model.output_qparams

    @property
    def takes_pixels(self) -> bool:
        return self.model.takes_pixels

    def _input_carriers(self, images: torch.Tensor, folded: FoldedModel) -> torch.Tensor:
        """The teaching path's input carriers (module docstring), as floats for the float
        GEMM and int8 for ``_int_mm``; uint8 pixels by flipping their top bit."""
        check_batch(images, folded.pixels)
        if images.dtype == torch.uint8 and folded.pixels:
            carriers = torch.bitwise_xor(images, SIGN_BIT).view(torch.int8)
            return carriers if self.use_int8_gemm else carriers.float()
        if folded.teaching_input:
            carriers = self.model.quantize_input(images)
            return carriers if self.use_int8_gemm else carriers.float()
        x = images.float()
        # The errors of the teaching path's quantize, on the same input. A finite sum means
        # finite values (a NaN or Inf makes the sum NaN or Inf): one reduction, and the full
        # check when it cannot tell (empty, a sum of huge values overflowed, or not a plain
        # dense tensor: a sparse or masked one sums only some values).
        plain = type(x) is torch.Tensor and x.layout == torch.strided
        if not plain or x.numel() == 0 or not math.isfinite(finite_test_sum(x)):
            check_finite(x, "x")
        # One new tensor, then in place: a batch of images is megabytes, and every fresh
        # allocation of that size costs page faults.
        if folded.divide:
            carriers = torch.div(x, folded.input_scale)
        else:
            carriers = torch.mul(x, folded.inverse_input_scale)
        carriers.round_().add_(folded.input_zero_carrier)
        carriers.clamp_(folded.input_lowest, folded.input_highest)
        return carriers.char() if self.use_int8_gemm else carriers

    def quantize_input(self, images: torch.Tensor) -> torch.Tensor:
        """Images to int8 carriers, as ``Int8Model.quantize_input`` gives them."""
        return self._input_carriers(images, self.current()).char()

    def _carriers(self, images: torch.Tensor) -> tuple[torch.Tensor, FoldedModel]:
        """The logits' carriers (in float64, int64 or int8: exact integers) and the folded
        state they were computed with."""
        folded = self.current()
        x = self._input_carriers(images, folded)
        for planned in folded.plan:
            layer, step = planned.layer, planned.folded
            if isinstance(layer, Int8Linear):
                layer.check_input_shape(x.shape)  # the teaching path's error
                # .char(): 1.3 us a call at batch 1, .to(torch.int8) 2.3 us (Intel Xeon,
                # torch 2.14.1). The float GEMM converts the carriers itself.
                x = x.char() if self.use_int8_gemm else x
                x = requantize_folded(gemm_product(x, step.weight_t), layer, step)
            elif isinstance(layer, Int8Conv2d):
                out_size = layer.check_input_shape(nchw_shape(x, planned.channels_last))
                if planned.pool is not None:
                    planned.pool.check_input_shape((len(x), layer.out_channels, *out_size))
                if not planned.channels_last:
                    x = x.permute(0, 2, 3, 1)
                product = conv_products(x, layer, step)
                if planned.pool is not None:  # pool first: requantize is non-decreasing
                    pool = planned.pool
                    product = max_pool_channels_last(product, pool.kernel_size, pool.stride)
                x = requantize_folded(product, layer, step)
            elif isinstance(layer, Int8MaxPool2d):
                layer.check_input_shape(nchw_shape(x, planned.channels_last))
                if planned.channels_last:
                    x = max_pool_channels_last(x, layer.kernel_size, layer.stride)
                else:
                    x = max_of_windows(x, layer.kernel_size, layer.stride)
            elif isinstance(layer, Int8GlobalAvgPool2d):
                x = rounded_mean(x, (1, 2) if planned.channels_last else (2, 3))
            else:  # Flatten, in the teaching path's C, H, W order
                if planned.channels_last:
                    x = x.permute(0, 3, 1, 2)
                # The tensor method: calling a module costs microseconds of hook checks.
                x = x.flatten(layer.start_dim, layer.end_dim)
        return x, folded

    def integer_forward(self, images: torch.Tensor) -> torch.Tensor:
        """The logits as int8 carriers, equal to ``Int8Model.integer_forward``."""
        return self._carriers(images)[0].char()

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The predicted class, straight from the integers: argmax needs no dequantization
        (dequantizing is increasing, so it keeps the order of the logits)."""
        return self._carriers(images)[0].argmax(dim=1)

    def quantized_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The logits' integers in their own dtype, as ``Int8Model.quantized_logits``."""
        return self.model.logits_from_carriers(self.integer_forward(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Float logits ``S_y (q - Z_y)``, computed as ``Int8Model.dequantize_output`` does
        them, so ``ptqlib.evaluation`` works unchanged."""
        carriers, folded = self._carriers(images)
        last = folded.last
        return (carriers.float() - last.output_zero_carrier) * last.output_scale
