"""Why ONNX Runtime's U8S8 integers can differ from the exact sum on x86 CPUs without VNNI.

ONNX Runtime's CPU kernels (its MLAS library) multiply uint8 activations by int8 weights
("U8S8") with the best instruction the CPU has:

- **AVX-VNNI, AVX-512 VNNI** (``vpdpbusd``) and **AMX** (``tdpbusd``): four (VNNI) or 64
  (AMX, per tile row and column) uint8 x int8 products summed straight into int32. Exact.
- **AVX2, AVX-512 without VNNI** (and SSE4.1): ``vpmaddubsw`` multiplies uint8 by int8 and
  adds each pair of *adjacent* products into an int16, **saturating**; ``vpmaddwd`` by ones
  then adds pairs of those into int32. Per output, with K inputs::

      acc = sum_i sat16(q_x,2i q_w,2i + q_x,2i+1 q_w,2i+1) - Z_x sum_k q_w,k + q_b

  where ``sat16(v) = clamp(v, -32768, 32767)`` (the zero-point term is added separately,
  exactly, from the weights' sums). A pair can reach 2 * 255 * 127 = 64,770: where two large
  activations meet two large weights of the same sign, the sum is clamped and ``acc`` is
  not the exact ``sum_k (q_x,k - Z_x) q_w,k + q_b``.

ONNX Runtime documents this ("Quantize ONNX models", *When and why do I need to try U8U8?*):
generally not a big issue, but if accuracy drops, use ``reduce_range`` (7-bit weights:
2 * 255 * 64 fits) or the U8U8 format, which "doesn't have saturation issues"; there is no
such issue with VNNI or on ARM. Its session option ``session.x64quantprecision`` rewrites
int8 weights to uint8 at load time on the affected CPUs. ptqlib's export writes uint8
weights itself (``ptqlib.deploy.onnx_export``), so the file is exact in a default session.

:func:`u8s8_integers` computes every quantized tensor of an INT8 model the way the AVX2 kernel
does; on such a CPU ORT's integers for an int8-weight export equal them bit for bit (notebook
08 shows it), which is how the cause is confirmed rather than guessed.
"""

from __future__ import annotations

import platform

import torch

from ptqlib.errors import InputError
from ptqlib.hardware import int8_instructions
from ptqlib.int8_gemm import from_carrier
from ptqlib.int8_layers import Int8Linear
from ptqlib.int8_model import Int8Model
from ptqlib.integer_arithmetic import zero_point_correction

INT16_MIN, INT16_MAX = -(2**15), 2**15 - 1
X86_MACHINES = {"x86_64", "amd64", "i386", "i686", "x86"}
# Images per chunk when the pair sums [images, out, K/2] are materialised.
CHUNK = 64


def ort_u8s8_saturates() -> bool:
    """Whether ONNX Runtime's U8S8 GEMM on this CPU adds products in saturating int16 pairs:
    an x86 CPU without AVX-VNNI, AVX-512 VNNI and AMX (as torch detects them). MLAS makes the
    same test (``MlasPlatformU8S8Overflow``)."""
    if platform.machine().lower() not in X86_MACHINES:
        return False
    return not any(int8_instructions().values())


