"""SmallCNN: BatchNorm folding, fused calibration, the integer convolution and max-pool, the
integer-only CNN against its float simulation and against torch.ao's quantized conv."""

import warnings

import pytest
import torch
from test_convert import RecordOps  # one recorder of aten operations for both test files
from torch import nn
from torch.nn import functional

import ptqlib.int8_gemm as int8_gemm
from ptqlib.batchnorm import fold_batchnorm, fold_model, fold_parameters, has_batchnorm
from ptqlib.data import calibration_images
from ptqlib.evaluation import accuracy, agreement
from ptqlib.fake_quant import simulate
from ptqlib.fusion import fusion_groups, quantization_points
from ptqlib.int8_layers import Int8Conv2d, Int8MaxPool2d, patches, rebuilt
from ptqlib.int8_model import convert
from ptqlib.integer_arithmetic import quantize_bias
from ptqlib.models import SmallCNN
from ptqlib.ptq import calibrate_fused, post_training_quantize
from ptqlib.quantization import QParams, dequantize, min_max, qparams_from_range, quantize
from ptqlib.reference.torch_eager import (
    default_quantized_engine,
    torch_eager_ptq,
    torch_quantized_logits,
)
from ptqlib.reference.torch_eager_cnn import torch_cnn_from_int8
from ptqlib.training import CNN_EPOCHS, load_or_train_baseline

# Folding computes W', b' in float64 and stores float32: the folded model differs from the
# unfolded one by float32 rounding only. Logits of size ~10 agree to about 1e-5.
FOLD_TOLERANCE = 1e-4


