"""ptqlib.formats.minifloat against PyTorch's float8 casts (every code, both directions) and
torchao's FP4/FP6 reference, on crafted values (ties, subnormals, overflow, NaN, -0) and
hypothesis properties (round trip, monotone, nearest)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchao.prototype.custom_fp_utils import _f32_to_floatx_unpacked, _floatx_unpacked_to_f32

from ptqlib.errors import InputError
from ptqlib.formats.minifloat import (
    E2M1,
    E2M3,
    E3M2,
    E4M3,
    E5M2,
    E8M0,
    MINIFLOATS,
    decode,
    encode,
    lookup,
    representable_values,
    round_to_format,
)

TORCH_FORMATS = (E4M3, E5M2, E8M0)
# PyTorch's casts: E4M3 saturates, E5M2 and E8M0 do not (see the module docstring).
TORCH_SATURATES = {"e4m3": True, "e5m2": False, "e8m0": False}
SUB_BYTE = (E2M1, E2M3, E3M2)


def torch_decode(codes: torch.Tensor, fmt) -> torch.Tensor:
    return codes.to(torch.uint8).view(fmt.torch_dtype).float()


def torch_encode(x: torch.Tensor, fmt) -> torch.Tensor:
    return x.to(fmt.torch_dtype).view(torch.uint8)


def same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, NaN where NaN, and the same sign bits (so -0.0 differs from 0.0)."""
    nan = torch.isnan(a)
    return bool(
        torch.equal(nan, torch.isnan(b))
        and torch.equal(a[~nan], b[~nan])
        and torch.equal(torch.signbit(a[~nan]), torch.signbit(b[~nan]))
    )


@pytest.mark.parametrize("fmt", TORCH_FORMATS, ids=lambda f: f.name)
def test_every_byte_decodes_as_torch_does(fmt):
    codes = torch.arange(256)
    assert same_values(decode(codes, fmt), torch_decode(codes, fmt))


@pytest.mark.parametrize("fmt", list(MINIFLOATS.values()), ids=lambda f: f.name)
def test_the_lookup_table_decodes_every_code_as_the_formula_does(fmt):
    codes = torch.arange(2**fmt.bits).flip(0).reshape(-1, 2)  # any shape, any order
    assert same_values(lookup(codes, fmt), decode(codes, fmt))
    with pytest.raises(InputError, match="codes"):
        lookup(torch.tensor([2**fmt.bits]), fmt)


@pytest.mark.parametrize("fmt", TORCH_FORMATS, ids=lambda f: f.name)
def test_every_value_encodes_to_the_code_torch_gives(fmt):
    values = torch_decode(torch.arange(256), fmt)
    values = values[torch.isfinite(values)]
    assert torch.equal(encode(values, fmt), torch_encode(values, fmt))


def crafted_values(fmt) -> torch.Tensor:
    """Every midpoint between neighbouring values (a tie), one float32 step either side of it,
    and both signs: the ties, the subnormal boundaries and the top of the range."""
    grid = representable_values(fmt).double()
    if fmt.signed:
        grid = grid[grid >= 0]
    midpoints = ((grid[1:] + grid[:-1]) / 2).float()
    below = torch.nextafter(midpoints, torch.tensor(0.0))
    above = torch.nextafter(midpoints, torch.tensor(math.inf))
    values = torch.cat([grid.float(), midpoints, below, above])
    return torch.cat([values, -values]) if fmt.signed else values


@pytest.mark.parametrize("fmt", TORCH_FORMATS, ids=lambda f: f.name)
def test_ties_and_their_neighbours_round_as_torch_does(fmt):
    x = crafted_values(fmt)
    if fmt is E8M0:
        # A float32 subnormal between 2^-127 and 1.5 * 2^-127 is nearer to 2^-127 (code 0),
        # but PyTorch's cast rounds it up to 2^-126 (code 1): its guard bit for subnormal
        # inputs sits one binade too high. Left out here; checked in the next test.
        x = x[(x <= 2.0**-127) | (x >= 1.5 * 2.0**-127)]
    assert torch.equal(encode(x, fmt, TORCH_SATURATES[fmt.name]), torch_encode(x, fmt))


