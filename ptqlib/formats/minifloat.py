"""Minifloats: floating-point numbers of 4 to 8 bits, from the bit pattern up.

A minifloat with ``E`` exponent bits and ``M`` mantissa bits stores a sign bit ``s``, an
exponent field ``e`` (0 .. 2^E - 1) and a mantissa field ``f`` (0 .. 2^M - 1), and means::

    normal      (-1)^s * 2^(e - bias) * (1 + f / 2^M)          e >= 1
    subnormal   (-1)^s * 2^(1 - bias) * (f / 2^M)              e = 0
    bias = 2^(E - 1) - 1

So inside each binade [2^k, 2^(k+1)) the values are evenly spaced, ``2^(k - M)`` apart, and
below the smallest normal number 2^(1 - bias) the subnormals keep the spacing of the lowest
binade, down to 0. The formats differ in what their top codes mean (the "special values"):

    format  E  M  bias  specials                                   max     min normal  min subnormal
    E4M3    4  3   7    NaN = S.1111.111 only, no inf              448     2^-6        2^-9
    E5M2    5  2  15    IEEE-like: inf = S.11111.00, NaN = .01-.11  57344   2^-14       2^-16
    E3M2    3  2   3    none (every code is a number)              28      2^-2        2^-4
    E2M3    2  3   1    none                                       7.5     1           2^-3
    E2M1    2  1   1    none                                       6       1           0.5
    E8M0    8  0  127   unsigned, no zero, no subnormals, no inf,  2^127   2^-127      (none)
                        NaN = 0xFF

Sources: the 8-bit formats are those of Micikevicius et al. 2022, "FP8 Formats for Deep
Learning" (arXiv:2209.05433), Table 1, adopted by the OCP 8-bit Floating Point specification
(OFP8); E4M3 gives up infinities and all NaNs but one per sign to gain a binade (its top
exponent 1111 holds 256..448 instead of inf/NaN), E5M2 keeps IEEE 754's conventions. The
others are from the OCP Microscaling (MX) specification v1.0: FP6 E3M2/E2M3 (section 5.3.2),
FP4 E2M1 (section 5.3.3, Table 5: no inf, no NaN) and the scale format E8M0 (section 5.4.1,
Table 7: an unsigned biased exponent, 2^(e - 127) for e = 0..254, 0xFF = NaN, no zero).

**Rounding** (:func:`encode`) is round to nearest, ties to even, as IEEE 754 and all these
specifications require. For a magnitude ``a`` the binade is ``k = floor(log2 a)`` (exact, from
``frexp``), raised to the lowest binade for subnormals; then ``a / 2^(k - M)`` is rounded to an
integer ``n`` and the code is::

    code = (k - k_min) * 2^M + n   (- 2^M for a format without subnormals)

which also carries into the next binade when ``n`` rounds up to 2^(M+1). The arithmetic is
exact in the input's own float type (float32, or float64 for float64 input): ``a / 2^(k - M)``
lies in [0, 2^(M+1)], a multiplication by a power of two that loses nothing, except for inputs
so small that they round to 0 in every format here.

**Overflow**: a magnitude whose rounded value exceeds the largest finite number ``max``.
The FP8 paper (section 3) saturates: "values that overflow are then saturated to the maximum
representable value"; its authors clarified (recorded in ONNX's float8 design, onnx/onnx pull
request 4805) that conversions come in two modes: *saturating* gives +-max, *non-saturating*
gives inf for E5M2 and NaN for E4M3. :func:`encode` does both (``saturate``). A format with
neither inf nor NaN (E2M1, E2M3, E3M2) can only saturate, which is what MX section 6.3
prescribes ("clamped to the max normal, preserving the sign"). PyTorch 2.14's casts pick one
mode per dtype: ``x.to(torch.float8_e4m3fn)`` saturates (1e6 and inf give 448, since PyTorch
pull request 178817), ``x.to(torch.float8_e5m2)`` does not (61440 and above give inf: 61440
lies halfway between 57344 and 65536 and the tie rounds to the even 65536, which overflows).
NaN keeps its sign: S.1..1 (all other bits one) in every format with a NaN.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from ptqlib.errors import InputError

# What the top codes of a format mean.
NO_SPECIALS = "none"  # every code is a finite number (E2M1, E2M3, E3M2)
NAN_ALL_ONES = "all_ones"  # only the pattern with every exponent and mantissa bit set is NaN
IEEE_SPECIALS = "ieee"  # top exponent: mantissa 0 is inf, any other mantissa is NaN


@dataclass(frozen=True)
class Minifloat:
    """A small floating-point format (see the module docstring for the encoding).

    ``specials`` is one of ``"none"``, ``"all_ones"`` (the one NaN pattern per sign, E4M3;
    E8M0's 0xFF) or ``"ieee"`` (E5M2: inf and NaNs in the top exponent). ``subnormals`` is
    False only for E8M0, whose exponent field 0 is the normal number 2^-127.
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    specials: str = NO_SPECIALS
    signed: bool = True
    subnormals: bool = True
    torch_dtype: torch.dtype | None = None

    @property
    def bits(self) -> int:
        """Bits of one code: sign (if any) + exponent + mantissa."""
        return int(self.signed) + self.exponent_bits + self.mantissa_bits

    @property
    def bias(self) -> int:
        return 2 ** (self.exponent_bits - 1) - 1

    @property
    def lowest_binade(self) -> int:
        """k of the lowest binade [2^k, 2^(k+1)): 1 - bias (its spacing is the subnormals'),
        or -bias for a format without subnormals, whose exponent field 0 is a normal binade."""
        return 1 - self.bias if self.subnormals else -self.bias

    @property
    def has_infinity(self) -> bool:
        return self.specials == IEEE_SPECIALS

    @property
    def has_nan(self) -> bool:
        return self.specials != NO_SPECIALS

    @property
    def magnitude_mask(self) -> int:
        """The exponent and mantissa bits of a code (everything but the sign)."""
        return 2 ** (self.exponent_bits + self.mantissa_bits) - 1

    @property
    def max_code(self) -> int:
        """The code (without sign) of the largest finite number."""
        if self.specials == IEEE_SPECIALS:  # the whole top exponent is inf / NaN
            return ((2**self.exponent_bits - 1) << self.mantissa_bits) - 1
        if self.specials == NAN_ALL_ONES:  # only the all-ones pattern is NaN
            return self.magnitude_mask - 1
        return self.magnitude_mask

    @property
    def infinity_code(self) -> int:
        return (2**self.exponent_bits - 1) << self.mantissa_bits

    @property
    def max_value(self) -> float:
        """The largest finite number, e.g. 448 for E4M3, 6 for E2M1."""
        return float(decode(torch.tensor([self.max_code]), self))

    @property
    def max_exponent(self) -> int:
        """emax: the exponent of the largest finite number, ``floor(log2(max))`` (E4M3: 8,
        E5M2: 15, E2M1: 2). The MX block scale is built from it (OCP MX section 6.3)."""
        return (self.max_code >> self.mantissa_bits) - self.bias

    @property
    def smallest_normal(self) -> float:
        return 2.0 ** (1 - self.bias) if self.subnormals else 2.0**self.lowest_binade

    @property
    def smallest_positive(self) -> float:
        """The smallest number above 0: the smallest subnormal, or for E8M0 its 2^-127."""
        if self.subnormals:
            return 2.0 ** (self.lowest_binade - self.mantissa_bits)
        return 2.0**self.lowest_binade

    def __repr__(self) -> str:
        return f"Minifloat({self.name}: {self.bits} bits, max {self.max_value:g})"


E4M3 = Minifloat("e4m3", 4, 3, NAN_ALL_ONES, torch_dtype=torch.float8_e4m3fn)
E5M2 = Minifloat("e5m2", 5, 2, IEEE_SPECIALS, torch_dtype=torch.float8_e5m2)
E3M2 = Minifloat("e3m2", 3, 2)
E2M3 = Minifloat("e2m3", 2, 3)
E2M1 = Minifloat("e2m1", 2, 1)
E8M0 = Minifloat(
    "e8m0", 8, 0, NAN_ALL_ONES, signed=False, subnormals=False, torch_dtype=torch.float8_e8m0fnu
)
MINIFLOATS = {fmt.name: fmt for fmt in (E4M3, E5M2, E3M2, E2M3, E2M1, E8M0)}


def _check_codes(codes: torch.Tensor, fmt: Minifloat) -> torch.Tensor:
    if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.is_complex():
        raise TypeError(f"codes: expected an integer tensor of {fmt.name} bit patterns")
    codes = codes.to(torch.int64)
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 2**fmt.bits):
        raise InputError(
            f"codes: {fmt.name} codes are {fmt.bits}-bit patterns 0..{2**fmt.bits - 1}, got "
            f"{int(codes.min())}..{int(codes.max())}"
        )
    return codes