def random_batchnorm_cnn(seed: int = 0) -> SmallCNN:
    """A SmallCNN in eval mode whose BatchNorms have non-trivial statistics and affine terms."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = SmallCNN()
    for batchnorm in (model.bn1, model.bn2):
        channels = batchnorm.num_features
        batchnorm.running_mean.copy_(torch.randn(channels, generator=generator))
        batchnorm.running_var.copy_(torch.rand(channels, generator=generator) * 3 + 0.05)
        with torch.no_grad():
            batchnorm.weight.copy_(torch.randn(channels, generator=generator))
            batchnorm.bias.copy_(torch.randn(channels, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def cnn(offline_data):
    model, _ = load_or_train_baseline(offline_data, epochs=CNN_EPOCHS, model="cnn", progress=False)
    return model


@pytest.fixture(scope="module")
def images(offline_data):
    return calibration_images(offline_data.train, 500)


# --- BatchNorm folding -------------------------------------------------------------------------


def test_fold_parameters_by_hand():
    weight = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    bias = torch.tensor([1.0, 0.0])
    mean, var = torch.tensor([2.0, -1.0]), torch.tensor([3.0, 0.0])
    gamma, beta = torch.tensor([3.0, 2.0]), torch.tensor([0.5, -0.5])
    # k = gamma / sqrt(var + eps) = [3 / 2, 2 / 1]
    folded_weight, folded_bias = fold_parameters(weight, bias, mean, var, gamma, beta, eps=1.0)
    assert torch.equal(folded_weight, torch.tensor([[1.5, -3.0], [1.0, 8.0]]))
    # b' = (b - mu) k + beta = [(1 - 2) 1.5 + 0.5, (0 + 1) 2 - 0.5]
    assert torch.equal(folded_bias, torch.tensor([-1.0, 1.5]))
    _, folded_bias = fold_parameters(weight, None, mean, var, gamma, beta, eps=1.0)
    assert torch.equal(folded_bias, torch.tensor([-2.5, 1.5]))  # no bias: b = 0


def test_folded_cnn_equals_the_unfolded_one_in_eval_mode():
    model = random_batchnorm_cnn()
    folded = fold_model(model)
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        difference = (folded(x) - model(x)).abs().max().item()
        magnitude = model(x).abs().max().item()
    assert difference <= FOLD_TOLERANCE and magnitude > 0.1
    assert [name for name, _ in folded.named_children()] == [
        "conv1",
        "relu1",
        "pool1",
        "conv2",
        "relu2",
        "pool2",
        "flatten",
        "fc",
    ]
    assert not has_batchnorm(folded) and has_batchnorm(model)
    assert folded.conv1.bias is not None and model.conv1.bias is None  # folding creates a bias


def test_folding_leaves_the_model_alone():
    model = random_batchnorm_cnn()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    fold_model(model)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_fold_linear_with_bias_and_batchnorm1d():
    torch.manual_seed(0)
    linear, batchnorm = nn.Linear(5, 3), nn.BatchNorm1d(3)
    batchnorm.running_mean.uniform_(-1, 1)
    batchnorm.running_var.uniform_(0.5, 2)
    batchnorm.eval()
    x = torch.randn(7, 5)
    with torch.no_grad():
        assert torch.allclose(fold_batchnorm(linear, batchnorm)(x), batchnorm(linear(x)), atol=1e-6)


def test_batchnorm_in_training_mode_is_refused():
    model = random_batchnorm_cnn().train()
    with pytest.raises(ValueError, match="training mode.*eval"):
        fold_model(model)


@pytest.mark.parametrize(
    "layers, message",
    [
        ([("relu", nn.ReLU()), ("bn", nn.BatchNorm2d(4))], "follows 'relu' \\(ReLU\\)"),
        ([("bn", nn.BatchNorm2d(1))], "is the first layer"),
    ],
)
def test_batchnorm_not_after_a_conv_is_refused(layers, message):
    from collections import OrderedDict

    model = nn.Sequential(OrderedDict(layers)).eval()
    with pytest.raises(ValueError, match=message):
        fold_model(model)


def test_batchnorm_of_the_wrong_width_is_refused():
    with pytest.raises(ValueError, match="8 channels, but the layer before it has 4"):
        fold_batchnorm(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(8).eval())


# --- fusion before calibration -----------------------------------------------------------------


def test_fusion_groups_and_quantization_points():
    model = SmallCNN()
    assert fusion_groups(model) == [["conv1", "bn1", "relu1"], ["conv2", "bn2", "relu2"], ["fc"]]
    assert quantization_points(fold_model(model.eval())) == ["input", "relu1", "relu2", "fc"]


def test_calibrate_fused_observes_only_quantization_points(cnn, images):
    folded, calibration = calibrate_fused(cnn, images, "minmax", progress=False)
    assert list(calibration.qparams) == [
        "input",
        "relu1",
        "relu2",
        "fc",
        "conv1.weight",
        "conv2.weight",
        "fc.weight",
    ]
    assert calibration.qparams["conv1.weight"].scale.shape == (16,)
    # the weight observer saw the folded weights W', not W
    low, high = min_max(folded.conv2.weight.detach(), axis=0)
    expected = qparams_from_range(low, high, torch.int8, symmetric=True, axis=0)
    assert torch.equal(calibration.qparams["conv2.weight"].scale, expected.scale)


# --- the integer convolution -------------------------------------------------------------------


def test_patches_are_im2col():
    x = torch.randn(2, 3, 7, 6, generator=torch.Generator().manual_seed(0))
    rows = patches(x, (3, 2), (2, 1))
    expected = functional.unfold(x, (3, 2), stride=(2, 1)).transpose(1, 2).reshape(-1, 3 * 3 * 2)
    assert torch.equal(rows, expected)


def conv_layer_and_reference(stride, padding, kernel, zero_point, per_channel=True, seed=0):
    """An Int8Conv2d and the same layer written in float: dequantize, F.conv2d (which pads with
    the real 0), requantize."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(5, 3, *kernel, generator=generator) * 0.3
    bias = torch.randn(5, generator=generator)
    low = -0.01 * zero_point
    input_qparams = qparams_from_range(torch.tensor(low), torch.tensor(low + 2.55), torch.uint8)
    assert int(input_qparams.zero_point) == zero_point
    output_qparams = qparams_from_range(torch.tensor(0.0), torch.tensor(4.0), torch.uint8)
    axis = 0 if per_channel else None
    weight_qparams = qparams_from_range(
        *min_max(weight, axis=axis), torch.int8, symmetric=True, axis=axis
    )
    layer = Int8Conv2d(
        weight=quantize(weight, weight_qparams),
        bias=quantize_bias(bias, input_qparams.scale, weight_qparams.scale),
        weight_qparams=weight_qparams,
        input_qparams=input_qparams,
        output_qparams=output_qparams,
        relu=True,
        stride=stride,
        padding=padding,
    )

    def reference(q: torch.Tensor) -> torch.Tensor:
        x = dequantize(q, input_qparams).double()
        w = dequantize(quantize(weight, weight_qparams), weight_qparams).double()
        b = quantize_bias(bias, input_qparams.scale, weight_qparams.scale).double()
        b = b * input_qparams.scale.double() * weight_qparams.scale.double()
        y = torch.relu(functional.conv2d(x, w, b, stride, padding))
        q_y = torch.round(y / output_qparams.scale.double()) + output_qparams.zero_point
        return q_y.clamp(0, 255).long()

    return layer, reference


