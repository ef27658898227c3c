"""Adversarial inputs for ptqlib.formats: tensors near the ends of FP32's range, shapes with
no axis to block, and weights whose group scale FP16 cannot hold. Each either gives finite
values that are within the format's error or an InputError that names the problem."""

import pytest
import torch

from ptqlib.errors import InputError
from ptqlib.formats.codebook import kmeans_codebook, nearest_centroid
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


@pytest.mark.parametrize("name", ["int4-g32", "int4-g128"])
def test_a_group_whose_scale_fp16_cannot_hold_is_refused(name):
    x = torch.tensor([[1.0, -2.0, 5e5, 3.0]])  # 5e5 / 7 is beyond FP16's largest, 65504
    with pytest.raises(InputError, match="65504"):
        SCHEMES[name].quantize(x)
    assert torch.equal(SCHEMES[name].fake_quantize(x / 10).isfinite(), torch.ones(1, 4).bool())


def test_kmeans_assigns_values_near_fp32s_largest_to_their_own_centroids():
    # Two centroids above 1.7e38: their float32 sum overflows, and the midpoint must not.
    x = torch.tensor([[3.0e38, -1.0e38, 0.0, 1.0]])
    assert torch.equal(kmeans_codebook(x, entries=16).dequantize()[0, :2], x[0, :2])


def test_nearest_centroid_compares_with_the_exact_midpoint():
    # (a + b) / 2 is 1.5 + 3 * 2^-24, which float32 rounds up to 1.5 + 2^-22: a value there
    # is nearer to b, and a float32 midpoint would send it to a.
    centroids = torch.tensor([1 + 2.0**-23, 2 + 2.0**-22])
    values = torch.tensor([1.5 + 2.0**-23, 1.5 + 2.0**-22])
    assert nearest_centroid(values, centroids).tolist() == [0, 1]


@pytest.mark.parametrize("name", list(SCHEMES))
def test_a_0d_tensor_is_a_one_element_vector_or_an_input_error(name):
    try:
        rounded = SCHEMES[name].fake_quantize(torch.tensor(1.5))
    except InputError as error:
        assert "0-d" in str(error)
    else:
        assert rounded.shape == () and float(rounded) == 1.5
