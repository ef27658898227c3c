"""Tests for ptqlib.quantization: exactness against PyTorch, properties, errors, metrics.

PyTorch is reached only through ptqlib.reference.torch_eager (torch.ao observers and
torch.quantize_per_tensor / quantize_per_channel), which filters their deprecation
warnings in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ptqlib.quantization import (
    EPS,
    QParams,
    bit_range,
    check_finite,
    dequantize,
    fake_quantize,
    min_max,
    mse,
    normalise_axis,
    qparams_from_range,
    quant_range,
    quantize,
    sqnr_db,
)
from ptqlib.reference.torch_eager import deprecated_api, torch_observer, torch_quantize


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run this file's many tiny reductions on one thread.

    With 2 threads every ``torch.aminmax(..., dim=1)`` on a tiny tensor paid a thread
    wake-up of ~8 ms on the shared 2-core machine (0.004 ms on one thread), which made
    this file take ~30 s instead of a few. Minima, maxima and the elementwise math do
    not depend on the thread count, so the results are the same.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------------------------------
# Configurations: every dtype / scheme / reduce_range / bit width combination
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One choice of quantization settings; ``bits=None`` means the dtype's whole range."""

    dtype: torch.dtype
    symmetric: bool
    reduce_range: bool
    bits: int | None

    def kwargs(self) -> dict:
        """The keyword arguments of qparams_from_range (and, renamed, of torch.ao)."""
        arguments = {
            "dtype": self.dtype,
            "symmetric": self.symmetric,
            "reduce_range": self.reduce_range,
        }
        if self.bits is not None:
            arguments["quant_min"], arguments["quant_max"] = bit_range(self.bits, self.dtype)
        return arguments

    def __str__(self) -> str:
        dtype = "uint8" if self.dtype == torch.uint8 else "int8"
        scheme = "sym" if self.symmetric else "affine"
        reduce = "-reduce" if self.reduce_range else ""
        bits = "full" if self.bits is None else f"{self.bits}bit"
        return f"{dtype}-{scheme}{reduce}-{bits}"


# bits=8 is not the same as None: a custom range changes the symmetric uint8 zero-point
# (torch.ao picks (quant_min + quant_max) // 2 = 127 instead of 128).
ALL_CONFIGS = [
    Config(dtype, symmetric, reduce_range, bits)
    for dtype in (torch.uint8, torch.int8)
    for symmetric in (False, True)
    for reduce_range in (False, True)
    for bits in (None, 2, 3, 4, 5, 6, 7, 8)
]
# torch.ao refuses reduce_range with symmetric quint8 (NotImplementedError), so there is
# nothing to compare with; the property tests below still cover ptqlib's choice there.
TORCH_CONFIGS = [
    config
    for config in ALL_CONFIGS
    if not (config.symmetric and config.reduce_range and config.dtype == torch.uint8)
]


def config_params(configs: list[Config]) -> list:
    return [pytest.param(config, id=str(config)) for config in configs]


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def float_bits(x: torch.Tensor) -> torch.Tensor:
    """The raw IEEE-754 bits of a float32 tensor: equal bits means equal bit for bit."""
    return x.to(torch.float32).contiguous().view(torch.int32)