def test_torch_rounds_tiny_e8m0_inputs_up_where_the_nearest_is_below():
    x = torch.tensor([1.25 * 2.0**-127])
    assert int(encode(x, E8M0)) == 0  # 2^-127, the nearest value
    assert int(torch_encode(x, E8M0)) == 1  # PyTorch 2.14: 2^-126


@pytest.mark.parametrize(
    ("value", "e4m3", "e5m2"),
    [
        (448.0, 0x7E, 0x5F),  # E4M3's largest; exact in E5M2 too (1.75 * 2^8)
        (464.0, 0x7E, 0x5F),  # halfway to E4M3's (absent) 480: the tie goes down
        (465.0, 0x7E, 0x5F),  # past it: E4M3 overflows (saturates to 448 here)
        (57344.0, 0x7E, 0x7B),  # E5M2's largest
        (61439.0, 0x7E, 0x7B),  # below the halfway point to 65536
        (61440.0, 0x7E, 0x7C),  # the tie rounds to the even 65536: overflow to inf
        (math.inf, 0x7E, 0x7C),
        (2.0**-9, 0x01, 0x18),  # E4M3's smallest subnormal
        (2.0**-10, 0x00, 0x14),  # half of it: the tie goes to the even 0
        (3 * 2.0**-11, 0x01, 0x16),  # 0.75 of it rounds up
        (2.0**-16, 0x00, 0x01),  # E5M2's smallest subnormal
        (2.0**-6 - 2.0**-10, 0x08, 0x24),  # a tie just below E4M3's smallest normal: up to it
        (-0.0, 0x80, 0x80),
    ],
)
def test_crafted_values_in_both_overflow_modes(value, e4m3, e5m2):
    x = torch.tensor([value, -value])
    expected_e4m3 = torch.tensor([e4m3, e4m3 ^ 0x80], dtype=torch.uint8)
    expected_e5m2 = torch.tensor([e5m2, e5m2 ^ 0x80], dtype=torch.uint8)
    assert torch.equal(encode(x, E4M3, saturate=True), expected_e4m3)
    assert torch.equal(torch_encode(x, E4M3), expected_e4m3)
    assert torch.equal(encode(x, E5M2, saturate=False), expected_e5m2)
    assert torch.equal(torch_encode(x, E5M2), expected_e5m2)


def test_non_saturating_overflow_is_nan_for_e4m3_and_inf_for_e5m2():
    x = torch.tensor([1e6, -1e6, math.inf])
    assert torch.isnan(round_to_format(x, E4M3, saturate=False)).all()
    assert round_to_format(x, E5M2, saturate=False).tolist() == [math.inf, -math.inf, math.inf]
    assert round_to_format(x, E5M2, saturate=True).tolist() == [57344.0, -57344.0, 57344.0]
    # Formats without inf or NaN can only saturate.
    assert round_to_format(x, E2M1, saturate=False).tolist() == [6.0, -6.0, 6.0]


def test_nan_keeps_its_sign_and_has_one_pattern_per_sign():
    x = torch.tensor([math.nan, -math.nan])
    for fmt in (E4M3, E5M2):
        assert encode(x, fmt).tolist() == [0x7F, 0xFF]
        assert torch.equal(encode(x, fmt), torch_encode(x, fmt))
    codes = torch.arange(256)
    assert int(torch.isnan(decode(codes, E4M3)).sum()) == 2  # S.1111.111 only
    assert int(torch.isnan(decode(codes, E5M2)).sum()) == 6  # S.11111.{01,10,11}
    assert int(torch.isinf(decode(codes, E5M2)).sum()) == 2
    assert decode(torch.tensor([255]), E8M0).isnan().all()


