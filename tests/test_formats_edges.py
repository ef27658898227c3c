"""Adversarial inputs for ptqlib.formats: tensors near the ends of FP32's range, shapes with
no axis to block, and weights whose group scale FP16 cannot hold. Each either gives finite
values that are within the format's error or an InputError that names the problem."""

import pytest
import torch

from ptqlib.formats.schemes import SCHEMES

# Tiny tensors: amax / 448 and amax / (6 * 448) underflow FP32, and 1 / that overflows it.
TINY_AMAXES = (1e-45, 1e-42, 1e-38, 1e-33)


@pytest.mark.parametrize("amax", TINY_AMAXES)
@pytest.mark.parametrize("name", ["fp8-e4m3", "fp8-e5m2", "nvfp4"])
def test_a_tiny_tensor_quantizes_to_finite_values(name, amax):
    x = torch.zeros(2, 32)
    x[0, 0], x[0, 1] = amax, -amax / 3  # the second row is all zero: a zero block
    rounded = SCHEMES[name].fake_quantize(x)
    assert bool(torch.isfinite(rounded).all())
    assert float((rounded - x).abs().max()) <= float(x.abs().max())  # at worst 0