def torch_qparams(
    x: torch.Tensor, config: Config, axis: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scale and zero-point torch.ao's MinMaxObserver (or its per-channel twin) picks."""
    arguments = config.kwargs()
    dtype, symmetric = arguments.pop("dtype"), arguments.pop("symmetric")
    with deprecated_api():
        if axis is None:
            observer = torch_observer("MinMaxObserver", dtype, symmetric, **arguments)
        else:
            observer = torch_observer(
                "PerChannelMinMaxObserver", dtype, symmetric, ch_axis=axis, **arguments
            )
        observer(x)
        return observer.calculate_qparams()


def torch_integers(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qparams: QParams
) -> torch.Tensor:
    """What PyTorch stores for ``x``, clamped to the quantization range.

    torch.quantize_per_tensor / quantize_per_channel clamp to the whole dtype (0..255,
    -128..127); a narrower range (reduce_range, fewer bits) is applied on top by torch.ao
    (FakeQuantize clamps to quant_min..quant_max). Clamping twice equals clamping once to
    the narrower range, so this is the exact reference for ptqlib's quantize.
    """
    axis = None if qparams.axis is None else normalise_axis(qparams.axis, x.dim())
    # (torch.quantize_per_channel rejects a negative axis, hence the normalised one.)
    integers = torch_quantize(x, scale, zero_point, qparams.dtype, axis=axis)
    return integers.to(torch.int64).clamp(qparams.quant_min, qparams.quant_max)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------
# Exactness against torch.ao and torch.quantize_per_*
# ---------------------------------------------------------------------------------------

PER_TENSOR_CASES = {
    "gaussian": torch.randn(1000, generator=generator(1)),
    "relu-like positive": torch.randn(500, generator=generator(2)).abs() * 3,
    "all negative": -torch.rand(500, generator=generator(3)) * 5 - 0.1,
    "3-d mixed": torch.randn(2, 3, 4, generator=generator(4)) * 10,
    "all zeros": torch.zeros(16),
    "constant positive": torch.full((8,), 2.5),
    "constant negative": torch.full((8,), -0.75),
    "min == max": torch.tensor([1e-3, 1e-3]),
    "single element": torch.tensor([0.3]),
    "single negative element": torch.tensor([-7.0]),
    "tiny, scale clamped to eps": torch.randn(100, generator=generator(5)) * 1e-8,
    "tiny, just above eps": torch.linspace(-150 * EPS, 150 * EPS, 33),
    "huge": torch.tensor([-1.5e38, 0.0, 1.7e38, 3e37]),
    "huge and tiny mixed": torch.tensor([1e30, 1e-30, -1e20, -1e-38]),
    # S = 15.9375 / 255 = 1/16 exactly, so x / S hits exact halves: round-half-to-even.
    "exact ties": torch.cat([torch.tensor([0.0, 15.9375]), (torch.arange(255) + 0.5) / 16]),
    # Symmetric 4-bit uint8: S = 0.9375 / 7.5 = 1/8 and Z = 7 is odd, so rounding before
    # or after adding Z gives different integers on these ties.
    "ties with an odd zero-point": torch.cat(
        [torch.tensor([-0.9375, 0.9375]), (torch.arange(-8, 8) + 0.5) / 8]
    ),
}


# One test per configuration, looping over the cases (one test item per pair would be
# ~1,700 items, and pytest's per-item overhead would dominate the run time).
@pytest.mark.parametrize("config", config_params(TORCH_CONFIGS))
def test_per_tensor_matches_torch_bit_for_bit(config: Config) -> None:
    for case, x in PER_TENSOR_CASES.items():
        qparams = qparams_from_range(*min_max(x), **config.kwargs())
        scale, zero_point = torch_qparams(x, config)

        assert qparams.scale.shape == () and qparams.zero_point.shape == (), case
        assert torch.equal(float_bits(qparams.scale), float_bits(scale.reshape(()))), case
        assert int(qparams.zero_point) == int(zero_point), case

        integers = quantize(x, qparams)
        assert integers.dtype == config.dtype, case
        expected = torch_integers(x, scale, zero_point, qparams)
        assert torch.equal(integers.to(torch.int64), expected), case


def per_channel_cases() -> dict[str, torch.Tensor]:
    """Tensors with ordinary and degenerate channels along every axis."""
    weights = torch.randn(4, 5, 6, generator=generator(6))
    weights[1] = 0.0  # an all-zero slice along axis 0
    weights[:, 2] = 3.0  # a constant positive slice along axis 1
    weights[:, :, 3] = -2.0  # a constant negative slice along axis 2
    weights[3] *= 1e-8  # a tiny slice: its scale is clamped to eps
    rows = torch.randn(6, 7, generator=generator(7))
    rows[0] = 0.0
    rows[1] = 1e30  # huge and constant
    rows[2] = torch.linspace(-1e30, 1e30, 7)
    rows[3] = torch.rand(7, generator=generator(8))  # all positive
    rows[4] = -torch.rand(7, generator=generator(9))  # all negative
    column = torch.tensor([[0.5], [-2.0], [0.0]])  # one element per channel along axis 0
    return {"3-d with degenerate slices": weights, "rows of every kind": rows, "column": column}


PER_CHANNEL_CASES = per_channel_cases()


@pytest.mark.parametrize("config", config_params(TORCH_CONFIGS))
def test_per_channel_matches_torch_bit_for_bit(config: Config) -> None:
    for case, x in PER_CHANNEL_CASES.items():
        for axis in range(-x.dim(), x.dim()):  # every axis, negative ones included
            where = f"{case}, axis {axis}"
            qparams = qparams_from_range(*min_max(x, axis=axis), axis=axis, **config.kwargs())
            scale, zero_point = torch_qparams(x, config, axis=axis)

            assert qparams.scale.shape == (x.shape[axis],), where
            assert torch.equal(float_bits(qparams.scale), float_bits(scale)), where
            assert torch.equal(qparams.zero_point, zero_point.to(torch.int64)), where

            integers = quantize(x, qparams)
            assert integers.dtype == config.dtype, where
            expected = torch_integers(x, scale, zero_point, qparams)
            assert torch.equal(integers.to(torch.int64), expected), where


# torch.quantize_per_tensor / per_channel add Z to round(x / S) in int32 and wrap around
# once that sum leaves the int32 range (measured on torch 2.14.1, x86 AVX2: with S = 1 and
# Z = 128, x = 2^31 - 128 quantizes to 0, not 255). So PyTorch is the reference only for
# |x / S| below 2^30; beyond that the expected integers are simply the range's ends.
TORCH_SAFE_STEPS = 2.0**30


def assert_clipped_like_torch_and_huge_values_at_the_ends(
    x: torch.Tensor, qparams: QParams
) -> None:
    integers = quantize(x, qparams).to(torch.int64)
    expected = torch_integers(x, qparams.scale, qparams.zero_point, qparams)
    steps = x.double() / qparams.scale.double().reshape(
        [-1 if dim == qparams.axis else 1 for dim in range(x.dim())]
        if qparams.axis is not None
        else []
    )
    safe = steps.abs() < TORCH_SAFE_STEPS
    assert torch.equal(integers[safe], expected[safe])
    assert bool((integers[steps >= TORCH_SAFE_STEPS] == qparams.quant_max).all())
    assert bool((integers[steps <= -TORCH_SAFE_STEPS] == qparams.quant_min).all())
    assert bool((~safe).any()), "the test needs values beyond torch's safe range"


@pytest.mark.parametrize("config", config_params(TORCH_CONFIGS))
def test_values_far_outside_the_range_clip_to_the_ends(config: Config) -> None:
    # Regression: converting x / S to an integer before clamping overflowed int64 for
    # |x / S| > 2^63 and sent 1e20 to the *lower* end of the range.
    qparams = qparams_from_range(-1.0, 1.0, **config.kwargs())
    x = torch.tensor([1e20, -1e20, 3e38, -3e38, 1e10, -1e10, 1e6, -1e6, 2.0, -2.0, 0.5])
    assert_clipped_like_torch_and_huge_values_at_the_ends(x, qparams)


@pytest.mark.parametrize("config", config_params(TORCH_CONFIGS))
def test_per_channel_values_outside_the_range_clip_to_the_ends(config: Config) -> None:
    calibration = torch.randn(3, 8, generator=generator(10))
    qparams = qparams_from_range(*min_max(calibration, axis=0), axis=0, **config.kwargs())
    x = torch.randn(3, 8, generator=generator(11)) * 10
    x[:, 0] = torch.tensor([1e25, -1e25, 3e38])
    x[:, 1] = torch.tensor([-1e6, 1e6, -5e3])
    assert_clipped_like_torch_and_huge_values_at_the_ends(x, qparams)


# ---------------------------------------------------------------------------------------
# Known values, worked out by hand from the formulas in the module docstring
# ---------------------------------------------------------------------------------------


def test_integer_ranges() -> None:
    assert quant_range(torch.uint8) == (0, 255)
    assert quant_range(torch.int8) == (-128, 127)
    assert quant_range(torch.uint8, reduce_range=True) == (0, 127)
    assert quant_range(torch.int8, reduce_range=True) == (-64, 63)
    assert quant_range(torch.int8, quant_min=-8, quant_max=7) == (-8, 7)
    assert quant_range(torch.uint8, reduce_range=True, quant_min=0, quant_max=15) == (0, 7)
    assert bit_range(8, torch.uint8) == quant_range(torch.uint8)
    assert bit_range(8, torch.int8) == quant_range(torch.int8)
    assert bit_range(4, torch.uint8) == (0, 15)
    assert bit_range(4, torch.int8) == (-8, 7)
    assert bit_range(2, torch.int8) == (-2, 1)


def test_affine_qparams_by_hand() -> None:
    # [-64, 63.5]: S = 127.5 / 255 = 0.5 exactly; Z = 0 - round(-64 / 0.5) = 128.
    qparams = qparams_from_range(-64.0, 63.5, torch.uint8)
    assert float(qparams.scale) == 0.5
    assert int(qparams.zero_point) == 128
    # The same grid stored signed: Z moves down by 128.
    assert int(qparams_from_range(-64.0, 63.5, torch.int8).zero_point) == 0


def test_float32_rounding_decides_a_halfway_zero_point() -> None:
    # [-1, 1]: in exact arithmetic Z = -round(-1 / (2/255)) = round(127.5) = 128. But
    # float32 rounds 2/255 up (0.0078431377...), so -1 / S = -127.49999... and Z = 127.
    qparams = qparams_from_range(-1.0, 1.0, torch.uint8)
    assert float(qparams.scale) > 2 / 255
    assert int(qparams.zero_point) == 127


def test_range_is_widened_to_include_zero() -> None:
    # [2, 5] becomes [0, 5]: S = 5 / 255, Z = 0, and 0.0 is on the grid.
    qparams = qparams_from_range(2.0, 5.0, torch.uint8)
    assert float(qparams.scale) == float(torch.tensor(5.0) / 255)
    assert int(qparams.zero_point) == 0
    # [-5, -2] becomes [-5, 0]: Z = 255, the top of the range stands for 0.0.
    assert int(qparams_from_range(-5.0, -2.0, torch.uint8).zero_point) == 255


def test_symmetric_qparams_by_hand() -> None:
    # S = max(|-1|, |0.5|) / (255 / 2); Z = 0 for int8, the middle 128 for uint8.
    signed = qparams_from_range(-1.0, 0.5, torch.int8, symmetric=True)
    assert float(signed.scale) == float(torch.tensor(1.0) / 127.5)
    assert int(signed.zero_point) == 0
    assert int(qparams_from_range(-1.0, 0.5, torch.uint8, symmetric=True).zero_point) == 128
    # An explicit 0..255 range counts as custom in torch.ao: Z = (0 + 255) // 2 = 127.
    custom = qparams_from_range(-1.0, 0.5, torch.uint8, symmetric=True, quant_min=0, quant_max=255)
    assert int(custom.zero_point) == 127


@pytest.mark.parametrize("config", config_params(ALL_CONFIGS))
def test_all_zeros_gets_the_smallest_scale_and_stays_zero(config: Config) -> None:
    x = torch.zeros(5)
    qparams = qparams_from_range(*min_max(x), **config.kwargs())
    assert float(qparams.scale) == EPS
    assert torch.equal(fake_quantize(x, qparams), x)


def test_huge_affine_range_that_overflows_float32_is_refused() -> None:
    # max - min = 6e38 is infinite in float32; torch.ao returns scale = inf, which turns
    # dequantize into inf * 0 = NaN. The symmetric scheme handles the same range.
    with pytest.raises(ValueError, match="too wide"):
        qparams_from_range(-3e38, 3e38)
    symmetric = qparams_from_range(-3e38, 3e38, torch.int8, symmetric=True)
    assert math.isfinite(float(symmetric.scale))


def test_qparams_repr_names_the_scheme() -> None:
    per_tensor = qparams_from_range(-64.0, 63.5, torch.uint8)
    assert repr(per_tensor) == "QParams(scale=0.5, zero_point=128, range=0..255, dtype=torch.uint8)"
    per_channel = qparams_from_range(torch.tensor([-1.0, -2.0]), torch.tensor([1.0, 2.0]), axis=1)
    assert "axis 1" in repr(per_channel) and "2 scales" in repr(per_channel)


def test_dequantize_inverts_quantize_on_the_grid() -> None:
    qparams = qparams_from_range(-1.0, 1.0, torch.int8)
    integers = torch.arange(-128, 128, dtype=torch.int64).to(torch.int8)
    values = dequantize(integers, qparams)
    assert values.dtype == torch.float32
    assert torch.equal(quantize(values, qparams), integers)


# ---------------------------------------------------------------------------------------
# Properties (hypothesis)
# ---------------------------------------------------------------------------------------

# Up to 2^100 (about 1.3e30) so that the width of any range, max - min, stays finite in
# float32 (up to 3.4e38).
LIMIT = 2.0**100
finite_floats = st.floats(min_value=-LIMIT, max_value=LIMIT, allow_nan=False, width=32)
vectors = st.lists(finite_floats, min_size=1, max_size=64).map(
    lambda values: torch.tensor(values, dtype=torch.float32)
)
configs = st.sampled_from(ALL_CONFIGS)


@st.composite
def tensors_3d(draw) -> torch.Tensor:
    shape = draw(st.lists(st.integers(1, 4), min_size=3, max_size=3))
    values = draw(st.lists(finite_floats, min_size=math.prod(shape), max_size=math.prod(shape)))
    return torch.tensor(values, dtype=torch.float32).reshape(shape)


# The exact bound is S/2. In float32, x / S is computed as x * fl(1/S): two roundings of
# relative size 2^-24 each, so the rounding decision can move by |x / S| * 2^-23 <= 2^-15
# of a step (|x / S| <= 256). Dequantizing, S * (q - Z), adds another 256 * 2^-24 = 2^-16
# of a step, and the stored S can make the grid's end miss the range's end by the same.
# That totals under 2^-14 of a step; we allow 2^-12 of a step on top of S/2.
HALF_STEP_TOLERANCE = 0.5 + 2**-12
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None)