def _paired(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The even and odd columns of ``[rows, K]`` (K padded with a zero column if odd)."""
    if matrix.shape[1] % 2:
        matrix = torch.nn.functional.pad(matrix, (0, 1))
    return matrix[:, 0::2], matrix[:, 1::2]


def pair_saturating_products(activations: torch.Tensor, weight: torch.Tensor) -> dict:
    """``sum_i sat16(a_2i w_2i + a_2i+1 w_2i+1)`` for uint8 ``activations [N, K]`` (their raw
    integers 0..255, any integer dtype) and int8 ``weight [out, K]``: what ``vpmaddubsw`` then
    ``vpmaddwd`` sum. Returns ``{"sums": [N, out] int64, "saturated": pairs clamped,
    "pairs": pairs summed}``."""
    if activations.is_floating_point() or weight.dtype != torch.int8:
        raise InputError(
            f"activations, weight: expected integer activations and int8 weights, got "
            f"{activations.dtype} and {weight.dtype}"
        )
    if int(activations.min()) < 0 or int(activations.max()) > 255:
        raise InputError("activations: expected the raw uint8 integers 0..255")
    a_even, a_odd = _paired(activations.to(torch.int32))
    w_even, w_odd = _paired(weight.to(torch.int32))
    sums, saturated = [], 0
    for start in range(0, len(activations), CHUNK):
        rows = slice(start, start + CHUNK)
        pairs = a_even[rows, None, :] * w_even + a_odd[rows, None, :] * w_odd
        clamped = pairs.clamp(INT16_MIN, INT16_MAX)
        saturated += int((clamped != pairs).sum())
        sums.append(clamped.sum(dim=2, dtype=torch.int64))
    total_pairs = len(activations) * len(weight) * a_even.shape[1]
    return {"sums": torch.cat(sums), "saturated": saturated, "pairs": total_pairs}


def _linears(model: Int8Model) -> list[torch.nn.Module]:
    if not isinstance(model, Int8Model):
        raise TypeError(f"model: expected an Int8Model, got {type(model).__name__}")
    for layer in model.layers:
        if not isinstance(layer, (torch.nn.Flatten, Int8Linear)):
            raise InputError(f"model: the U8S8 emulation takes Linear layers only, not {layer}")
    return [layer for layer in model.layers if isinstance(layer, Int8Linear)]


@torch.no_grad()
def u8s8_integers(model: Int8Model, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every quantized tensor of ``model`` on ``images`` (named as ORT names them:
    ``input_quantized``, ``<layer>_quantized``, int64 values of their own dtype) computed
    with the saturating accumulator of the module docstring, then ``model``'s own
    requantization. ``model``'s activations must be uint8 (the U8 of U8S8)."""
    linears = _linears(model)
    carriers = model.quantize_input(images).flatten(1)
    integers = {"input_quantized": from_carrier(carriers, model.input_qparams.dtype).long()}
    for layer in linears:
        if layer.input_dtype != torch.uint8:
            raise InputError(f"layer {layer.name!r}: U8S8 needs uint8 activations")
        activations = from_carrier(carriers, torch.uint8)
        sums = pair_saturating_products(activations, layer.weight)["sums"]
        correction = zero_point_correction(layer.weight, int(layer.input_zero_point))
        accumulator = sums + correction.long() + layer.bias.long()
        carriers = layer.requantize(accumulator.to(torch.int32))
        integers[f"{layer.name}_quantized"] = from_carrier(carriers, layer.output_dtype).long()
    return integers


@torch.no_grad()
def saturation_counts(model: Int8Model, images: torch.Tensor) -> list[dict[str, object]]:
    """Per layer, on ``images`` fed through ``model`` exactly (ptqlib's integers): how many
    int16 pair sums the U8S8 kernel would clamp, and how many accumulators it would change.
    A property of the integers, the same on every CPU: it says what a CPU without VNNI does.
    Rows: ``{"layer", "pairs", "saturated", "accumulators", "changed"}``."""
    rows = []
    carriers = model.quantize_input(images).flatten(1)
    for layer in _linears(model):
        activations = from_carrier(carriers, layer.input_dtype).long()
        found = pair_saturating_products(activations, layer.weight)
        # The exact sums, in float64 (exact below 2^53, and far faster than int64 matmul).
        exact = (activations.double() @ layer.weight.double().t()).long()
        rows.append(
            {
                "layer": layer.name,
                "pairs": found["pairs"],
                "saturated": found["saturated"],
                "accumulators": exact.numel(),
                "changed": int((found["sums"] != exact).sum()),
            }
        )
        carriers = layer(carriers)
    return rows
