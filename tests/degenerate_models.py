"""The degenerate-model family: INT8 models that real users have and that random, well-behaved
weights never produce.

A pruned output channel (all-zero weights, so S_w = EPS and a shift n of 56-62), a dead ReLU
feeding a BatchNorm (gamma = 0, or a running variance near 0 that folding turns into huge
weights; negative gammas, a large eps), one-wide layers (``in_features == 1`` included),
constant inputs, input scales from 1e-6 to 1e3, zero-points at both ends of their range, odd
kernels, strides and paddings, equal weights, both requantizations. Every member is a model
the teaching path runs; the parity matrix (``test_parity_matrix.py``) checks the teaching
path, the fast path and the int64 reference (``int64_reference.py``) equal on it, bit for
bit, and the C export's tests can take the same members.

``degenerate_family(requantization)`` returns the members as :class:`DegenerateCase`
(name, the teaching-path model, images to run it on). Everything is seeded and small; the
fixed-point family is built once per process and the float32 one derived from it.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from ptqlib.calibration import calibrate
from ptqlib.int8_layers import Int8Linear
from ptqlib.int8_model import Int8Model, convert, with_requantization
from ptqlib.models import DepthwiseCNN, SimpleNet
from ptqlib.ptq import calibrate_fused
from ptqlib.quantization import EPS, QParams

ACTIVATION_RANGES = {torch.uint8: (0, 255), torch.int8: (-128, 127)}


@dataclass(frozen=True)
class DegenerateCase:
    """One member: a teaching-path INT8 model and float images for it."""

    name: str
    model: Int8Model
    images: torch.Tensor


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def activation(scale: float, zero_point: int, dtype: torch.dtype = torch.uint8) -> QParams:
    low, high = ACTIVATION_RANGES[dtype]
    return QParams(torch.tensor(scale), torch.tensor(zero_point), low, high, dtype)


def weight_qparams(scales: list[float] | torch.Tensor) -> QParams:
    scales = torch.as_tensor(scales, dtype=torch.float32)
    zeros = torch.zeros(scales.shape, dtype=torch.int64)
    return QParams(scales, zeros, -128, 127, torch.int8, axis=0 if scales.dim() == 1 else None)


def images_for(qparams: QParams, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Float inputs spread over (and a little beyond) the real range of ``qparams``."""
    scale, zero_point = float(qparams.scale), int(qparams.zero_point)
    low = scale * (qparams.quant_min - zero_point)
    high = scale * (qparams.quant_max - zero_point)
    margin = 0.05 * (high - low)
    return (
        torch.rand(shape, generator=_generator(seed), dtype=torch.float64)
        .mul(high - low + 2 * margin)
        .add(low - margin)
        .float()
    )


# --- hand-built layers: exact scales and zero-points --------------------------------------------


def issue_zero_row_linear(output_zero_point: int) -> Int8Model:
    """The 16 -> 2 Int8Linear whose row 0 is all zero (S_w = EPS, n = 58): S_x = 0.0233,
    Z_x = 77, S_y = 0.7147, bias [0, -677]."""
    weight = torch.randint(-127, 128, (2, 16), generator=_generator(0), dtype=torch.int8)
    weight[0] = 0
    input_qparams = activation(0.0233, 77)
    layer = Int8Linear(
        weight=weight,
        bias=torch.tensor([0, -677], dtype=torch.int32),
        weight_qparams=weight_qparams([EPS, 0.0015]),
        input_qparams=input_qparams,
        output_qparams=activation(0.7147, output_zero_point),
        relu=False,
        name="fc",
    )
    return Int8Model(input_qparams, [layer]).eval()


