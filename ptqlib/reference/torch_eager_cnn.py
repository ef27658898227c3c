"""PyTorch's quantized convolution, the reference the INT8 CNN is checked against.

Like ``ptqlib.reference.torch_eager`` (whose rule this module follows), this is the only other place
that touches ``torch.ao.quantization`` and the quantized dtypes; both are deprecated and
their warnings are silenced with ``reference.deprecated_api``, around the calls that raise
them.

Two references:

- :func:`torch_cnn_from_int8` builds torch.ao's quantized modules (``Conv2d``/``ConvReLU2d``
  with their ``groups``, depthwise included; ``Linear``; the pools) holding **ptqlib's own**
  int8 weights, scales and zero-points. Only the kernels differ, so the integers can be
  compared one by one (parity within 1 LSB).
- ``ptqlib.reference.torch_eager.torch_eager_ptq`` is torch.ao's whole eager PTQ of the float
  CNN too:
  it fuses conv+BN+ReLU (torch folds the BatchNorm itself), prepares, calibrates, converts.

On the x86 engine use 7-bit activations (``reduce_range``) for parity: without AVX-512 VNNI,
FBGEMM adds pairs of uint8 x int8 products in int16 with saturation (see
``tests/test_reference.py``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ptqlib.int8_layers import Int8Conv2d, Int8GlobalAvgPool2d, Int8Linear, Int8MaxPool2d
from ptqlib.int8_model import Int8Model
from ptqlib.reference.torch_eager import (
    default_quantized_engine,
    deprecated_api,
    quantized_engine,
    torch_dtype,
)


def _quantized_weight(layer: Int8Conv2d | Int8Linear) -> torch.Tensor:
    """ptqlib's int8 weight as a torch quantized tensor (same integers, same scales)."""
    if layer.weight_scale.dim() == 1:
        zero_points = torch.zeros(layer.weight_scale.shape, dtype=torch.int64)
        return torch._make_per_channel_quantized_tensor(
            layer.weight, layer.weight_scale.double(), zero_points, 0
        )
    return torch._make_per_tensor_quantized_tensor(layer.weight, float(layer.weight_scale), 0)


def _torch_layer(layer: nn.Module, float_layer: nn.Module | None) -> nn.Module:
    """The torch.ao module for one ptqlib INT8 layer; ``float_layer`` gives the float bias."""
    from torch.ao.nn import intrinsic, quantized

    if isinstance(layer, Int8MaxPool2d):
        return nn.MaxPool2d(layer.kernel_size, layer.stride)
    if isinstance(layer, Int8GlobalAvgPool2d):
        return nn.AdaptiveAvgPool2d(1)  # works on quantized tensors, keeps their qparams
    if not isinstance(layer, (Int8Conv2d, Int8Linear)):
        return layer  # Flatten works on quantized tensors as it is
    if isinstance(layer, Int8Conv2d):
        kind = intrinsic.quantized.ConvReLU2d if layer.relu else quantized.Conv2d
        arguments = (layer.in_channels, layer.out_channels, layer.kernel_size)
        module = kind(
            *arguments, stride=layer.stride, padding=layer.padding, groups=layer.groups
        )
    else:
        kind = intrinsic.quantized.LinearReLU if layer.relu else quantized.Linear
        module = kind(layer.in_features, layer.out_features)
    bias = None if float_layer is None or float_layer.bias is None else float_layer.bias.detach()
    module.set_weight_bias(_quantized_weight(layer), bias)
    module.scale = float(layer.output_scale)
    module.zero_point = int(layer.output_zero_point)
    return module


class TorchQuantizedCNN(nn.Module):
    """torch.ao's quantized modules in the places of ptqlib's INT8 layers: ``quant``
    (float -> quantized input), ``body`` (the layers, same names) and ``dequant``."""

    def __init__(
        self, quant: nn.Module, body: nn.Sequential, dequant: nn.Module, engine: str
    ) -> None:
        super().__init__()
        self.quant, self.body, self.dequant = quant, body, dequant
        self.engine = engine  # selected for each call only (reference.quantized_engine)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with quantized_engine(self.engine), deprecated_api():
            return self.dequant(self.body(self.quant(images)))


@torch.no_grad()
def torch_cnn_from_int8(
    int8_model: Int8Model, float_model: nn.Sequential, engine: str | None = None
) -> TorchQuantizedCNN:
    """torch.ao's quantized CNN with exactly ptqlib's int8 weights and qparams.

    ``float_model`` is the folded float CNN ``int8_model`` was converted from: torch's
    quantized layers take a float bias and quantize it themselves (scale S_x S_w).
    """
    if not isinstance(int8_model, Int8Model):
        raise TypeError(f"int8_model: expected an Int8Model, got {type(int8_model).__name__}")
    engine = engine or default_quantized_engine()
    float_layers = dict(float_model.named_children())
    with quantized_engine(engine), deprecated_api():
        from torch.ao.nn import quantized

        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for index, layer in enumerate(int8_model.layers):
            name = getattr(layer, "name", f"layer{index}")
            layers[name] = _torch_layer(layer, float_layers.get(name))
        input_qparams = int8_model.input_qparams
        quant = quantized.Quantize(
            float(input_qparams.scale),
            int(input_qparams.zero_point),
            torch_dtype(input_qparams.dtype),
        )
        body = nn.Sequential(layers)
        return TorchQuantizedCNN(quant, body, quantized.DeQuantize(), engine).eval()