@pytest.mark.parametrize(
    "stride, padding, kernel",
    [
        (1, 1, (3, 3)),
        (2, 1, (3, 3)),
        (1, 0, (3, 3)),
        (2, 2, (5, 3)),
        ((1, 2), (2, 0), (3, 1)),
    ],
)
@pytest.mark.parametrize("zero_point", [0, 37, 200])
def test_int8_conv_equals_the_float_formula(stride, padding, kernel, zero_point):
    layer, reference = conv_layer_and_reference(stride, padding, kernel, zero_point)
    q = torch.randint(0, 256, (2, 3, 9, 8), generator=torch.Generator().manual_seed(2))
    carriers = (q - 128).to(torch.int8)
    output = layer(carriers).to(torch.int64) + 128
    expected = reference(q)
    assert output.shape == expected.shape  # same output size as torch's conv for stride/padding
    assert int((output - expected).abs().max()) <= 1
    assert float((output == expected).float().mean()) >= 0.99


def test_padding_with_zero_instead_of_the_zero_point_is_wrong():
    """The mistake notebook 07's exercise is about: pad with integer 0 and every border pixel
    gets the real value S_x (0 - Z_x) instead of 0."""
    layer, reference = conv_layer_and_reference(1, 1, (3, 3), zero_point=200)
    q = torch.randint(0, 256, (1, 3, 8, 8), generator=torch.Generator().manual_seed(3))
    carriers = (q - 128).to(torch.int8)
    # The same conv without its own padding, on the input padded with the integer 0 (the
    # uint8 carrier -128) by hand.
    unpadded = rebuilt(layer, padding=(0, 0))
    wrong = unpadded(functional.pad(carriers, (1, 1, 1, 1), value=-128)).to(torch.int64) + 128
    difference = (wrong - reference(q)).abs()
    assert int(difference[..., 1:-1, 1:-1].max()) <= 1  # the interior is unaffected
    assert int(difference.max()) > 10  # the borders are far off


def test_int8_conv_refuses_float_input():
    layer, _ = conv_layer_and_reference(1, 1, (3, 3), zero_point=10)
    with pytest.raises(ValueError, match="int8 carriers"):
        layer(torch.zeros(1, 3, 8, 8))


@pytest.mark.parametrize("kernel, stride", [(2, None), (3, 2), (3, 1), ((2, 3), (1, 2))])
def test_int8_max_pool_commutes_with_dequantize(kernel, stride):
    qparams = QParams(torch.tensor(0.05), torch.tensor(90), 0, 255, torch.uint8)
    q = torch.randint(0, 256, (2, 4, 11, 10), dtype=torch.uint8)
    carriers = (q.to(torch.int16) - 128).to(torch.int8)
    pooled = Int8MaxPool2d(kernel, stride)(carriers).to(torch.int16) + 128
    expected = functional.max_pool2d(dequantize(q, qparams), kernel, stride)
    assert torch.equal(dequantize(pooled.to(torch.uint8), qparams), expected)


