"""The conversion plan: which float modules become one integer step, with which qparams.

The INT8 model fuses every Linear or Conv2d with the ReLU right after it into one step (the
ReLU becomes the lower clamp of the step's integer output, see ``ptqlib.calibration``).
:func:`plan_conversion` walks a Sequential of Linear / Conv2d / ReLU / MaxPool2d /
AdaptiveAvgPool2d(1) / Flatten (the MLP of notebook 04 and the folded CNN of notebook 07
alike), makes that pairing and looks up, for every step, the qparams of its input, its weight
and its output. Pools and Flatten pass through: their output keeps their input's qparams.
Both the INT8 model (``ptqlib.int8_model``) and its float simulation (``ptqlib.fake_quant``)
are built from the same plan, so they cannot disagree about what is quantized where.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
from torch import nn

from ptqlib.errors import InputError
from ptqlib.quantization import QParams, check_finite, min_max, qparams_from_range

SUPPORTED_LAYERS = (
    nn.Linear,
    nn.Conv2d,
    nn.ReLU,
    nn.MaxPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
)
SUPPORTED_NAMES = (
    "Linear, Conv2d (plain or depthwise), ReLU (after either), MaxPool2d, "
    "AdaptiveAvgPool2d(1) (global average pool), Flatten"
)


@dataclass(frozen=True)
class WeightedStep:
    """One Linear or Conv2d of the float model with everything its integer version needs.

    ``relu_name`` names the ReLU fused into it (None if there is none); the output
    qparams are then those of the ReLU's output, as in PyTorch's fused LinearReLU/ConvReLU2d.
    """

    name: str
    layer: nn.Linear | nn.Conv2d
    relu_name: str | None
    input_qparams: QParams
    weight_qparams: QParams
    output_qparams: QParams

    @property
    def is_conv(self) -> bool:
        return isinstance(self.layer, nn.Conv2d)


Step = WeightedStep | nn.MaxPool2d | nn.AdaptiveAvgPool2d | nn.Flatten


def is_depthwise(conv: nn.Conv2d) -> bool:
    """A depthwise convolution: every output channel filters its own input channel
    (``groups == in_channels == out_channels``, weight ``[C, 1, kh, kw]``)."""
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def is_global_average_pool(pool: nn.AdaptiveAvgPool2d) -> bool:
    return pool.output_size in (1, (1, 1))


def _check_supported(name: str, module: nn.Module) -> None:
    """Raise a clear InputError for a layer the integer engine cannot run."""
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        raise InputError(
            f"layer {name!r} is a BatchNorm: fold it first (ptqlib.batchnorm.fold_model, or "
            "quantize with ptqlib.ptq.post_training_quantize, which folds)"
        )
    if not isinstance(module, SUPPORTED_LAYERS):
        raise InputError(
            f"layer {name!r} is a {type(module).__name__}, which the INT8 conversion does "
            f"not support; supported layers: {SUPPORTED_NAMES}"
        )
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 and not is_depthwise(module):
            raise InputError(
                f"layer {name!r}: groups={module.groups} with {module.in_channels} -> "
                f"{module.out_channels} channels; the integer engine runs plain convolutions "
                "(groups=1) and depthwise ones (groups == in_channels == out_channels)"
            )
        if (
            module.dilation != (1, 1)
            or module.padding_mode != "zeros"
            or isinstance(module.padding, str)
        ):
            raise InputError(
                f"layer {name!r}: dilation {module.dilation}, padding {module.padding!r} "
                f"({module.padding_mode}); only dilation 1 and integer zero padding convert"
            )
    if isinstance(module, nn.MaxPool2d) and (
        module.padding not in (0, (0, 0)) or module.dilation not in (1, (1, 1)) or module.ceil_mode
    ):
        raise InputError(
            f"layer {name!r}: only max-pools without padding/dilation/ceil_mode convert"
        )
    if isinstance(module, nn.AdaptiveAvgPool2d) and not is_global_average_pool(module):
        raise InputError(
            f"layer {name!r}: AdaptiveAvgPool2d({module.output_size}); only the global "
            "average pool, output size 1, converts"
        )


def bias_of(layer: nn.Conv2d | nn.Linear) -> torch.Tensor:
    """The layer's float bias, or zeros where it has none."""
    bias = layer.bias
    return bias.detach() if bias is not None else torch.zeros(layer.weight.shape[0])


def _stored_activation_qparams(qparams: Mapping[str, QParams], key: str, role: str) -> QParams:
    """The per-tensor qparams of one activation, looked up in calibration's ``qparams``."""
    if key not in qparams:
        raise InputError(
            f"qparams: no entry for {key!r} ({role}); the model is uncalibrated or was "
            "calibrated differently. Run ptqlib.calibration.calibrate(model, images) first "
            f"(qparams has {sorted(qparams) or 'no entries'})"
        )
    found = qparams[key]
    if not isinstance(found, QParams):
        raise TypeError(f"qparams[{key!r}]: expected a QParams, got {type(found).__name__}")
    if found.axis is not None or found.scale.dim() != 0:
        raise InputError(f"qparams[{key!r}]: activations need per-tensor qparams, got {found}")
    return found


