"""Parity of ptqlib's INT8 model with PyTorch's eager-mode PTQ (torch.ao.quantization).

Both sides use matching observers on the same calibration images: MinMax, uint8 affine
for activations; per-channel MinMax, int8 symmetric for weights.

On the x86 engine the activations use 7 bits (``reduce_range=True``, 0..127), as torch's
default x86 QConfig does: FBGEMM's AVX2 kernels add pairs of uint8 x int8 products in
int16 with saturation (``vpmaddubsw``), and 2 x 255 x 127 overflows int16 while
2 x 127 x 128 does not. With full 8-bit activations FBGEMM's results are not the exact
integer sums, so they cannot agree with any exact implementation. QNNPACK (the ARM
engine, also built into x86 wheels) accumulates in int32 and agrees at full range.

What remains: FBGEMM requantizes in float32 with a float bias (rare 1-step differences),
and torch's kernels clamp outputs at 0..255 where ptqlib clamps at the observer's range
(0..127 with reduce_range), which shows on test digits beyond the calibrated range.
"""

import warnings

import pytest
import torch

from ptqlib.calibration import calibrate
from ptqlib.data import calibration_images
from ptqlib.evaluation import agreement
from ptqlib.int8_layers import Int8Linear
from ptqlib.int8_model import convert
from ptqlib.reference.torch_eager import (
    default_quantized_engine,
    eager_fusion_groups,
    torch_eager_ptq,
    torch_linear_weights,
    torch_quantized_logits,
)
from ptqlib.training import load_or_train_baseline

CALIBRATION_IMAGES = 1000


@pytest.fixture(scope="module")
def baseline(offline_data):
    model, _ = load_or_train_baseline(offline_data, progress=False)
    return model


@pytest.fixture(scope="module")
def images(offline_data):
    return calibration_images(offline_data.train, CALIBRATION_IMAGES)


def both_sides(baseline, images, engine, reduce_range, per_channel=True):
    """ptqlib's and torch.ao's INT8 models, calibrated the same way."""
    calibration = calibrate(
        baseline,
        images,
        activation_observer="minmax",
        weight_observer="per_channel_minmax" if per_channel else "minmax",
        activation_kwargs={"reduce_range": reduce_range},
        progress=False,
    )
    ours = convert(baseline, calibration.qparams, per_channel=per_channel)
    theirs = torch_eager_ptq(
        baseline, images, reduce_range=reduce_range, per_channel=per_channel, engine=engine
    )
    return ours, theirs


def parity(ours, theirs, test_images):
    our_logits = ours.quantized_logits(test_images).long()
    their_logits, scale, zero_point = torch_quantized_logits(theirs, test_images)
    # same qparams for the logits, so the integers are directly comparable
    assert scale == float(ours.output_qparams.scale)
    assert zero_point == int(ours.output_qparams.zero_point)
    difference = (our_logits - their_logits.long()).abs()
    within_one = float((difference <= 1).float().mean())
    exact = float((difference == 0).float().mean())
    top1 = agreement(our_logits.argmax(dim=1), their_logits.argmax(dim=1))
    return within_one, exact, top1


@pytest.fixture(scope="module")
def engine_pair(baseline, images):
    engine = default_quantized_engine()
    reduce_range = engine == "x86"  # see the module docstring
    return both_sides(baseline, images, engine, reduce_range)


def test_weights_equal_torch_int_repr_exactly(engine_pair):
    ours, theirs = engine_pair
    reference = torch_linear_weights(theirs)
    linears = [layer for layer in ours.layers if isinstance(layer, Int8Linear)]
    assert [layer.name for layer in linears] == list(reference) == ["fc1", "fc2", "fc3"]
    for layer in linears:
        assert torch.equal(layer.weight, reference[layer.name]["weight"])
        assert torch.equal(layer.weight_scale, reference[layer.name]["scale"])
        assert not reference[layer.name]["zero_point"].any()


def test_input_qparams_equal_the_quant_stub(engine_pair):
    ours, theirs = engine_pair
    assert float(theirs.quant.scale) == float(ours.input_qparams.scale)
    assert int(theirs.quant.zero_point) == int(ours.input_qparams.zero_point)


def test_logits_agree_with_the_engine(engine_pair, offline_data):
    ours, theirs = engine_pair
    within_one, exact, top1 = parity(ours, theirs, offline_data.test.images)
    assert within_one >= 0.999
    assert top1 >= 0.999
    assert exact >= 0.99


def test_qnnpack_at_full_range_agrees_too(baseline, images, offline_data):
    if "qnnpack" not in torch.backends.quantized.supported_engines:
        pytest.skip("this PyTorch build has no QNNPACK")
    before = torch.backends.quantized.engine
    try:
        ours, theirs = both_sides(baseline, images, "qnnpack", reduce_range=False)
        within_one, exact, top1 = parity(ours, theirs, offline_data.test.images)
    finally:
        torch.backends.quantized.engine = before
    assert within_one >= 0.999 and top1 >= 0.999 and exact >= 0.99


def test_per_tensor_weights_agree(baseline, images):
    engine = default_quantized_engine()
    ours, theirs = both_sides(baseline, images, engine, engine == "x86", per_channel=False)
    reference = torch_linear_weights(theirs)
    for layer in ours.layers:
        if isinstance(layer, Int8Linear):
            assert reference[layer.name]["scale"].dim() == 0
            assert torch.equal(layer.weight, reference[layer.name]["weight"])


def test_eager_ptq_fuses_linear_relu_and_leaves_the_model_alone(baseline, images):
    before = {name: tensor.clone() for name, tensor in baseline.state_dict().items()}
    quantized = torch_eager_ptq(baseline, images[:100])
    assert eager_fusion_groups(baseline) == [["fc1", "relu1"], ["fc2", "relu2"]]
    assert type(quantized.body.fc1).__name__ == "LinearReLU"
    assert type(quantized.body.relu1).__name__ == "Identity"
    for name, tensor in baseline.state_dict().items():
        assert torch.equal(tensor, before[name])


def test_no_deprecation_warning_escapes(baseline, images):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantized = torch_eager_ptq(baseline, images[:100])
        torch_quantized_logits(quantized, images[:10])
        torch_linear_weights(quantized)
    assert not [w for w in caught if issubclass(w.category, DeprecationWarning)]


def test_unknown_engine_is_a_clear_error(baseline, images):
    with pytest.raises(ValueError, match="engine"):
        torch_eager_ptq(baseline, images[:10], engine="tpu")


def test_eager_ptq_restores_the_quantized_engine(baseline, images):
    engines = torch.backends.quantized.supported_engines
    other = "qnnpack" if "qnnpack" in engines else None
    if other is None:
        pytest.skip("only one quantized engine in this torch build")
    before = torch.backends.quantized.engine
    model = torch_eager_ptq(baseline, images[:100], engine=other)
    assert torch.backends.quantized.engine == before
    logits, _, _ = torch_quantized_logits(model, images[:4])  # runs on its own engine
    assert torch.backends.quantized.engine == before and logits.shape == (4, 10)