@PROPERTY_SETTINGS
@given(x=vectors, config=configs)
def test_round_trip_error_inside_the_range_is_at_most_half_a_step(
    x: torch.Tensor, config: Config
) -> None:
    qparams = qparams_from_range(*min_max(x), **config.kwargs())
    error = (fake_quantize(x, qparams).double() - x.double()).abs()
    assert bool((error <= float(qparams.scale) * HALF_STEP_TOLERANCE).all())


@PROPERTY_SETTINGS
@given(x=vectors, ends=st.lists(finite_floats, min_size=2, max_size=2), config=configs)
def test_values_outside_the_range_are_clipped_to_the_ends(
    x: torch.Tensor, ends: list[float], config: Config
) -> None:
    qparams = qparams_from_range(min(ends), max(ends), **config.kwargs())
    scale = float(qparams.scale)
    ends_as_integers = torch.tensor([qparams.quant_min, qparams.quant_max], dtype=config.dtype)
    grid_min, grid_max = dequantize(ends_as_integers, qparams).tolist()
    integers = quantize(x, qparams).to(torch.int64)
    values = fake_quantize(x, qparams)

    # Beyond the grid's ends: exactly the end integers and the end values.
    above, below = x >= grid_max, x <= grid_min
    assert bool((integers[above] == qparams.quant_max).all())
    assert bool((integers[below] == qparams.quant_min).all())
    assert bool((values[above] == grid_max).all() and (values[below] == grid_min).all())

    # And the grid's ends are the range's ends, to within half a step: the range widened
    # to include 0 (and, symmetric, to [-max|r|, max|r|]). The grid can only be wider
    # than that when the scale was raised to eps for a tiny range.
    range_min, range_max = min(min(ends), 0.0), max(max(ends), 0.0)
    if config.symmetric:
        range_max = max(-range_min, range_max)
        range_min = -range_max
    half_step = scale * HALF_STEP_TOLERANCE
    assert grid_min <= range_min + half_step and grid_max >= range_max - half_step
    if float(qparams.scale) > EPS:
        assert grid_min >= range_min - half_step and grid_max <= range_max + half_step