def decode(codes: torch.Tensor, fmt: Minifloat) -> torch.Tensor:
    """The float32 value of every bit pattern in ``codes`` (an integer tensor).

    Exact: every minifloat value here is a float32 (E8M0's 2^-127 is a float32 subnormal),
    and so is every product ``(2^M + f) * 2^p`` it is computed from."""
    codes = _check_codes(codes, fmt)
    mantissa_steps = 2**fmt.mantissa_bits
    exponent_field = (codes >> fmt.mantissa_bits) & (2**fmt.exponent_bits - 1)
    mantissa_field = (codes & (mantissa_steps - 1)).to(torch.float32)
    normal = torch.ldexp(
        mantissa_steps + mantissa_field, exponent_field - fmt.bias - fmt.mantissa_bits
    )
    if fmt.subnormals:
        subnormal = torch.ldexp(
            mantissa_field, torch.tensor(1 - fmt.bias - fmt.mantissa_bits, dtype=torch.int64)
        )
        value = torch.where(exponent_field == 0, subnormal, normal)
    else:
        value = normal
    magnitude_code = codes & fmt.magnitude_mask
    if fmt.specials == IEEE_SPECIALS:
        top = exponent_field == 2**fmt.exponent_bits - 1
        value = torch.where(top & (mantissa_field == 0), math.inf, value)
        value = torch.where(top & (mantissa_field != 0), math.nan, value)
    elif fmt.specials == NAN_ALL_ONES:
        value = torch.where(magnitude_code == fmt.magnitude_mask, math.nan, value)
    if fmt.signed:
        negative = (codes >> (fmt.exponent_bits + fmt.mantissa_bits)) & 1 == 1
        value = torch.where(negative, -value, value)
    return value.to(torch.float32)