# --- the whole CNN -----------------------------------------------------------------------------


def quantize_cnn(model, images, observer, per_channel=True, activation_kwargs=None):
    """``post_training_quantize`` as a triple: the INT8 model, the folded model, the qparams."""
    result = post_training_quantize(
        model,
        images,
        observer=observer,
        per_channel=per_channel,
        activation_kwargs=activation_kwargs,
        progress=False,
    )
    return result.int8_model, result.folded, result.calibration.qparams


@pytest.fixture(scope="module")
def quantized(cnn, images):
    return quantize_cnn(cnn, images, "minmax")


@pytest.mark.parametrize("per_channel", [True, False])
def test_integer_cnn_equals_its_simulation_within_one_lsb(cnn, images, offline_data, per_channel):
    int8_model, folded, qparams = quantize_cnn(cnn, images, "minmax", per_channel)
    test_images = offline_data.test.images
    ours = int8_model.quantized_logits(test_images).long()
    simulated = simulate(folded, qparams, per_channel).quantized_logits(test_images)
    assert int((ours - simulated).abs().max()) <= 1


def test_int8_cnn_accuracy_is_close_to_fp32(cnn, quantized, offline_data):
    int8_model = quantized[0]
    assert accuracy(cnn, offline_data.test) > 0.9
    assert abs(accuracy(int8_model, offline_data.test) - accuracy(cnn, offline_data.test)) < 0.01


def test_integer_cnn_forward_is_integer_only(quantized, offline_data, monkeypatch):
    # With the int8 GEMM; the float GEMM computes the same integers (test_parity_matrix.py).
    monkeypatch.setattr(int8_gemm, "default_uses_int8_gemm", lambda: True)
    int8_model = quantized[0]
    carriers = int8_model.quantize_input(offline_data.test.images[:4])
    with RecordOps() as recorder:
        for layer in int8_model.layers:
            carriers = layer(carriers)
    names = [name for name, _ in recorder.calls]
    assert names.count("_int_mm") == 3  # conv1, conv2, fc
    for name, dtypes in recorder.calls:
        assert not any(dtype.is_floating_point for dtype in dtypes), (name, dtypes)


def test_convert_refuses_an_unfolded_cnn(cnn, quantized):
    with pytest.raises(ValueError, match="BatchNorm"):
        convert(cnn, quantized[2])


def test_convert_refuses_a_missing_point(quantized):
    _, folded, qparams = quantized
    partial = {key: value for key, value in qparams.items() if key != "relu2"}
    with pytest.raises(ValueError, match="'relu2'"):
        convert(folded, partial)


# --- parity with torch.ao ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def parity_pair(cnn, images):
    # 7-bit activations on x86: FBGEMM's AVX2 kernels saturate int16 sums at 8 bits
    reduce_range = default_quantized_engine() == "x86"
    int8_model, folded, _ = quantize_cnn(
        cnn, images, "minmax", activation_kwargs={"reduce_range": reduce_range}
    )
    return int8_model, torch_cnn_from_int8(int8_model, folded)


def test_logits_agree_with_torch_quantized_conv(parity_pair, offline_data):
    ours, theirs = parity_pair
    test_images = offline_data.test.images
    their_logits, scale, zero_point = torch_quantized_logits(theirs, test_images)
    assert scale == float(ours.output_qparams.scale)
    assert zero_point == int(ours.output_qparams.zero_point)
    difference = (ours.quantized_logits(test_images).long() - their_logits.long()).abs()
    assert float((difference <= 1).float().mean()) >= 0.999
    assert agreement(ours(test_images).argmax(1), theirs(test_images).argmax(1)) >= 0.999


def test_torch_eager_ptq_of_the_cnn(cnn, images, offline_data):
    reduce_range = default_quantized_engine() == "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecation warning escapes reference_cnn
        theirs = torch_eager_ptq(cnn, images, reduce_range=reduce_range)
        predictions = theirs(offline_data.test.images).argmax(1)
    assert type(theirs.body.conv1).__name__ == "ConvReLU2d"  # conv + BN + ReLU fused
    assert isinstance(theirs.body.bn1, nn.Identity)
    fp32 = cnn(offline_data.test.images).argmax(1)
    assert agreement(predictions, fp32) > 0.98
    assert has_batchnorm(cnn)  # the float model is not changed