@PROPERTY_SETTINGS
@given(x=vectors, config=configs)
def test_fake_quantize_is_idempotent(x: torch.Tensor, config: Config) -> None:
    qparams = qparams_from_range(*min_max(x), **config.kwargs())
    once = fake_quantize(x, qparams)
    assert torch.equal(float_bits(fake_quantize(once, qparams)), float_bits(once))


@PROPERTY_SETTINGS
@given(ends=st.lists(finite_floats, min_size=2, max_size=2), config=configs)
def test_zero_maps_exactly_to_the_zero_point(ends: list[float], config: Config) -> None:
    qparams = qparams_from_range(min(ends), max(ends), **config.kwargs())
    zeros = torch.tensor([0.0, -0.0])
    integers = quantize(zeros, qparams)
    assert integers.tolist() == [int(qparams.zero_point)] * 2
    assert dequantize(integers, qparams).tolist() == [0.0, 0.0]


def assert_valid_qparams(qparams: QParams) -> None:
    assert qparams.scale.dtype == torch.float32
    assert bool(torch.isfinite(qparams.scale).all())
    assert bool((qparams.scale >= EPS).all())  # so also > 0
    assert qparams.zero_point.dtype == torch.int64
    zero_point = qparams.zero_point
    assert bool(((zero_point >= qparams.quant_min) & (zero_point <= qparams.quant_max)).all())