@functools.cache
def value_table(fmt: Minifloat) -> torch.Tensor:
    """The value of every code of ``fmt``: :func:`decode` applied to 0 .. 2^bits - 1 once.
    Indexing it (:func:`lookup`) is how software decodes a small format quickly: a table of
    256 floats for FP8, 16 for FP4."""
    return decode(torch.arange(2**fmt.bits), fmt)


def lookup(codes: torch.Tensor, fmt: Minifloat) -> torch.Tensor:
    """The same values as ``decode(codes, fmt)``, read from :func:`value_table`."""
    return value_table(fmt)[_check_codes(codes, fmt)]


def encode(x: torch.Tensor, fmt: Minifloat, saturate: bool = True) -> torch.Tensor:
    """The ``fmt`` code of every value of ``x``, rounded to nearest, ties to even (uint8).

    ``saturate``: an overflow (and inf) becomes +-max; otherwise inf where the format has
    one (E5M2), else NaN (E4M3, E8M0). Formats with neither always saturate. NaN becomes the
    NaN pattern with the input's sign; a format without NaN refuses it, and an unsigned
    format (E8M0) refuses negative numbers. -0.0 keeps its sign bit.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x: expected a float tensor to encode as {fmt.name}")
    if x.dtype != torch.float64:
        x = x.detach().float()  # exact for float16 and bfloat16 inputs
    is_nan = torch.isnan(x)
    if not fmt.has_nan and bool(is_nan.any()):
        raise InputError(f"x: contains NaN, which {fmt.name} cannot represent (it has no NaN)")
    if not fmt.signed and bool((x < 0).any()):
        raise InputError(
            f"x: {fmt.name} is unsigned; got a negative value ({float(x.min()):g}); PyTorch's "
            "cast would drop the sign silently"
        )
    magnitude = torch.where(is_nan, 0.0, x.abs())
    is_infinite = torch.isinf(magnitude)
    finite_magnitude = torch.where(is_infinite, 0.0, magnitude)

    # floor(log2 a) from frexp (a = m * 2^p, m in [0.5, 1)), raised to the lowest binade.
    _, power = torch.frexp(finite_magnitude)
    binade = torch.where(finite_magnitude == 0, fmt.lowest_binade, power.to(torch.int64) - 1)
    binade = torch.clamp(binade, min=fmt.lowest_binade)
    steps = torch.round(torch.ldexp(finite_magnitude, fmt.mantissa_bits - binade))  # RNE
    code = (binade - fmt.lowest_binade) * 2**fmt.mantissa_bits + steps.to(torch.int64)
    if not fmt.subnormals:  # no zero: the lowest code already holds 1.0 * 2^lowest_binade
        code = torch.clamp(code - 2**fmt.mantissa_bits, min=0)

    overflow = is_infinite | (code > fmt.max_code)
    if saturate or not (fmt.has_infinity or fmt.has_nan):
        overflow_code = fmt.max_code
    elif fmt.has_infinity:
        overflow_code = fmt.infinity_code
    else:
        overflow_code = fmt.magnitude_mask  # the NaN pattern
    code = torch.where(overflow, overflow_code, code)
    code = torch.where(is_nan, fmt.magnitude_mask, code)
    if fmt.signed:
        code = code | (torch.signbit(x).to(torch.int64) << (fmt.exponent_bits + fmt.mantissa_bits))
    return code.to(torch.uint8)


def round_to_format(x: torch.Tensor, fmt: Minifloat, saturate: bool = True) -> torch.Tensor:
    """``x`` rounded to the nearest ``fmt`` value (float32): ``decode(encode(x))``."""
    return decode(encode(x, fmt, saturate), fmt)


def representable_values(fmt: Minifloat) -> torch.Tensor:
    """Every finite value of ``fmt``, sorted, each once (+0 and -0 are one value)."""
    values = decode(torch.arange(2**fmt.bits), fmt)
    return torch.unique(values[torch.isfinite(values)])
