"""MX and NVFP4 bit for bit against torchao 0.18's references (``to_mx`` with its default
FLOOR scale, ``nvfp4_quantize`` with a per-tensor scale), on random and adversarial blocks,
and the two places where torchao departs from the specification."""

import pytest
import torch
from torchao.prototype.mx_formats.config import ScaleCalculationMode
from torchao.prototype.mx_formats.kernels import pack_uint4, unpack_uint4
from torchao.prototype.mx_formats.mx_tensor import to_mx
from torchao.prototype.mx_formats.nvfp4_tensor import (
    NVFP4Tensor,
    nvfp4_quantize,
    per_tensor_amax_to_scale,
)

from ptqlib.formats.microscaling import quantize_mx
from ptqlib.formats.minifloat import E2M1, E2M3, E3M2, E4M3, E5M2
from ptqlib.formats.nvfp4 import quantize_nvfp4
from ptqlib.packing import pack

TORCHAO_ELEMENTS = {
    "e4m3": torch.float8_e4m3fn,
    "e5m2": torch.float8_e5m2,
    "e2m3": "fp6_e2m3",
    "e3m2": "fp6_e3m2",
    "e2m1": torch.float4_e2m1fn_x2,
}


def torchao_mx(x, fmt):
    """torchao's (scale codes, element codes), the element codes unpacked."""
    scales, elements = to_mx(x, TORCHAO_ELEMENTS[fmt.name], 32)
    if fmt is E2M1:
        codes = unpack_uint4(elements.view(torch.uint8))
    elif fmt in (E2M3, E3M2):
        codes = elements
    else:
        codes = elements.view(torch.uint8)
    return scales.view(torch.uint8), codes


def adversarial_mx_blocks() -> torch.Tensor:
    """Rows of 32 (one block each), plus random rows of several magnitudes."""
    generator = torch.Generator().manual_seed(31)
    rows = [
        torch.zeros(32),  # all zero: the smallest scale, 2^-127
        torch.full((32,), -0.0),  # negative zero keeps its sign bit
        torch.cat([torch.tensor([1e4]), torch.randn(31, generator=generator)]),  # one outlier
        torch.linspace(-3.5, 3.5, 32),  # amax 3.5: E2M1's block max lands on 7 and saturates
        torch.linspace(-4.0, 4.0, 32),  # amax a power of two: exactly on a binade
        torch.linspace(-6.0, 6.0, 32),  # amax 6 = E2M1's largest value
        torch.full((32,), 3.0e38),  # near FP32's largest
    ]
    scales = 10.0 ** torch.arange(-4, 5, dtype=torch.float32)
    random_rows = torch.randn(len(scales), 32, generator=generator) * scales[:, None]
    return torch.cat([torch.stack(rows), random_rows])


@pytest.mark.parametrize("fmt", [E4M3, E5M2, E2M3, E3M2, E2M1], ids=lambda f: f.name)
def test_mx_matches_torchao_floor_mode_bit_for_bit(fmt):
    assert to_mx.__defaults__[0] == ScaleCalculationMode.FLOOR  # the specification's rule
    x = adversarial_mx_blocks()
    mine = quantize_mx(x, fmt)
    scales, codes = torchao_mx(x, fmt)
    assert torch.equal(mine.scale_codes, scales)
    assert torch.equal(mine.element_codes, codes)


def test_mxfp4_packs_two_codes_per_byte_as_torchao_does():
    x = adversarial_mx_blocks()
    codes = quantize_mx(x, E2M1).element_codes
    _, torchao_packed = to_mx(x, torch.float4_e2m1fn_x2, 32)
    assert torch.equal(pack(codes, 4, 0), torchao_packed.view(torch.uint8).reshape(-1))
    assert torch.equal(pack_uint4(codes).reshape(-1), torchao_packed.view(torch.uint8).reshape(-1))


def test_mx_scale_follows_section_6_3():
    # amax 3.5 = 1.75 * 2^1: X = 2^(1 - 2) for E2M1, so 3.5 / X = 7 saturates to 6.
    mx = quantize_mx(torch.linspace(-3.5, 3.5, 32)[None], E2M1)
    assert int(mx.scale_codes) == 127 - 1
    assert mx.dequantize().abs().max() == 3.0
    # amax 448 * 2^-3: E4M3 holds 448 exactly, X = 2^(8 - 3 - 8).
    block = torch.zeros(1, 32)
    block[0, 5] = 56.0
    assert int(quantize_mx(block, E4M3).scale_codes) == 127 - 3
    assert torch.equal(quantize_mx(block, E4M3).dequantize(), block)