@PROPERTY_SETTINGS
@given(x=tensors_3d(), config=configs, axis=st.sampled_from([None, 0, 1, 2, -1, -3]))
def test_scale_is_positive_and_finite_and_zero_point_in_range(
    x: torch.Tensor, config: Config, axis: int | None
) -> None:
    qparams = qparams_from_range(*min_max(x, axis=axis), axis=axis, **config.kwargs())
    assert_valid_qparams(qparams)
    integers = quantize(x, qparams).to(torch.int64)
    assert bool(((integers >= qparams.quant_min) & (integers <= qparams.quant_max)).all())


@PROPERTY_SETTINGS
@given(x=tensors_3d(), config=configs, axis=st.sampled_from([0, 1, 2, -1, -2]))
def test_per_channel_equals_per_tensor_slice_by_slice(
    x: torch.Tensor, config: Config, axis: int
) -> None:
    per_channel = qparams_from_range(*min_max(x, axis=axis), axis=axis, **config.kwargs())
    integers = quantize(x, per_channel)
    values = fake_quantize(x, per_channel)
    for channel in range(x.shape[axis]):
        piece = x.select(axis, channel)
        per_tensor = qparams_from_range(*min_max(piece), **config.kwargs())
        assert float_bits(per_channel.scale[channel]) == float_bits(per_tensor.scale)
        assert per_channel.zero_point[channel] == per_tensor.zero_point
        assert torch.equal(integers.select(axis, channel), quantize(piece, per_tensor))
        assert torch.equal(values.select(axis, channel), fake_quantize(piece, per_tensor))


