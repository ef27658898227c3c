"""The fast path computes exactly the teaching path's integers, on both accumulator paths."""

import pytest
import torch

import ptqlib.fast.profiling as profiling
from ptqlib.calibration import calibrate
from ptqlib.data import calibration_images, normalise
from ptqlib.fast import FastInt8Model
from ptqlib.int8_gemm import exact_float_dtype, int8_matmul
from ptqlib.int8_model import PIXEL_QPARAMS, convert
from ptqlib.models import fold_input_normalization
from ptqlib.training import load_or_train_baseline

BATCH_SIZES = (1, 2, 63, 64, 1000, 1024)
GEMMS = pytest.mark.parametrize("use_int8_gemm", [True, False], ids=["int8_gemm", "float_gemm"])


@pytest.fixture(scope="module")
def baseline(offline_data):
    return load_or_train_baseline(offline_data, progress=False)[0]


@pytest.fixture(scope="module")
def models(baseline, offline_data):
    """Teaching-path models: float input with uint8 or int8 activations, per channel or per
    tensor, and the raw-pixel model."""
    images = calibration_images(offline_data.train, 300)
    uint8 = calibrate(baseline, images, "histogram", progress=False).qparams
    int8 = calibrate(
        baseline, images, "minmax", activation_kwargs={"dtype": torch.int8}, progress=False
    ).qparams
    folded = fold_input_normalization(baseline)
    pixel_values = torch.round((images * 0.3081 + 0.1307) * 255)
    pixel_qparams = calibrate(folded, pixel_values, "histogram", progress=False).qparams
    return {
        "uint8": convert(baseline, uint8),
        "int8": convert(baseline, int8),
        "per_tensor": convert(baseline, uint8, per_channel=False),
        "pixels": convert(folded, pixel_qparams, pixel_input=True),
    }


def batch_of(offline_data, size: int) -> torch.Tensor:
    pixels = offline_data.test.pixels()
    return pixels.repeat(2, 1, 1, 1)[:size] if size > len(pixels) else pixels[:size]


@GEMMS
@pytest.mark.parametrize("name", ["uint8", "int8", "per_tensor", "pixels"])
def test_fast_path_equals_teaching_path_bit_for_bit(models, offline_data, name, use_int8_gemm):
    teaching = models[name]
    fast = FastInt8Model(teaching, use_int8_gemm=use_int8_gemm)
    for size in BATCH_SIZES:
        pixels = batch_of(offline_data, size)
        images = pixels if teaching.takes_pixels else normalise(pixels[:, 0])
        expected = teaching.quantized_logits(images)
        assert torch.equal(fast.quantized_logits(images), expected), size
        assert torch.equal(fast.predict(images), teaching(images).argmax(dim=1)), size
        assert torch.equal(fast(images), teaching(images)), size


def test_the_pixel_model_reads_bytes(models, offline_data):
    model = models["pixels"]
    assert model.takes_pixels and model.input_qparams == PIXEL_QPARAMS
    fast = FastInt8Model(model)
    pixels = offline_data.test.pixels()[:5]
    carriers = fast.quantize_input(pixels)
    assert carriers.dtype == torch.int8
    assert torch.equal(carriers.long() + 128, pixels.long())  # p XOR 0x80 = p - 128


def test_folded_normalisation_equals_the_original_in_float(baseline, offline_data):
    folded = fold_input_normalization(baseline)
    split = offline_data.test
    assert torch.equal(normalise(split.pixels()[:, 0]), split.images)  # pixels recovered exactly
    with torch.no_grad():
        original, refolded = baseline(split.images), folded(split.pixel_values().images)
    assert (original - refolded).abs().max() < 1e-4  # float32 rounding of W' and b'
    assert torch.equal(original.argmax(1), refolded.argmax(1))


def test_float32_gemm_sums_int8_products_exactly_at_the_bound():
    """K = 1024 products of (-128)(-128) sum to 2^24, the largest exactly representable
    bound: float32 and _int_mm agree; random inputs of every size up to that agree too."""
    carriers = torch.full((3, 1024), -128, dtype=torch.int8)
    weight = torch.full((1024, 5), -128, dtype=torch.int8)
    exact = torch._int_mm(carriers, weight)
    assert int(exact.max()) == 2**24
    assert torch.equal(torch.mm(carriers.float(), weight.float()).long(), exact.long())
    assert exact_float_dtype(1024) == torch.float32 and exact_float_dtype(1025) == torch.float64
    assert torch.equal(int8_matmul(carriers, weight, use_int8_gemm=False), exact)
    generator = torch.Generator().manual_seed(0)
    for inputs in (1, 17, 784, 1024):
        x = torch.randint(-128, 128, (33, inputs), dtype=torch.int8, generator=generator)
        w = torch.randint(-128, 128, (inputs, 40), dtype=torch.int8, generator=generator)
        x[0], w[:, 0] = 127, -128  # an extreme row and column
        assert torch.equal(torch.mm(x.float(), w.float()).long(), torch._int_mm(x, w).long())


def test_too_many_inputs_for_float32_sums_use_float64(offline_data):
    """1100 inputs of weight 127: sums beyond 2^24, where float32 would round. The float
    branch of int8_matmul then sums in float64, still exactly."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1100, 3))
    torch.nn.init.constant_(model[1].weight, 1.0)  # every weight quantizes to 127
    images = torch.rand(50, 1100)
    int8_model = convert(model, calibrate(model, images, "minmax", progress=False))
    for use_int8_gemm in (True, False):
        fast = FastInt8Model(int8_model, use_int8_gemm=use_int8_gemm)
        assert torch.equal(fast.quantized_logits(images), int8_model.quantized_logits(images))
    assert FastInt8Model(int8_model, use_int8_gemm=False).accumulator == "float64 GEMM (exact)"


def test_int64_requantization_where_float64_would_round():
    """1,024 inputs with large weights: 128 sum|q_w| M0 > 2^53, so the first layer keeps int64
    (and the float32 GEMM, > 2^24, is refused); the integers still equal the teaching path."""
    generator = torch.Generator().manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(1024, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)
    )
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.0, generator=generator)
    images = torch.randn(200, 1024, generator=generator)
    teaching = convert(model, calibrate(model, images, "minmax", progress=False))
    fast = FastInt8Model(teaching, use_int8_gemm=True)
    folded = [fast.folded(step) for step in teaching.integer_layers()]
    assert [layer.multiplier.dtype for layer in folded] == [torch.int64, torch.float64]
    for size in (1, 2, 63, 200):
        assert torch.equal(
            fast.quantized_logits(images[:size]), teaching.quantized_logits(images[:size])
        )


def test_gemm_speedup_is_fp32_time_over_int8_time(monkeypatch):
    """The bound bench prints: above 1 when the int8 GEMM path is the faster one."""
    called = {}

    def fake_timing(functions, threads, repeats):
        for name, function in functions.items():
            called[name] = function()  # each runs once: the real GEMMs, on small tensors
        return {"fp32": [4.0, 5.0, 6.0], "int8": [1.0, 2.0, 9.0]}

    monkeypatch.setattr(profiling, "time_interleaved", fake_timing)
    assert profiling.gemm_speedup(batch_size=3, depth=5, outputs=2) == 5.0 / 2.0
    assert called["fp32"].shape == called["int8"].shape == (3, 2)