def test_torchao_halves_blocks_whose_scale_is_two_to_the_minus_127():
    # amax 2^-120 with E4M3: shared exponent -120 - 8 = -128, clamped to -127 (code 0); the
    # second row is the smallest normal FP32 number, 2^-126, everywhere.
    block = torch.zeros(2, 32)
    block[0, :2] = torch.tensor([2.0**-120, -(2.0**-122)])
    block[1] = 2.0**-126
    mine = quantize_mx(block, E4M3)
    scales, codes = torchao_mx(block, E4M3)
    assert mine.scale_codes.tolist() == scales.tolist() == [[0], [0]]
    assert torch.equal(mine.dequantize(), block)  # the specification's rule: exact
    torchao_values = codes.view(torch.float8_e4m3fn).float() * 2.0**-127
    assert torch.equal(torchao_values, block / 2)  # torchao divided by 2^-126 instead


def torchao_nvfp4(x):
    tensor_scale = per_tensor_amax_to_scale(x.abs().max())
    block_scales, packed = nvfp4_quantize(x, 16, tensor_scale)
    values = NVFP4Tensor.to_nvfp4(x, per_tensor_scale=tensor_scale).dequantize(torch.float32)
    return block_scales.view(torch.uint8), unpack_uint4(packed), tensor_scale, values


def adversarial_nvfp4_rows() -> torch.Tensor:
    """Rows of 64 (four blocks of 16) with the cases the format is sensitive to."""
    generator = torch.Generator().manual_seed(16)
    grid = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    midpoints = (grid[1:] + grid[:-1]) / 2  # ties between E2M1 neighbours
    rows = torch.randn(6, 64, generator=generator)
    rows[0, :16] = 0.0  # an all-zero block
    rows[1, 16:32] = -0.0  # a block of negative zeros
    rows[2, 32:48] = torch.cat([midpoints, -midpoints, torch.tensor([6.0, -6.0])])
    rows[3, :16] = torch.linspace(-448 * 6, 448 * 6, 16) / 1000  # amax exactly representable
    rows[4, 0] = 2688.0  # the tensor's amax: tensor scale 1.0, so the midpoints stay exact
    rows[5, 48:] = 1e-4 * torch.randn(16, generator=generator)  # a block far below the outlier
    return rows


def test_nvfp4_matches_torchao_bit_for_bit_with_its_block_scale_clamp():
    x = adversarial_nvfp4_rows()
    mine = quantize_nvfp4(x, smallest_block_scale=2.0**-6)
    block_scales, codes, tensor_scale, values = torchao_nvfp4(x)
    assert torch.equal(mine.tensor_scale, tensor_scale)
    assert torch.equal(mine.block_scale_codes, block_scales.reshape(mine.block_scale_codes.shape))
    assert torch.equal(mine.element_codes, codes)
    assert torch.equal(mine.dequantize(), values)
    assert mine.element_codes[1, 16:32].tolist() == [0x8] * 16  # -0.0 keeps its sign


def test_nvfp4_ties_round_to_even():
    x = adversarial_nvfp4_rows()
    mine = quantize_nvfp4(x)
    assert float(mine.tensor_scale) == 1.0 and int(mine.block_scale_codes[2, 2]) == 0x38  # 1.0
    ties = mine.dequantize()[2, 32:39].tolist()
    assert ties == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]  # 0.25->0, 0.75->1, 1.25->1, 1.75->2, ...


def test_nvfp4_uses_subnormal_block_scales_where_torchao_does_not():
    # Tensor amax 2688 = 6 * 448: the tensor scale is 1.0. The second block is E2M1's grid
    # times 2^-8, whose ideal block scale 2^-8 is an E4M3 subnormal (code 2).
    grid = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    x = torch.zeros(1, 32)
    x[0, 0] = 2688.0
    x[0, 16:] = torch.cat([grid, -grid]) * 2.0**-8
    mine, torchao_like = quantize_nvfp4(x), quantize_nvfp4(x, smallest_block_scale=2.0**-6)
    block_scales, _, _, values = torchao_nvfp4(x)
    assert torch.equal(torchao_like.block_scale_codes, block_scales.reshape(1, 2))
    assert mine.block_scale_codes[0].tolist() == [0x7E, 0x02]  # 448 and 2^-8
    assert torchao_like.block_scale_codes[0].tolist() == [0x7E, 0x08]  # 448 and 2^-6
    assert torch.equal(mine.dequantize(), x)  # exact
    # With the scale 2^-6 the block is grid / 4 in E2M1 units: 0.25 (1.0 * 2^-8) is a tie
    # between 0 and 0.5 and goes to 0, so torchao's values are off by up to 2^-8.
    assert (values - x)[0, 16:].abs().max() == 2.0**-8
