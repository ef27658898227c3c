"""The one GEMM entry point: int8 carriers times int8 weights, summed exactly in int32.

**Carriers.** ``torch._int_mm`` multiplies int8 by int8, so a uint8 activation q (0..255)
travels between layers as the int8 *carrier* ``c = q - 128`` (an int8 activation is its own
carrier): :func:`to_carrier` and :func:`from_carrier`. Since ``q - Z_x = c - (Z_x - 128)``,
``sum_k (q_x,k - Z_x) q_w,k = sum_k c_k q_w,k + (128 - Z_x) sum_k q_w,k``: the int8 GEMM
plus ``ptqlib.integer_arithmetic.zero_point_correction`` taken at ``Z_x - 128``, the
*carrier correction*.

**One GEMM.** Every integer product goes through :func:`int8_matmul`, which picks
``torch._int_mm`` where oneDNN has a fast int8 kernel (AVX-512 VNNI, AMX) and an exact float
GEMM of the same integers elsewhere (see its docstring for why the float sums are exact):
:func:`gemm_weight` prepares the weight for the chosen GEMM, :func:`gemm_product` multiplies.
The fast path keeps its weights prepared and calls the second alone. A depthwise
convolution has no single GEMM: :func:`int8_channelwise_dot`.
"""

from __future__ import annotations

import functools

import torch

from ptqlib.errors import InputError
from ptqlib.hardware import int8_gemm_is_fast


def carrier_offset(dtype: torch.dtype) -> int:
    """What is subtracted from an activation's integer to carry it as int8: 128 for uint8
    (0..255 becomes -128..127), 0 for int8."""
    return 128 if dtype == torch.uint8 else 0


def carrier_of(integer: int, dtype: torch.dtype) -> int:
    """The carrier of one integer of ``dtype``'s range (a zero-point, a clamp bound)."""
    return int(integer) - carrier_offset(dtype)


def to_carrier(integers: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An activation's integers ``q`` (of ``dtype``'s range, any integer tensor) as int8
    carriers ``q - offset``."""
    return (integers.to(torch.int16) - carrier_offset(dtype)).to(torch.int8)


def from_carrier(carriers: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Int8 carriers back to the activation's integers ``c + offset``, in ``dtype``."""
    return (carriers.to(torch.int16) + carrier_offset(dtype)).to(dtype)


# --- the one GEMM entry point -----------------------------------------------------------------

FLOAT32_EXACT_INTEGERS = 2**24  # every integer of at most this magnitude is a float32
# |c q_w| <= 128 * 128 = 2^14 for int8 carriers and int8 weights.
LARGEST_PRODUCT = 128 * 128


@functools.cache
def default_uses_int8_gemm() -> bool:
    """Whether this CPU's ``torch._int_mm`` is fast (``ptqlib.hardware.int8_gemm_is_fast``),
    asked once: the answer cannot change while the process runs."""
    return int8_gemm_is_fast()


def exact_float_dtype(depth: int) -> torch.dtype:
    """The float type that sums ``depth`` int8 x int8 products exactly, in any order.

    Every product is an integer of magnitude at most 2^14 and every partial sum (however a
    blocked, vectorised GEMM orders them) is an integer of magnitude at most
    ``depth * 2^14``. float32 holds every integer up to 2^24, so for ``depth <= 1024`` no
    addition rounds; deeper sums use float64 (exact up to 2^53, beyond any int32 sum)."""
    return torch.float32 if depth * LARGEST_PRODUCT <= FLOAT32_EXACT_INTEGERS else torch.float64


def has_gemm_layout(matrix: torch.Tensor) -> bool:
    """Whether a BLAS-style GEMM reads the 2-d ``matrix`` ``[R, C]`` right from its pointer
    and strides: row-major, strides exactly (C, 1); or column-major (a transposed row-major
    matrix, as ``weight.t()``), strides exactly (1, R) with R > 1, so that it cannot be
    mistaken for a row-major one."""
    rows, columns = matrix.shape
    strides = matrix.stride()
    return strides == (columns, 1) or (rows > 1 and strides == (1, rows))