# ---------------------------------------------------------------------------------------
# Bad input: every error names the argument and what is expected
# ---------------------------------------------------------------------------------------

GOOD = qparams_from_range(-1.0, 1.0)
PER_CHANNEL_3 = qparams_from_range(torch.full((3,), -1.0), torch.ones(3), axis=0)
PER_CHANNEL_4 = qparams_from_range(torch.full((4,), -1.0), torch.ones(4), axis=0)
X = torch.randn(3, 4, generator=generator(12))

BAD_INPUTS = {
    "NaN in x": (lambda: quantize(torch.tensor([1.0, math.nan]), GOOD), ValueError, "x: .*NaN"),
    "Inf in x": (lambda: quantize(torch.tensor([math.inf]), GOOD), ValueError, "x: .*Inf"),
    "NaN to min_max": (lambda: min_max(torch.tensor([math.nan])), ValueError, "x: .*NaN"),
    "-Inf to min_max": (lambda: min_max(torch.tensor([-math.inf, 0.0])), ValueError, "NaN or Inf"),
    "NaN range": (lambda: qparams_from_range(math.nan, 1.0), ValueError, "min_val/max_val"),
    "Inf range": (lambda: qparams_from_range(0.0, math.inf), ValueError, "must be finite"),
    "empty x": (lambda: quantize(torch.empty(0), GOOD), ValueError, "x: the tensor is empty"),
    "empty to min_max": (lambda: min_max(torch.empty(2, 0)), ValueError, r"empty \(shape"),
    "integer x": (lambda: quantize(torch.arange(3), GOOD), TypeError, "x: expected a float"),
    "list x": (lambda: quantize([1.0, 2.0], GOOD), TypeError, "x: expected a torch.Tensor"),
    "float q": (lambda: dequantize(torch.ones(3), GOOD), TypeError, "q: expected an integer"),
    "list q": (lambda: dequantize([1, 2], GOOD), TypeError, "q: expected a torch.Tensor"),
    "int16 dtype": (lambda: qparams_from_range(-1.0, 1.0, torch.int16), TypeError, "dtype"),
    "float dtype": (lambda: quant_range(torch.float32), TypeError, "dtype: expected"),
    "quant_min == quant_max": (
        lambda: qparams_from_range(-1.0, 1.0, quant_min=0, quant_max=0),
        ValueError,
        r"quant_min \(0\) must be smaller than quant_max \(0\)",
    ),
    "quant_min > quant_max": (
        lambda: quant_range(torch.int8, quant_min=5, quant_max=-5),
        ValueError,
        "must be smaller",
    ),
    "only quant_min": (lambda: quant_range(quant_min=0), ValueError, "give both or neither"),
    "float quant_max": (
        lambda: quant_range(quant_min=0, quant_max=15.0),
        TypeError,
        "expected integers",
    ),
    "range without 0": (
        lambda: quant_range(torch.uint8, quant_min=1, quant_max=10),
        ValueError,
        "1..10 must include 0",
    ),
    "uint8 range below 0": (
        lambda: quant_range(torch.uint8, quant_min=-1, quant_max=10),
        ValueError,
        r"does not fit in torch.uint8 \(0..255\)",
    ),
    "int8 range above 127": (
        lambda: quant_range(torch.int8, quant_min=0, quant_max=255),
        ValueError,
        r"does not fit in torch.int8 \(-128..127\)",
    ),
    "axis too large": (lambda: min_max(X, axis=2), ValueError, "axis .*2 is out of range"),
    "axis too negative": (lambda: min_max(X, axis=-3), ValueError, "-3 is out of range"),
    "axis not int": (lambda: normalise_axis(0.0, 2), ValueError, "axis"),
    "qparams axis too large": (
        lambda: quantize(X, qparams_from_range(*min_max(X, 0), axis=5)),
        ValueError,
        "5 is out of range for a 2-d",
    ),
    "channel count": (
        lambda: quantize(X, PER_CHANNEL_4),
        ValueError,
        "x has 3 channels along axis 0 but the qparams have 4",
    ),
    "channel count on dequantize": (
        lambda: dequantize(torch.zeros(2, 4, dtype=torch.uint8), PER_CHANNEL_3),
        ValueError,
        "x has 2 channels",
    ),
    "per-channel range without axis": (
        lambda: qparams_from_range(torch.zeros(3), torch.ones(3)),
        ValueError,
        "axis: give it",
    ),
    "axis with a per-tensor range": (
        lambda: qparams_from_range(0.0, 1.0, axis=0),
        ValueError,
        "axis: give it",
    ),
    "2-d range": (
        lambda: qparams_from_range(torch.zeros(2, 2), torch.ones(2, 2), axis=0),
        ValueError,
        "1-d tensors",
    ),
    "range shapes differ": (
        lambda: qparams_from_range(torch.zeros(3), torch.ones(2), axis=0),
        ValueError,
        "differ in shape",
    ),
    "min above max": (lambda: qparams_from_range(1.0, -1.0), ValueError, "must not exceed"),
    "bits 1": (lambda: bit_range(1), ValueError, "bits: expected a whole number from 2 to 8"),
    "bits 9": (lambda: bit_range(9, torch.int8), ValueError, "got 9"),
    "bits 4.0": (lambda: bit_range(4.0), ValueError, "got 4.0"),
    "bits with int16": (lambda: bit_range(4, torch.int16), TypeError, "dtype"),
    "check_finite non-tensor": (lambda: check_finite(3.0, "weights"), TypeError, "weights: "),
    "metric shapes differ": (
        lambda: mse(torch.zeros(3, 1), torch.zeros(3)),
        ValueError,
        r"approximation: shape \(3,\) differs from the reference's \(3, 1\)",
    ),
    "sqnr shapes differ": (lambda: sqnr_db(torch.ones(2), torch.ones(1)), ValueError, "differs"),
    "metric non-tensor": (lambda: mse([1.0], torch.ones(1)), TypeError, "reference: expected"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_a_clear_error(case: str) -> None:
    call, error, message = BAD_INPUTS[case]
    with pytest.raises(error, match=message):
        call()


# ---------------------------------------------------------------------------------------
# Error metrics
# ---------------------------------------------------------------------------------------


def test_mse_on_known_values() -> None:
    assert mse(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 3.0])) == 5.0
    assert mse(torch.ones(2, 3), torch.ones(2, 3)) == 0.0