def weight_qparams_for(
    name: str,
    weight: torch.Tensor,
    qparams: Mapping[str, QParams],
    per_channel: bool,
    weight_range: tuple[int, int] | None = None,
) -> QParams:
    """The int8 symmetric qparams of a Linear's or Conv2d's weight.

    The calibration's ``"<name>.weight"`` entry is used when it has the requested
    granularity (per output channel, axis 0, a depthwise conv's too; or per tensor).
    Otherwise (missing, or of the other granularity) they are computed here from the
    weight's own min/max: a weight is fixed, so its min/max observer sees all of it at
    once. The integer engine needs symmetric int8 weights (zero-point 0), so an entry that
    is not is an error.
    ``weight_range`` (e.g. ``RESTRICTED_WEIGHT_RANGE``), if given, is required as well. A
    channel whose weights are all 0 gets a usable scale (:func:`_zero_channels_on_a_usable_scale`).
    """
    found = _weight_qparams(name, weight, qparams, per_channel, weight_range)
    return _zero_channels_on_a_usable_scale(found, weight)


def _weight_qparams(
    name: str,
    weight: torch.Tensor,
    qparams: Mapping[str, QParams],
    per_channel: bool,
    weight_range: tuple[int, int] | None,
) -> QParams:
    found = qparams.get(f"{name}.weight")
    wanted_axis = 0 if per_channel else None
    other_range = weight_range is not None and (
        found is None or (found.quant_min, found.quant_max) != tuple(weight_range)
    )
    if found is None or found.axis != wanted_axis or other_range:
        low, high = min_max(weight, axis=wanted_axis)
        quant_min, quant_max = weight_range or (None, None)
        return qparams_from_range(
            low, high, torch.int8, True, quant_min=quant_min, quant_max=quant_max, axis=wanted_axis
        )
    if found.dtype != torch.int8 or bool((found.zero_point != 0).any()):
        raise InputError(
            f"qparams[{name + '.weight'!r}]: the integer engine needs int8 symmetric weights "
            f"(zero-point 0), got {found}; use a symmetric int8 weight observer"
        )
    return found


def _zero_channels_on_a_usable_scale(qparams: QParams, weight: torch.Tensor) -> QParams:
    """``qparams`` with a usable scale for every output channel whose weights are all 0 (a
    pruned channel, or a BatchNorm with gamma = 0 folded in).

    Such a channel has no range, so an observer gives it the smallest scale (EPS). Its weights
    are exactly 0 at any scale, but the scale also sets its bias's grid ``S_x S_w``, on which
    int32 holds no bias above 2^31 EPS S_x (about 256 S_x: a pruned class keeping a bias of a
    few units does not fit), and its multiplier ``M = S_x S_w / S_y``. It gets the largest
    scale of the layer's other channels instead (1 when every weight is 0): its integers stay
    0 and its bias is quantized on its neighbours' grid."""
    rows = weight.detach().reshape(len(weight), -1)
    if qparams.axis is None:
        if bool((rows != 0).any()):
            return qparams
        return replace(qparams, scale=torch.ones_like(qparams.scale))
    dead = (rows == 0).all(dim=1)
    if not bool(dead.any()):
        return qparams
    live = qparams.scale[~dead]
    usable = live.max() if len(live) else torch.tensor(1.0, dtype=qparams.scale.dtype)
    return replace(qparams, scale=torch.where(dead, usable, qparams.scale))


def plan_conversion(
    model: nn.Module,
    qparams: Mapping[str, QParams],
    per_channel: bool = True,
    weight_range: tuple[int, int] | None = None,
) -> list[Step]:
    """Walk the children of a Sequential (the MLP, or a CNN with its BatchNorm folded) and pair
    each Linear / Conv2d with the ReLU that follows it and with its qparams. Pools and Flatten
    pass through. Raises a clear InputError for anything the integer engine cannot run."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(
            f"model: expected an nn.Sequential of {SUPPORTED_NAMES} (like SimpleNet or a "
            f"folded SmallCNN), got {type(model).__name__}"
        )
    qparams = getattr(qparams, "qparams", qparams)  # a Calibration or its qparams dict
    if not isinstance(qparams, Mapping):
        raise TypeError(f"qparams: expected a dict of QParams, got {type(qparams).__name__}")
    children = list(model.named_children())
    for name, module in children:
        _check_supported(name, module)
    if not any(isinstance(module, nn.Linear) for _, module in children):
        raise InputError("model: has no Linear layer; it must end with one (the logits)")

    steps: list[Step] = []
    current = _stored_activation_qparams(qparams, "input", "the model's input")
    index = 0
    while index < len(children):
        name, module = children[index]
        if isinstance(module, (nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Flatten)):
            steps.append(module)
            index += 1
            continue
        if isinstance(module, nn.ReLU):
            raise InputError(
                f"layer {name!r} (ReLU) does not follow a Linear or Conv2d; the INT8 "
                "conversion fuses each ReLU into the layer before it"
            )
        check_finite(module.weight.detach(), f"{name}.weight")
        if module.bias is not None:
            check_finite(module.bias.detach(), f"{name}.bias")
        following = children[index + 1] if index + 1 < len(children) else None
        relu_name = following[0] if following and isinstance(following[1], nn.ReLU) else None
        output_key = relu_name or name
        output = _stored_activation_qparams(qparams, output_key, f"the output of {output_key}")
        weight = weight_qparams_for(
            name, module.weight.detach(), qparams, per_channel, weight_range
        )
        steps.append(WeightedStep(name, module, relu_name, current, weight, output))
        current = output
        index += 2 if relu_name else 1
    last = steps[-1]
    if not (isinstance(last, WeightedStep) and not last.is_conv):
        raise InputError("model: must end with a Linear (the logits), optionally with its ReLU")
    return steps