def scaled_linear(
    input_scale: float,
    input_zero_point: int,
    output_zero_point: int,
    dtype: torch.dtype,
    multiplier_range: tuple[float, float],
    relu: bool,
    seed: int,
) -> Int8Model:
    """A 9 -> 7 -> 5 MLP of random int8 weights (row 3 of each layer zero, with S_w = EPS)
    whose input scale and zero-points are set by hand, and whose multipliers
    M = S_x S_w / S_y are spread log-uniformly over ``multiplier_range``, one per channel
    (S_y = 30 S_x, so the zero row's M is EPS / 30 and its shift n is 58)."""
    generator = _generator(seed)
    widths = (9, 7, 5)
    current = activation(input_scale, input_zero_point, dtype)
    first_input = current
    layers = []
    low, high = (float(torch.log10(torch.tensor(bound))) for bound in multiplier_range)
    for index, (inputs, outputs) in enumerate(zip(widths, widths[1:], strict=False)):
        weight = torch.randint(-128, 128, (outputs, inputs), generator=generator, dtype=torch.int8)
        weight[3] = 0
        output_scale = 30 * float(current.scale)
        multiplier = 10 ** (low + (high - low) * torch.rand(outputs, generator=generator))
        weight_scale = multiplier.double() * output_scale / float(current.scale)
        weight_scale[3] = EPS
        bias = torch.randint(-5000, 5000, (outputs,), generator=generator, dtype=torch.int32)
        output = activation(output_scale, output_zero_point, dtype)
        layers.append(
            Int8Linear(
                weight=weight,
                bias=bias,
                weight_qparams=weight_qparams(weight_scale),
                input_qparams=current,
                output_qparams=output,
                relu=relu and index == 0,
                name=f"fc{index + 1}",
            )
        )
        current = output
    return Int8Model(first_input, layers).eval()


# --- calibrated models: the path a user's model takes -------------------------------------------


def _converted(
    model: nn.Sequential,
    images: torch.Tensor,
    dtype: torch.dtype = torch.uint8,
    per_channel: bool = True,
) -> Int8Model:
    qparams = calibrate(
        model, images, "minmax", activation_kwargs={"dtype": dtype}, progress=False
    ).qparams
    return convert(model, qparams, per_channel)


def pruned_simplenet(rows: dict[str, list[int]], seed: int) -> nn.Sequential:
    """SimpleNet with the listed output rows of its layers set to 0 (a pruned class, a
    pruned hidden unit)."""
    torch.manual_seed(seed)
    model = SimpleNet().eval()
    with torch.no_grad():
        for name, zeroed in rows.items():
            getattr(model, name).weight[zeroed] = 0
            getattr(model, name).bias[zeroed] = 0
    return model


def zero_channel_cnn(seed: int) -> nn.Sequential:
    """Conv (channel 2 zero), depthwise conv (channel 1 zero), pointwise conv (channel 0
    zero), max-pool, global average pool, Linear (row 4 zero), on 10 x 10 images. A zero
    channel's bias is 0 or +-1e-4 (a larger one does not fit in int32 at S_x EPS, and
    convert refuses it)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(1, 4, 3, padding=1),
            relu1=nn.ReLU(),
            pool=nn.MaxPool2d(2),
            dw=nn.Conv2d(4, 4, 3, padding=1, groups=4),
            relu2=nn.ReLU(),
            pw=nn.Conv2d(4, 6, 1),
            relu3=nn.ReLU(),
            gap=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(6, 5),
        )
    ).eval()
    with torch.no_grad():
        for layer, channel, bias in (
            (model.conv, 2, 0.0),
            (model.dw, 1, 1e-4),
            (model.pw, 0, -1e-4),
            (model.fc, 4, 0.0),
        ):
            layer.weight[channel] = 0
            layer.bias[channel] = bias
    return model


def batchnorm_cnn(gamma_zero: bool, tiny_variance: bool, seed: int) -> nn.Sequential:
    """Conv -> BN -> ReLU -> depthwise -> BN -> ReLU -> pointwise -> BN -> ReLU -> pool ->
    Linear, with BatchNorm channel 1 of every BN at gamma = 0 and/or channel 2 at running
    variance 1e-20 (folding multiplies that channel's filter by about 1 / sqrt(eps))."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(1, 4, 3, padding=1, bias=False),
            bn1=nn.BatchNorm2d(4),
            relu1=nn.ReLU(),
            dw=nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4, bias=False),
            bn2=nn.BatchNorm2d(4),
            relu2=nn.ReLU(),
            pw=nn.Conv2d(4, 6, 1, bias=False),
            bn3=nn.BatchNorm2d(6),
            relu3=nn.ReLU(),
            gap=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(6, 3),
        )
    ).eval()
    with torch.no_grad():
        for batchnorm in (model.bn1, model.bn2, model.bn3):
            batchnorm.running_mean.uniform_(-0.2, 0.2)
            batchnorm.running_var.uniform_(0.5, 2.0)
            batchnorm.bias.uniform_(-0.3, 0.3)
            if gamma_zero:
                batchnorm.weight[1] = 0
            if tiny_variance:
                batchnorm.running_var[2] = 1e-20
    return model