def test_sqnr_of_an_exact_copy_is_infinite() -> None:
    x = torch.randn(100, generator=generator(13))
    assert sqnr_db(x, x.clone()) == math.inf
    assert sqnr_db(torch.zeros(4), torch.zeros(4)) == math.inf


def test_sqnr_of_a_known_noise_level() -> None:
    # Signal power 1 per element, noise 0.1^2 per element: ratio 100, i.e. 20 dB.
    reference = torch.tensor([1.0, -1.0, 1.0, -1.0])
    noisy = reference + torch.tensor([0.1, -0.1, -0.1, 0.1])
    assert sqnr_db(reference, noisy) == pytest.approx(20.0, abs=1e-5)
    # Noise as strong as the signal: 0 dB. A silent signal with noise: minus infinity.
    assert sqnr_db(reference, torch.zeros(4)) == pytest.approx(0.0, abs=1e-12)
    assert sqnr_db(torch.zeros(4), torch.ones(4)) == -math.inf


@pytest.mark.parametrize("bits", [4, 5, 6, 7, 8])
def test_sqnr_of_a_uniform_signal_follows_the_6_db_per_bit_rule(bits: int) -> None:
    # x uniform on [-1, 1] has power 1/3; the rounding error is uniform on [-S/2, S/2]
    # with power S^2 / 12, S = 2 / (2^b - 1). Their ratio is (2^b - 1)^2, so
    # SQNR = 20 log10(2^b - 1) dB, about 6.02 dB per bit.
    x = torch.linspace(-1.0, 1.0, 200_001)
    qparams = qparams_from_range(-1.0, 1.0, quant_min=0, quant_max=2**bits - 1)
    expected = 20 * math.log10(2**bits - 1)
    assert sqnr_db(x, fake_quantize(x, qparams)) == pytest.approx(expected, abs=0.05)


def test_reduce_range_that_leaves_no_range_is_refused():
    with pytest.raises(ValueError, match="reduce_range: halving leaves 0..0"):
        qparams_from_range(-1.0, 1.0, torch.uint8, quant_min=0, quant_max=1, reduce_range=True)


def test_quantize_wants_qparams_and_metrics_want_data():
    with pytest.raises(TypeError, match="qparams: expected a QParams"):
        quantize(torch.ones(3), (0.1, 0))
    with pytest.raises(TypeError, match="qparams: expected a QParams"):
        dequantize(torch.ones(3, dtype=torch.uint8), (0.1, 0))
    with pytest.raises(ValueError, match="empty"):
        mse(torch.empty(0), torch.empty(0))
    with pytest.raises(ValueError, match="empty"):
        sqnr_db(torch.empty(0), torch.empty(0))