# --- other activation dtypes, CNNs without BatchNorm, per-tensor checkpoints ------------------


def test_int8_activations_equal_their_simulation(cnn, images, offline_data):
    int8_model, folded, qparams = quantize_cnn(
        cnn, images, "minmax", activation_kwargs={"dtype": torch.int8}
    )
    assert qparams["relu1"].dtype == torch.int8 and int(qparams["relu1"].zero_point) == -128
    test_images = offline_data.test.images[:200]
    ours = int8_model.quantized_logits(test_images).long()
    simulated = simulate(folded, qparams).quantized_logits(test_images)
    assert int((ours - simulated).abs().max()) <= 1


def test_cnn_without_batchnorm_and_with_conv_bias_converts(images):
    from collections import OrderedDict

    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(1, 6, 5, stride=2, padding=2),
            relu=nn.ReLU(),
            pool=nn.MaxPool2d(3, stride=2),
            flatten=nn.Flatten(),
            fc=nn.Linear(6 * 6 * 6, 10),
        )
    ).eval()
    int8_model, folded, qparams = quantize_cnn(model, images[:200], "minmax")
    assert list(qparams) == ["input", "relu", "fc", "conv.weight", "fc.weight"]
    test_images = images[200:300]
    ours = int8_model.quantized_logits(test_images).long()
    simulated = simulate(folded, qparams).quantized_logits(test_images)
    assert int((ours - simulated).abs().max()) <= 1


def test_per_tensor_cnn_checkpoint_round_trip(quantized, offline_data, tmp_path):
    from ptqlib.int8_checkpoint import load_int8, save_int8

    _, folded, qparams = quantized
    per_tensor = convert(folded, qparams, per_channel=False)
    assert per_tensor.layers[0].weight_scale.dim() == 0
    reloaded, _ = load_int8(save_int8(per_tensor, tmp_path / "per_tensor.pt"))
    test_images = offline_data.test.images[:64]
    assert torch.equal(
        reloaded.quantized_logits(test_images), per_tensor.quantized_logits(test_images)
    )


# --- the fast path computes the same integers --------------------------------------------------


# Per-channel weights are rows of tests/test_parity_matrix.py (SmallCNN, both activation
# dtypes); per-tensor weights are not, so they are checked here, on the trained CNN.
@pytest.mark.parametrize("activation_dtype", [torch.uint8, torch.int8])
def test_fast_path_equals_the_teaching_path_per_tensor(cnn, images, offline_data, activation_dtype):
    from ptqlib.fast import FastInt8Model

    int8_model, _, _ = quantize_cnn(cnn, images, "minmax", False, {"dtype": activation_dtype})
    test_images = offline_data.test.images
    fast = FastInt8Model(int8_model)
    assert torch.equal(fast.quantized_logits(test_images), int8_model.quantized_logits(test_images))
    assert torch.equal(fast(test_images[:3]), int8_model(test_images[:3]))


def test_fast_path_without_pooling_and_with_stride(images):
    from collections import OrderedDict

    from ptqlib.fast import FastInt8Model

    torch.manual_seed(1)
    model = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 4, 3, stride=2, padding=1),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(4, 8, 3),
            pool=nn.MaxPool2d(2, stride=1),
            flatten=nn.Flatten(),
            fc=nn.Linear(8 * 11 * 11, 10),
        )
    ).eval()
    int8_model, _, _ = quantize_cnn(model, images[:200], "minmax")
    test_images = images[200:260]
    fast = FastInt8Model(int8_model)
    assert torch.equal(fast.quantized_logits(test_images), int8_model.quantized_logits(test_images))


def test_fast_path_needs_an_int8_model(cnn):
    from ptqlib.fast import FastInt8Model

    with pytest.raises(TypeError, match="Int8Model"):
        FastInt8Model(cnn)