def one_wide_mlp(seed: int) -> nn.Sequential:
    """Linear(1, 5) (``in_features == 1``: ``weight.t()`` is [1, 5] with stride (1, 1)),
    ReLU, Linear(5, 1), Linear(1, 3)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, 5), nn.ReLU(), nn.Linear(5, 1), nn.Linear(1, 3)).eval()


def one_channel_cnn(seed: int) -> nn.Sequential:
    """A one-channel conv, a 1 x 1 conv to one channel, and a Linear(1, 2)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 1, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(1, 1, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(1, 2),
    ).eval()


def odd_geometry_cnn(seed: int) -> nn.Sequential:
    """Non-square kernels, strides and paddings that do not divide the image: a (1, 3)
    kernel with stride (3, 1) and padding (2, 0), a depthwise 3 x 3 with stride 5 and
    padding 2, a (2, 3) kernel with stride (2, 3), on 9 x 7 images of two channels."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, (1, 3), stride=(3, 1), padding=(2, 0)),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=5, padding=2, groups=4),
        nn.Conv2d(4, 3, (2, 3), stride=(2, 3), padding=(1, 2)),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(3, 2),
    ).eval()


def signed_batchnorm_cnn(seed: int) -> nn.Sequential:
    """Conv -> BN with negative gammas (folding flips those filters' signs) -> ReLU ->
    depthwise -> BN with eps = 10 (it dominates the variance) -> pool -> Linear whose
    weights are all equal (one value: every channel's scale is its own max)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(1, 3, 3, padding=1),
            bn1=nn.BatchNorm2d(3),
            relu1=nn.ReLU(),
            dw=nn.Conv2d(3, 3, 3, groups=3),
            bn2=nn.BatchNorm2d(3, eps=10.0),
            gap=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(3, 4),
        )
    ).eval()
    with torch.no_grad():
        model.bn1.weight.copy_(torch.tensor([-1.5, 0.5, -0.1]))
        model.bn2.bias.uniform_(-0.3, 0.3)
        model.fc.weight.fill_(-0.25)
    return model


def depthwise_cnn_with_dead_channel(seed: int) -> nn.Sequential:
    """Notebook 09's DepthwiseCNN with gamma = 0 in channel 3 of ``dw2_bn`` (a pruned
    channel), BatchNorm folded."""
    torch.manual_seed(seed)
    model = DepthwiseCNN().eval()
    with torch.no_grad():
        model.dw2_bn.weight[3] = 0
    return model