def with_gemm_layout(matrix: torch.Tensor) -> torch.Tensor:
    """``matrix`` itself if it :func:`has_gemm_layout`, else a row-major copy of it."""
    if has_gemm_layout(matrix):
        return matrix
    return torch.empty(matrix.shape, dtype=matrix.dtype).copy_(matrix)


def gemm_weight(weight_t: torch.Tensor, use_int8_gemm: bool | None = None) -> torch.Tensor:
    """An int8 ``[K, out]`` weight in the form :func:`gemm_product` multiplies it: int8 in a
    layout oneDNN reads (:func:`with_gemm_layout`) for ``torch._int_mm``, or its values in
    :func:`exact_float_dtype` for the float GEMM. The fast path converts once; the teaching
    path, through :func:`int8_matmul`, on each call."""
    if weight_t.dtype != torch.int8:  # both GEMMs would take other integers: say so
        raise InputError(f"weight: expected int8 values, got {weight_t.dtype}")
    use_int8_gemm = default_uses_int8_gemm() if use_int8_gemm is None else use_int8_gemm
    if use_int8_gemm:
        return with_gemm_layout(weight_t)
    return weight_t.to(exact_float_dtype(weight_t.shape[0]))


def int8_matmul(
    carriers: torch.Tensor, weight_t: torch.Tensor, use_int8_gemm: bool | None = None
) -> torch.Tensor:
    """``sum_k c_k w_k``: int8 carriers ``[N, K]`` times int8 weights ``[K, out]``, as int32.

    Which GEMM computes it is a question of speed only; the integers are the same:

    - ``torch._int_mm`` (``use_int8_gemm=True``; the default where oneDNN has a fast int8
      kernel, AVX-512 VNNI or AMX). One guard: oneDNN reads each operand from its pointer
      and strides as a row-major or column-major matrix, and PyTorch hands it legal tensors
      that are neither: a dimension of size 1 may have any stride (``weight.t()`` of a layer
      with one input is ``[1, out]`` with strides (1, 1); ``torch.compile`` makes ``[1, K]``
      rows with stride (1, 1)), ``expand`` gives stride 0,
      ``as_strided`` overlapping rows. oneDNN misreads them (torch 2.14.1), so every operand
      without a :func:`has_gemm_layout` is copied first; the usual ones are not.
    - an exact float GEMM of the same integers (``use_int8_gemm=False``; the default
      elsewhere, where ``_int_mm`` is a scalar loop): float32 while ``K <= 1024``, float64
      beyond (:func:`exact_float_dtype`).

    It is :func:`gemm_weight` then :func:`gemm_product`: the fast path does the first once,
    when it folds its constants, and the second on every call.
    """
    return gemm_product(carriers, gemm_weight(weight_t, use_int8_gemm)).to(torch.int32)


def gemm_product(carriers: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Carriers ``[N, K]`` times a weight made by :func:`gemm_weight`. An integer weight:
    ``torch._int_mm`` (int32 sums; it refuses what is not int8; carriers without a
    :func:`has_gemm_layout` copied first). A float weight: ``torch.mm`` of the carriers'
    values (int8, or floats holding those integers) in its type, whose sums are exact
    integers (:func:`exact_float_dtype`), returned in that type: the fast path goes on in
    float. (``.to(dtype=...)``: 1.8 us a call at batch 1 against 2.3 us for ``.to(dtype)``,
    on an Intel Xeon with torch 2.14.1.)"""
    if not weight.is_floating_point():
        return torch._int_mm(with_gemm_layout(carriers), weight)
    return torch.mm(carriers.to(dtype=weight.dtype), weight)


def int8_channelwise_dot(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``acc[m, c] = sum_k rows[m, c, k] w[c, k]``: one short dot product per channel, int32.

    This is a depthwise convolution's product: each output channel sees only its own input
    channel, so the filters do not form one ``[K, out]`` matrix and there is no single GEMM.
    ``rows`` are int8 carriers ``[M, C, kh kw]``, ``weight`` int8 ``[C, kh kw]``. The
    products are widened to int32 first (an int8 product would wrap) and summed exactly.
    """
    return (rows.to(torch.int32) * weight.to(torch.int32)).sum(dim=2, dtype=torch.int32)