def test_formats_without_nan_or_sign_refuse_what_they_cannot_hold():
    with pytest.raises(InputError, match="no NaN"):
        encode(torch.tensor([math.nan]), E2M1)
    with pytest.raises(InputError, match="unsigned"):
        encode(torch.tensor([-1.0]), E8M0)
    # PyTorch's cast drops the sign silently instead.
    assert int(torch_encode(torch.tensor([-1.0]), E8M0)) == 127


def test_the_numbers_of_the_specifications():
    # FP8 paper Table 1; OCP MX v1.0 Tables 4, 5 and 7.
    table = {
        "e4m3": (7, 448.0, 2.0**-6, 2.0**-9, 8),
        "e5m2": (15, 57344.0, 2.0**-14, 2.0**-16, 15),
        "e3m2": (3, 28.0, 2.0**-2, 2.0**-4, 4),
        "e2m3": (1, 7.5, 1.0, 2.0**-3, 2),
        "e2m1": (1, 6.0, 1.0, 0.5, 2),
        "e8m0": (127, 2.0**127, 2.0**-127, 2.0**-127, 127),
    }
    for name, (bias, largest, normal, smallest, emax) in table.items():
        fmt = MINIFLOATS[name]
        assert (fmt.bias, fmt.max_value, fmt.smallest_normal) == (bias, largest, normal)
        assert (fmt.smallest_positive, fmt.max_exponent) == (smallest, emax)
    assert representable_values(E2M1).tolist() == [
        -6,
        -4,
        -3,
        -2,
        -1.5,
        -1,
        -0.5,
        0,
        0.5,
        1,
        1.5,
        2,
        3,
        4,
        6,
    ]


@pytest.mark.parametrize("fmt", SUB_BYTE, ids=lambda f: f.name)
def test_fp4_and_fp6_agree_with_torchao_in_both_directions(fmt):
    codes = torch.arange(2**fmt.bits)
    reference = _floatx_unpacked_to_f32(codes.to(torch.uint8), fmt.exponent_bits, fmt.mantissa_bits)
    assert same_values(decode(codes, fmt), reference)
    x = crafted_values(fmt)
    x = torch.cat([x, torch.tensor([1e6, -1e6])])  # overflow saturates in both
    expected = _f32_to_floatx_unpacked(x, fmt.exponent_bits, fmt.mantissa_bits)
    assert torch.equal(encode(x, fmt), expected)


finite_floats = st.floats(
    min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=32
)


@settings(max_examples=100, deadline=None)
@given(st.lists(finite_floats, min_size=2, max_size=2), st.sampled_from(list(MINIFLOATS)))
def test_rounding_is_monotone_and_to_a_nearest_value(pair, name):
    fmt = MINIFLOATS[name]
    low, high = sorted(pair)
    if not fmt.signed:
        low, high = abs(low), abs(high)
        low, high = min(low, high), max(low, high)
    x = torch.tensor([low, high])
    rounded = round_to_format(x, fmt).double()
    assert rounded[0] <= rounded[1]
    grid = representable_values(fmt).double()
    for value, result in zip(x.double(), rounded, strict=True):
        if abs(float(value)) <= fmt.max_value:
            assert abs(result - value) == (grid - value).abs().min()


@settings(max_examples=100, deadline=None)
@given(finite_floats, st.sampled_from(["e4m3", "e5m2", "e3m2", "e2m3", "e2m1"]))
def test_a_rounded_value_encodes_back_to_itself_and_negation_flips_the_sign_bit(value, name):
    fmt = MINIFLOATS[name]
    x = torch.tensor([value])
    code = encode(x, fmt)
    assert torch.equal(encode(decode(code, fmt), fmt), code)
    sign = 2 ** (fmt.bits - 1)
    assert int(encode(-x, fmt)) == int(code) ^ sign