@functools.cache
def fixed_point_family() -> tuple[DegenerateCase, ...]:
    """Every member, with ptqlib's fixed-point requantization (built once per process)."""
    cases = []

    def add(name: str, model: Int8Model, images: torch.Tensor) -> None:
        cases.append(DegenerateCase(name, model, images))

    for output_zero_point in (170, 20):
        model = issue_zero_row_linear(output_zero_point)
        images = images_for(model.input_qparams, (9, 16), 1)
        add(f"zero-row-linear-Zy{output_zero_point}", model, images)

    for input_scale in (1e-6, 1e-3, 1.0, 1e3):
        for dtype, zero_points in ((torch.uint8, (0, 255)), (torch.int8, (-128, 127))):
            for input_zero_point, output_zero_point in (zero_points, zero_points[::-1]):
                for multipliers in ((2**-30, 2**-24), (1e-4, 1e-1), (0.5, 200.0)):
                    seed = len(cases)
                    model = scaled_linear(
                        input_scale,
                        input_zero_point,
                        output_zero_point,
                        dtype,
                        multipliers,
                        relu=seed % 2 == 0,
                        seed=seed,
                    )
                    name = (
                        f"Sx{input_scale:g}-{dtype}-Zx{input_zero_point}-Zy{output_zero_point}"
                        f"-M{multipliers[0]:.0e}"
                    )
                    add(name, model, images_for(model.input_qparams, (7, 9), seed))

    digits = torch.rand(24, 1, 28, 28, generator=_generator(2)) * 3.2 - 0.42
    for name, rows in (("fc3-class-9", {"fc3": [9]}), ("fc1-unit-5", {"fc1": [5]})):
        float_model = pruned_simplenet(rows, seed=0)
        for per_channel in (True, False):
            model = _converted(float_model, digits, per_channel=per_channel)
            granularity = "per-channel" if per_channel else "per-tensor"
            add(f"simplenet-{name}-{granularity}", model, digits[:5])

    small = torch.rand(16, 1, 10, 10, generator=_generator(3)) * 2 - 0.5
    for dtype in (torch.uint8, torch.int8):
        add(
            f"zero-channel-cnn-{dtype}",
            _converted(zero_channel_cnn(seed=0), small, dtype),
            small[:5],
        )

    for gamma_zero, tiny_variance in ((True, False), (False, True), (True, True)):
        folded, calibration = calibrate_fused(
            batchnorm_cnn(gamma_zero, tiny_variance, seed=0), small, "minmax", progress=False
        )
        for per_channel in (True, False):
            model = convert(folded, calibration.qparams, per_channel)
            name = f"batchnorm-gamma0-{gamma_zero}-var0-{tiny_variance}-per-channel-{per_channel}"
            add(name, model, small[:5])

    two_channel = torch.rand(12, 2, 9, 7, generator=_generator(5)) * 2 - 0.5
    for dtype in (torch.uint8, torch.int8):
        model = _converted(odd_geometry_cnn(seed=0), two_channel, dtype)
        add(f"odd-geometry-cnn-{dtype}", model, two_channel[:4])
    folded, calibration = calibrate_fused(
        signed_batchnorm_cnn(seed=0), small, "minmax", progress=False
    )
    for per_channel in (True, False):
        model = convert(folded, calibration.qparams, per_channel)
        add(f"batchnorm-negative-gamma-eps10-per-channel-{per_channel}", model, small[:5])

    # The DepthwiseCNN ends with a global average pool: 12 x 12 images keep it small.
    patches = torch.rand(8, 1, 12, 12, generator=_generator(4)) * 3.2 - 0.42
    folded, calibration = calibrate_fused(
        depthwise_cnn_with_dead_channel(seed=0), patches, "minmax", progress=False
    )
    add("depthwise-cnn-gamma0", convert(folded, calibration.qparams), patches[:3])

    scalars = torch.linspace(-3, 3, 20).reshape(20, 1)
    add("one-wide-mlp", _converted(one_wide_mlp(seed=0), scalars), scalars[::3])
    add("one-channel-cnn", _converted(one_channel_cnn(seed=0), small, torch.int8), small[:4])

    # Constant inputs: the input range is one point (S_x from 0 alone is EPS).
    for value in (0.0, 0.7):
        constant = torch.full((6, 1, 28, 28), value)
        model = _converted(pruned_simplenet({"fc2": [0]}, seed=1), constant)
        add(f"constant-input-{value:g}", model, constant[:2])
    return tuple(cases)


def degenerate_family(requantization: str) -> list[DegenerateCase]:
    """Every member, computing with ``requantization`` ("fixed_point" or "float32"): the
    float32 members are the fixed-point ones with ORT's arithmetic (``with_requantization``)."""
    return [
        DegenerateCase(
            f"{case.name}-{requantization}",
            with_requantization(case.model, requantization),
            case.images,
        )
        for case in fixed_point_family()
    ]
