"""Correct at the edges: all-zero output channels, every stride, replaced buffers, empty
batches, bad files and odd options. Each test pins one behaviour that broke before it was
written; the degenerate models and the random-model fuzz are in ``test_parity_matrix.py``."""

import argparse
import math
import os
import stat
import struct
import weakref
from pathlib import Path

import pytest
import torch
from degenerate_models import issue_zero_row_linear
from int64_reference import reference_integers
from torch import nn

import ptqlib.int8_gemm as int8_gemm
from ptqlib.app.cli import build_parser, main
from ptqlib.app.commands import quantize_settings
from ptqlib.app.quantize import QuantizeSettings, check_settings, checkpoint_meta
from ptqlib.batchnorm import fold_model
from ptqlib.calibration import calibrate
from ptqlib.checkpoints import load_checkpoint, load_fp32, save_checkpoint, save_fp32
from ptqlib.data import IMAGES_MAGIC, LABELS_MAGIC, load_mnist
from ptqlib.errors import InputError
from ptqlib.fake_quant import simulate
from ptqlib.fast import FastInt8Model
from ptqlib.int8_checkpoint import int8_state, load_int8, save_int8
from ptqlib.int8_gemm import int8_matmul
from ptqlib.int8_model import Int8Model, convert, with_requantization
from ptqlib.lowbit.rounding import ADAROUND_ITERATIONS, ADAROUND_SEED
from ptqlib.lowbit.weights import LowBitSettings, quantize_low_bit
from ptqlib.models import MODELS, SimpleNet, SmallCNN, fold_input_normalization

GEMMS = pytest.mark.parametrize("use_int8_gemm", [True, False], ids=["int8_gemm", "float_gemm"])
MODES = ("fixed_point", "float32")


def random_images(count: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) * 3 - 0.4


def calibrated_simplenet(seed: int = 0, **convert_arguments) -> Int8Model:
    torch.manual_seed(seed)
    model = SimpleNet().eval()
    qparams = calibrate(model, random_images(128), "minmax", progress=False).qparams
    return convert(model, qparams, **convert_arguments)


# --- the fast path on an all-zero output channel -----------------------------------------------


@GEMMS
@pytest.mark.parametrize("output_zero_point", [170, 20])
def test_an_all_zero_output_channel_keeps_the_teaching_paths_integers(
    output_zero_point, use_int8_gemm
):
    """Row 0 all zero: S_w = EPS and a shift of 58. Before, the fast path's folded constants
    wrapped around in int64: 106 instead of 170 everywhere (Z_y = 170), an OverflowError
    (Z_y = 20)."""
    for mode in MODES:
        model = with_requantization(issue_zero_row_linear(output_zero_point), mode)
        assert int(model.integer_layers()[0].shift[0]) == 58
        images = torch.rand(9, 16, generator=torch.Generator().manual_seed(1)) * 6 - 1.8
        expected = reference_integers(model, images)
        assert torch.equal(model.quantized_logits(images).long(), expected)
        fast = FastInt8Model(model, use_int8_gemm=use_int8_gemm)
        assert torch.equal(fast.quantized_logits(images).long(), expected), mode


@pytest.mark.parametrize("pruned", [("fc3", 9), ("fc1", 5)])
def test_a_pruned_simplenet_is_not_refused_by_the_fast_path(pruned):
    """A pruned class (fc3 row 9) or hidden unit (fc1 row 5): the fast path refused the model
    ("the fast path's int64 sum could overflow") that the teaching path runs."""
    torch.manual_seed(0)
    model = SimpleNet().eval()
    with torch.no_grad():
        model.fc3.weight.mul_(20)  # logits as large as a trained model's: the zero row's n is 58
        getattr(model, pruned[0]).weight[pruned[1]] = 0
    qparams = calibrate(model, random_images(128), "minmax", progress=False).qparams
    int8_model = convert(model, qparams)
    images = random_images(20, seed=1)
    fast = FastInt8Model(int8_model)
    assert torch.equal(fast.quantized_logits(images), int8_model.quantized_logits(images))


@pytest.mark.parametrize("per_channel", [True, False])
def test_a_pruned_row_keeps_its_bias(per_channel):
    """Pruning zeroes a row's weights and usually keeps its bias. The observer gives the empty
    row the scale EPS, on whose bias grid S_x EPS int32 holds at most 2^31 EPS S_x (about 256
    S_x): convert refused this model, whose pruned class keeps a bias of 30. The planner gives
    the row its layer's largest scale instead; the row's output is its bias alone, in every
    engine."""
    torch.manual_seed(0)
    model = SimpleNet().eval()
    with torch.no_grad():
        model.fc3.weight[9] = 0
        model.fc3.bias[9] = 30.0
        if not per_channel:
            model.fc2.weight.zero_()  # a whole layer pruned: one scale, 1
    qparams = calibrate(model, random_images(128), "minmax", progress=False).qparams
    int8_model = convert(model, qparams, per_channel=per_channel)
    fc3 = int8_model.integer_layers()[-1]
    if per_channel:
        assert float(fc3.weight_scale[9]) == float(fc3.weight_scale[:9].max())
    else:
        assert float(int8_model.integer_layers()[1].weight_scale) == 1.0
    images = random_images(20, seed=1)
    logits = int8_model.quantized_logits(images)
    assert torch.equal(FastInt8Model(int8_model).quantized_logits(images), logits)
    assert torch.equal(simulate(model, qparams, per_channel).quantized_logits(images), logits)
    if per_channel:
        real = int8_model(images)[:, 9]
        assert torch.allclose(real, torch.full_like(real, 30.0), atol=float(fc3.output_scale))


def test_a_bias_beyond_int32_names_its_layer():
    """A bias that alone overflows int32 at S_x S_w: the refusal said "bias: does not fit in
    int32", naming no layer of the model."""
    torch.manual_seed(0)
    model = SimpleNet().eval()
    with torch.no_grad():
        model.fc2.bias[0] = 1e7
    qparams = calibrate(model, random_images(32), "minmax", progress=False).qparams
    with pytest.raises(InputError, match="layer 'fc2': bias: does not fit in int32"):
        convert(model, qparams)


# --- the simulation takes every option of convert ------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"weight_range": (-127, 127)},
        {"requantization": "float32"},
        {"pixel_input": True},
        {"pixel_input": True, "requantization": "float32", "weight_range": (-127, 127)},
        {"per_channel": False, "weight_range": (-64, 63)},
    ],
    ids=["weight_range", "float32", "pixel_input", "all_three", "per_tensor"],
)
def test_simulate_takes_every_option_of_convert_and_equals_it(options):
    """``simulate`` had no ``weight_range``, ``pixel_input`` or ``requantization``: with
    ``weight_range=(-127, 127)`` only 63.6% of the logits were equal, with pixels 86.4%."""
    torch.manual_seed(0)
    model = SimpleNet().eval()
    images = random_images(96)
    if options.get("pixel_input"):
        model = fold_input_normalization(model)
        images = torch.round((images * 0.3081 + 0.1307) * 255).clamp(0, 255)
    qparams = calibrate(model, images[:64], "minmax", progress=False).qparams
    expected = convert(model, qparams, **options).quantized_logits(images[64:]).long()
    simulated = simulate(model, qparams, **options)
    assert torch.equal(simulated.quantized_logits(images[64:]), expected)


# --- int8_matmul: every stride -----------------------------------------------------------------


def blas_reads_right(matrix: torch.Tensor) -> bool:
    """How a BLAS-style GEMM (oneDNN, MKL) reads an operand from its pointer and strides: a
    unit column stride means row-major with leading dimension ``stride(0) >= C``; else a
    unit row stride means column-major with leading dimension ``stride(1) >= R``. An operand
    it cannot read that way, or reads with a leading dimension that is too small, is
    misread."""
    rows, columns = matrix.shape
    row_stride, column_stride = matrix.stride()
    if column_stride == 1:
        return row_stride >= columns
    return row_stride == 1 and column_stride >= rows


def odd_layouts(generator: torch.Generator) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Legal ``(carriers [N, K], weight_t [K, out])`` pairs whose strides are not the usual."""

    def integers(*shape):
        return torch.randint(-128, 128, shape, dtype=torch.int8, generator=generator)

    weight = integers(9, 4)
    row = integers(1, 9)
    one_input = integers(7, 1)  # a Linear with in_features == 1: weight [7, 1]
    return {
        "in_features 1: weight.t() is [1, 7] with strides (1, 1)": (integers(5, 1), one_input.t()),
        "a [1, K] row with strides (1, 1)": (torch.as_strided(row.clone(), (1, 9), (1, 1)), weight),
        "rows repeated by expand (stride 0)": (row.expand(6, 9), weight),
        "overlapping rows (as_strided)": (integers(40).as_strided((5, 9), (3, 1)), weight),
        "every other column": (integers(5, 18)[:, ::2], weight),
        "a weight column repeated by expand": (integers(5, 3), integers(3, 1).expand(3, 4)),
        "the usual: weight.t() of a [4, 9] weight": (integers(5, 9), integers(4, 9).t()),
    }


@pytest.fixture
def strict_int_mm(monkeypatch):
    """torch._int_mm, refusing an operand a BLAS would misread (:func:`blas_reads_right`).
    On a CPU without VNNI _int_mm is a plain loop that reads any stride right: there the
    layouts are what the tests check; on a VNNI CPU the integers too."""
    real_int_mm = torch._int_mm

    def checked(carriers, weight_t):
        assert blas_reads_right(carriers) and blas_reads_right(weight_t)
        return real_int_mm(carriers, weight_t)

    monkeypatch.setattr(torch, "_int_mm", checked)


@GEMMS
def test_int8_matmul_is_exact_for_every_stride(use_int8_gemm, strict_int_mm):
    """Every operand reaches torch._int_mm in a layout a BLAS reads right, and the sums equal
    an int64 product."""
    for name, (carriers, weight_t) in odd_layouts(torch.Generator().manual_seed(0)).items():
        exact = carriers.long() @ weight_t.long()
        found = int8_matmul(carriers, weight_t, use_int8_gemm=use_int8_gemm)
        assert found.dtype == torch.int32 and torch.equal(found.long(), exact), name


def test_usual_layouts_are_not_copied():
    from ptqlib.int8_gemm import has_gemm_layout

    weight = torch.zeros(4, 9, dtype=torch.int8)
    assert has_gemm_layout(weight) and has_gemm_layout(weight.t())
    assert has_gemm_layout(weight[:1].t())  # [9, 1], strides (1, 9): column-major
    assert not has_gemm_layout(torch.zeros(9, 1, dtype=torch.int8).t())  # [1, 9], (1, 1)


@GEMMS
def test_a_layer_with_one_input_is_exact_on_both_paths(use_int8_gemm, strict_int_mm, monkeypatch):
    """``in_features == 1``: the teaching path multiplies by weight.t(), [1, out] with
    strides (1, 1), which oneDNN's _int_mm misreads (errors up to 2e9)."""
    monkeypatch.setattr(int8_gemm, "default_uses_int8_gemm", lambda: use_int8_gemm)
    model = nn.Sequential(nn.Linear(1, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    inputs = torch.linspace(-2, 2, 11).reshape(11, 1)
    int8_model = convert(model, calibrate(model, inputs, "minmax", progress=False))
    expected = reference_integers(int8_model, inputs)
    assert torch.equal(int8_model.quantized_logits(inputs).long(), expected)
    fast = FastInt8Model(int8_model, use_int8_gemm=use_int8_gemm)
    assert torch.equal(fast.quantized_logits(inputs).long(), expected)


# --- the fast path's staleness check -----------------------------------------------------------


def test_the_fast_path_notices_every_replaced_buffer():
    """A buffer replaced by a new tensor (version 0) that lands at the address of the one the
    constants were folded from: an ``id()`` stamp missed it (stale results in 25 of 50
    replacements, depending on the allocator). The fast path holds the buffers it folded
    from, so their addresses cannot be reused while it compares."""
    model = calibrated_simplenet()
    images = random_images(16, seed=2)
    fast = FastInt8Model(model, use_int8_gemm=False)
    layer = model.integer_layers()[1]
    fast.quantized_logits(images)
    folded_from = weakref.ref(layer.bias)
    layer.bias = layer.bias.clone()
    assert folded_from() is not None  # still held: no new tensor can take its address
    generator = torch.Generator().manual_seed(3)
    for _ in range(50):
        fast.quantized_logits(images)  # folds the constants from the current bias
        values = torch.randint(-3000, 3000, layer.bias.shape, generator=generator)
        layer.bias = torch.zeros_like(values, dtype=torch.int32)  # frees the folded one
        layer.bias = values.to(torch.int32)  # may land where the folded one was
        assert torch.equal(fast.quantized_logits(images), model.quantized_logits(images))


# --- bad input: one clear error, never a traceback ---------------------------------------------


def write_idx(path, magic: int, shape: tuple[int, ...], payload: bytes) -> None:
    header = struct.pack(">i", magic) + struct.pack(f">{len(shape)}i", *shape)
    path.write_bytes(header + payload)


def test_an_idx_file_with_no_images_is_one_clear_error(tmp_path):
    """Zero images (and zero labels): a RuntimeError from ``labels.max()`` before."""
    write_idx(tmp_path / "train-images-idx3-ubyte", IMAGES_MAGIC, (0, 28, 28), b"")
    write_idx(tmp_path / "train-labels-idx1-ubyte", LABELS_MAGIC, (0,), b"")
    with pytest.raises(InputError, match="holds no images"):
        load_mnist(tmp_path, splits=("train",), download=False, verbose=False)


def test_metadata_that_is_not_a_dict_is_one_clear_error(tmp_path, capsys):
    """An INT8 checkpoint whose ``meta`` is a list: ``layer-errors`` died with an
    AttributeError (``meta.get``)."""
    state = {"kind": "int8", **int8_state(calibrated_simplenet()), "meta": ["not", "a", "dict"]}
    path = save_checkpoint(state, tmp_path / "odd_meta.pt")
    with pytest.raises(InputError, match="not a dict"):
        load_int8(path)
    assert main(["layer-errors", "--checkpoint", str(path)]) == 2
    error = capsys.readouterr().err
    assert "not a dict" in error and len(error.strip().splitlines()) == 1


@pytest.mark.parametrize("pixels", [True, False])
def test_an_empty_batch_is_refused_alike_by_both_paths(pixels):
    """Before, the teaching path raised and the fast path returned an empty tensor for a
    batch of 0 raw pixel images."""
    model = calibrated_simplenet(pixel_input=True) if pixels else calibrated_simplenet()
    empty = torch.zeros(0, 1, 28, 28, dtype=torch.uint8 if pixels else torch.float32)
    for runner in (model, FastInt8Model(model, use_int8_gemm=True), FastInt8Model(model, False)):
        with pytest.raises(InputError, match="at least one image"):
            runner(empty)


def test_one_image_without_its_batch_dimension_is_one_clear_error():
    """A 1-d image (784 values) was an IndexError from deep inside torch on both paths."""
    model = calibrated_simplenet()
    for runner in (model, FastInt8Model(model, use_int8_gemm=True), FastInt8Model(model, False)):
        with pytest.raises(InputError, match=r"batch of images \[N, \.\.\.\].*unsqueeze"):
            runner(torch.rand(784))


def test_non_finite_images_are_refused_as_the_teaching_path_refuses_them():
    """The fast path tests a batch's sum for NaN and Inf and runs the teaching path's full
    check only when the sum is not finite: a NaN or Inf anywhere is the same clear error,
    and finite images whose float32 sum overflows (3e38 each) are not refused."""
    model = calibrated_simplenet()
    runners = (model, FastInt8Model(model, use_int8_gemm=True), FastInt8Model(model, False))
    for bad in (math.nan, math.inf, -math.inf):
        images = torch.rand(3, 784)
        images[2, 700] = bad
        for runner in runners:
            with pytest.raises(InputError, match="x: the tensor contains NaN or Inf"):
                runner(images)
    huge = torch.full((2, 784), 3e38)
    huge[1] = -3e38
    assert not math.isfinite(huge.sum())
    for fast in runners[1:]:
        assert torch.equal(fast.integer_forward(huge), model.integer_forward(huge))


def test_sparse_images_get_the_teaching_paths_error():
    """The finite-sum shortcut reads only a plain dense tensor: a sparse one went past it and
    failed later with another error than the teaching path's."""
    model = calibrated_simplenet()
    sparse = torch.rand(2, 784).to_sparse()
    with pytest.raises(NotImplementedError) as teaching:
        model(sparse)
    for use_int8_gemm in (True, False):
        with pytest.raises(NotImplementedError) as fast:
            FastInt8Model(model, use_int8_gemm)(sparse)
        assert str(fast.value) == str(teaching.value)


@GEMMS
def test_fast_input_quantization_edges_found_by_review(use_int8_gemm):
    """An adversarial review of the 0-d zero-point tensors: a zero-point carrier above 2^24
    with a float64 input scale (float64 carriers: a float32 Z' rounded it), zero-points
    made under a ``meta`` default device (``add_`` of a meta tensor silently added nothing),
    an input scale whose 1 / S overflows after ``.half()`` (0 * inf = NaN, which only the
    teaching path's own conversion turns into its integers), and constants folded under
    ``inference_mode`` used by images that require grad."""
    torch.manual_seed(0)
    net = SimpleNet().eval()
    images = torch.rand(64, 1, 28, 28) * 3 - 0.4
    model = convert(net, calibrate(net, images, "minmax", progress=False).qparams)
    integers = model.quantize_input(images[:4]).reshape(4, 784).double() + 128
    model.input_scale = torch.tensor([0.75], dtype=torch.float64)
    model.input_zero_point = torch.tensor(2**24 + 129)  # Z' = 2^24 + 1: not a float32
    x = ((integers - 2**24 - 129) * 0.75).float()
    fast = FastInt8Model(model, use_int8_gemm)
    assert torch.equal(fast.integer_forward(x), model.integer_forward(x))

    model = with_requantization(calibrated_simplenet(), "float32")
    with torch.device("meta"):
        fast = FastInt8Model(model, use_int8_gemm)
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(fast.integer_forward(x), model.integer_forward(x))
    assert torch.equal(fast(x), model(x))

    constant = calibrate(net, torch.zeros(8, 1, 28, 28), "minmax", progress=False)
    model = convert(net, constant.qparams)
    model.half()  # S_x = EPS: 1 / S_x is inf in float16
    x = torch.zeros(3, 1, 28, 28)
    x[1] = 0.5
    fast = FastInt8Model(model, use_int8_gemm)
    assert torch.equal(fast.quantize_input(x), model.quantize_input(x))
    assert torch.equal(fast.integer_forward(x), model.integer_forward(x))

    model = calibrated_simplenet()
    with torch.inference_mode():
        fast = FastInt8Model(model, use_int8_gemm)
    x = torch.rand(2, 784, requires_grad=True)
    assert torch.equal(fast(x), model(x))


@GEMMS
def test_zero_points_beyond_float32_and_inference_buffers_found_by_review(use_int8_gemm):
    """A second review: with a uint8 input zero-point Z above 2^24, folding the carrier
    offset into Z (``fl(Z - 128)`` against the teaching path's ``fl(Z) - 128``) changed
    the integers; an output zero-point near the int64 minimum made the fast path fail where
    the teaching path's integer_forward works (Z - 128 is no int64); a fractional zero-point
    buffer was truncated; a buffer replaced under ``inference_mode`` (no version) crashed
    the fast path's state check."""
    x = torch.full((1, 784), -16777116.0)
    model = calibrated_simplenet()
    model.input_scale = torch.tensor(1.0)
    model.input_zero_point = torch.tensor(2**24 + 1)
    fast = FastInt8Model(model, use_int8_gemm)
    assert torch.equal(fast.integer_forward(x), model.integer_forward(x))

    x = torch.rand(3, 784)
    model = calibrated_simplenet()
    with torch.no_grad():
        model.integer_layers()[-1].output_zero_point.fill_(-(2**63))
    fast = FastInt8Model(model, use_int8_gemm)
    assert torch.equal(fast.quantized_logits(x), model.quantized_logits(x))

    model = calibrated_simplenet()
    model.input_zero_point = torch.tensor(-3.7)
    assert torch.equal(
        FastInt8Model(model, use_int8_gemm).quantize_input(x), model.quantize_input(x)
    )

    model = calibrated_simplenet()
    fast = FastInt8Model(model, use_int8_gemm)
    with torch.inference_mode():
        model.input_scale = torch.tensor(0.02)
    assert torch.equal(fast.integer_forward(x), model.integer_forward(x))
    with torch.inference_mode():
        model.input_scale.fill_(0.03)  # an in-place write that bumps no version
    assert torch.equal(fast.integer_forward(x), model.integer_forward(x))


@GEMMS
def test_prepared_weights_and_live_buffer_views_found_by_review(use_int8_gemm):
    """A third review, of the fast path keeping its GEMM weights prepared and watching its
    buffers through live dict views: the views made the fast model impossible to deep-copy,
    pickle or ``torch.save``; an integer weight other than int8 went to an int16 GEMM that
    wrapped silently where ``torch._int_mm`` refuses it; and ``torch.compile`` traced the
    refold's Python integers for minutes (while compiling, a refold now gives every layer
    the teaching path's requantize: seconds, and the same integers)."""
    import copy
    import io
    import pickle

    x = torch.rand(3, 784)
    model = calibrated_simplenet()
    fast = FastInt8Model(model, use_int8_gemm)
    twin = copy.deepcopy(fast)
    with torch.no_grad():
        twin.model.integer_layers()[0].bias.add_(3000)
    assert torch.equal(twin.integer_forward(x), twin.model.integer_forward(x))
    assert not torch.equal(twin.integer_forward(x), fast.integer_forward(x))
    assert torch.equal(pickle.loads(pickle.dumps(fast)).integer_forward(x), fast.integer_forward(x))
    saved = io.BytesIO()
    torch.save(fast, saved)
    saved.seek(0)
    assert torch.equal(torch.load(saved, weights_only=False)(x), model(x))

    carriers = torch.ones(2, 3, dtype=torch.int8)
    for use_int8_gemm_here in (True, False):
        with pytest.raises(InputError, match="weight: expected int8 values, got torch.int16"):
            int8_matmul(carriers, torch.full((3, 4), 300, dtype=torch.int16), use_int8_gemm_here)

    compiled = torch.compile(fast.integer_forward, backend="eager")
    assert torch.equal(compiled(x), model.integer_forward(x))
    with torch.no_grad():
        model.integer_layers()[1].bias.add_(5000)
    model.integer_layers()[2].shift = model.integer_layers()[2].shift - 1
    assert torch.equal(compiled(x), model.integer_forward(x))


@GEMMS
def test_hand_set_requantization_and_state_found_by_review(use_int8_gemm):
    """Older behaviour the third review found. Hand-set buffers: a negative M0 (the bound
    went negative, float64 was chosen and rounded; with a max-pool after the conv, pooling
    before requantizing took the wrong maximum), a shift of 0 (the fold raised), an M0 of
    2^39 (the teaching path's int64 wraps, the folded constants did not): each layer now
    gets the teaching path's own requantize, and such a conv pools after; so does one whose
    ONNX Runtime multiplier makes float32(acc) M_f32 overflow int64, and a layer whose
    multiplier or shift is not one integer per channel (float64, one value). State: a
    fused ReLU switched off, a buffer registered as None (the fold raised), and another
    Int8Model sharing the same layers assigned to ``fast.model`` (its input qparams were
    not seen)."""
    from degenerate_models import zero_channel_cnn

    cnn_model = zero_channel_cnn(seed=0)
    images = torch.rand(16, 1, 10, 10)
    cnn = convert(cnn_model, calibrate(cnn_model, images, "minmax", progress=False).qparams)
    conv = cnn.integer_layers()[0]
    with torch.no_grad():
        conv.multiplier[:2] *= -1
    fast = FastInt8Model(cnn, use_int8_gemm)
    assert fast.folded(conv).arithmetic == "the teaching path's requantize"
    assert torch.equal(fast.integer_forward(images), cnn.integer_forward(images))

    float32_cnn = with_requantization(cnn, "float32")
    with torch.no_grad():  # float32(acc) M_f32 beyond 2^63: the conversion to int64 wraps
        float32_cnn.integer_layers()[0].float32_multiplier.fill_(1e15)
    fast = FastInt8Model(float32_cnn, use_int8_gemm)
    assert torch.equal(fast.integer_forward(images), float32_cnn.integer_forward(images))

    x = torch.rand(5, 784) * 3 - 0.4
    model = calibrated_simplenet()  # buffers of other types than conversion makes
    fast = FastInt8Model(model, use_int8_gemm)
    model.integer_layers()[0].shift = model.integer_layers()[0].shift.double()
    model.integer_layers()[1].multiplier = model.integer_layers()[1].multiplier[:1].clone()
    assert torch.equal(fast.integer_forward(x), model.integer_forward(x))
    model.integer_layers()[2].requantization = "float32"  # without its float32_multiplier
    assert torch.equal(fast.quantize_input(x), model.quantize_input(x))
    for multiplier, shift in ((-(2**30), 40), (2**30, 0), (2**39, 58)):
        model = calibrated_simplenet()
        fast = FastInt8Model(model, use_int8_gemm)
        with torch.no_grad():
            model.integer_layers()[1].multiplier[0] = multiplier
            model.integer_layers()[1].shift[0] = shift
            model.integer_layers()[1].bias[0] = -(2**26)
        assert torch.equal(fast.integer_forward(x), model.integer_forward(x)), multiplier

    model = calibrated_simplenet()
    fast = FastInt8Model(model, use_int8_gemm)
    fast(x)
    model.integer_layers()[0].relu = False
    model.integer_layers()[1].register_buffer("unused", None)
    assert torch.equal(fast.integer_forward(x), model.integer_forward(x))
    other = calibrated_simplenet()
    other.layers = model.layers
    other.input_zero_point = torch.tensor(40)
    fast.model = other
    assert torch.equal(fast.integer_forward(x), other.integer_forward(x))


def test_the_fast_path_follows_a_model_whose_scales_changed_dtype():
    """An adversarial review found two ways the fast path's float numbers left the teaching
    path's: the model's scales in half precision (``model.half()``: 1 / S was computed in
    float32, the teaching path computes it in S's dtype) and a replaced float64 output scale
    of shape [1] (the logits were dequantized in place in float32; ``(q - Z) * S`` is float64
    there)."""
    images = torch.rand(70, 784)
    for dtype_change in ("half", "bfloat16", "double"):
        model = calibrated_simplenet()
        fast = FastInt8Model(model, use_int8_gemm=True)
        getattr(model, dtype_change)()
        assert torch.equal(fast.integer_forward(images), model.integer_forward(images))
    model = issue_zero_row_linear(output_zero_point=3)
    fast = FastInt8Model(model, use_int8_gemm=False)
    model.integer_layers()[-1].output_scale = torch.tensor([0.1234567891], dtype=torch.float64)
    x = torch.linspace(-1.0, 4.0, 32).reshape(2, 16)
    assert fast(x).dtype == model(x).dtype == torch.float64 and torch.equal(fast(x), model(x))


def test_pixels_given_to_a_model_of_normalised_images_are_refused_on_both_paths():
    """uint8 pixels read as floats 0..255 saturated the input quantization: every input
    integer at its maximum, logits computed without a word."""
    model = calibrated_simplenet()
    pixels = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    for runner in (model, FastInt8Model(model, use_int8_gemm=True), FastInt8Model(model, False)):
        with pytest.raises(InputError, match="uint8 pixels, but this model takes normalised"):
            runner(pixels)
    pixel_model = calibrated_simplenet(pixel_input=True)
    assert torch.equal(
        FastInt8Model(pixel_model).quantized_logits(pixels), pixel_model.quantized_logits(pixels)
    )


def small_cnn_model() -> Int8Model:
    """A conv (3 x 3, no padding), max-pool 2, global average pool, Linear: images smaller
    than 4 x 4 leave the max-pool without a window."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(3, 2),
    ).eval()
    images = torch.rand(8, 1, 10, 10)
    return convert(model, calibrate(model, images, "minmax", progress=False))


@pytest.mark.parametrize(
    "architecture, shape, message",
    [
        ("mlp", (3, 1, 27, 27), r"layer 'fc1': expected input \[N, 784\], got \(3, 729\)"),
        ("mlp", (3, 2, 28, 28), r"layer 'fc1': expected input \[N, 784\], got \(3, 1568\)"),
        ("cnn", (3, 2, 10, 10), r"layer '0': expected input \[N, 1, H, W\], got \(3, 2, 10"),
        ("cnn", (3, 10, 10), r"layer '0': expected input \[N, 1, H, W\], got \(3, 10, 10\)"),
        ("cnn", (3, 1, 2, 2), "an input of 2 x 2 pixels is smaller than its kernel 3 x 3"),
        ("cnn", (3, 1, 4, 3), "max-pool: expected integers .* of at least 2 x 2 pixels"),
    ],
)
def test_images_of_the_wrong_shape_are_one_clear_error_on_both_paths(architecture, shape, message):
    """Before, the teaching path named the layer and the fast path raised torch's
    RuntimeError ("mat1 and mat2 shapes cannot be multiplied", "permute(sparse_coo)"); an
    image smaller than a kernel was a RuntimeError from ``unfold`` on both."""
    model = calibrated_simplenet() if architecture == "mlp" else small_cnn_model()
    images = torch.rand(shape)
    for runner in (model, FastInt8Model(model, use_int8_gemm=True), FastInt8Model(model, False)):
        with pytest.raises(InputError, match=message):
            runner(images)


# --- hand-edited files: the attacker recomputes the digest -------------------------------------


def edited(path: Path, edit, out: Path) -> Path:
    """The checkpoint at ``path`` changed by ``edit(payload)`` and saved again with a
    correct digest, as someone editing the file by hand would do."""
    payload = load_checkpoint(path)
    payload.pop("format_version")
    edit(payload)
    return save_checkpoint(payload, out)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda p: p.update(model=["cnn"]), r"unknown model \['cnn'\]"),  # was a TypeError
        (
            lambda p: p["state_dict"].update({"fc1.weight": p["state_dict"]["fc1.weight"].long()}),
            r"state_dict\['fc1.weight'\] is torch.int64, expected torch.float32",
        ),
        (
            lambda p: p["state_dict"].update({"fc1.bias": torch.zeros(128, dtype=torch.complex64)}),
            r"state_dict\['fc1.bias'\] is torch.complex64",
        ),
        (
            lambda p: p["state_dict"].update({"fc9.weight": torch.zeros(1)}),
            'Unexpected key\\(s\\) in state_dict: "fc9.weight"',
        ),
    ],
    ids=["model-not-a-string", "int64-weight", "complex-bias", "extra-key"],
)
def test_an_edited_fp32_checkpoint_is_refused_by_name(fp32_files, tmp_path, edit, message):
    """Before: a TypeError (unhashable list); int64 and complex tensors loaded silently (cast,
    the imaginary part dropped); an extra key said only "Error(s) in loading state_dict"."""
    path = edited(fp32_files["simplenet"], edit, tmp_path / "edited.pt")
    with pytest.raises(InputError, match=message):
        load_fp32(path)


def flatten_entry(payload: dict) -> dict:
    return payload["layers"][0]


def first_linear(payload: dict) -> dict:
    return payload["layers"][1]


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda p: first_linear(p).update(weight_range=[-8, 7]),  # 8-bit weights, "4-bit"
            "weight must hold integers within its weight_range -8..7",
        ),
        (lambda p: flatten_entry(p).update(start_dim=0), "start_dim and end_dim must be dims"),
        (lambda p: flatten_entry(p).update(start_dim=5), "start_dim and end_dim must be dims"),
        (lambda p: flatten_entry(p).update(start_dim=True), "start_dim and end_dim must be dims"),
        (lambda p: first_linear(p)["output"].update(zero_point=True), "zero-point True"),
        (
            lambda p: p["layers"][-1].update(
                {key: p["layers"][-1][key][:0] for key in ("weight", "bias", "weight_scale")}
            ),
            "found no weights",
        ),
        (
            lambda p: first_linear(p)["output"].update(scale=1e-45),
            r"layer 'fc1': M = S_x S_w / S_y: real_multiplier",
        ),
    ],
    ids=[
        "weights-beyond-range",
        "flatten-0",
        "flatten-5",
        "flatten-bool",
        "zero-point-bool",
        "no-output-channels",
        "scale-underflow",
    ],
)
def test_an_edited_int8_checkpoint_is_refused_by_name(tmp_path, edit, message):
    """Each loaded before and failed later: at run time with an IndexError / TypeError /
    RuntimeError (Flatten), in the fast path (``max()`` of nothing: a layer without outputs),
    or never (8-bit weights recorded as 4-bit reach the C manifest's bit count)."""
    path = edited(
        save_int8(calibrated_simplenet(), tmp_path / "int8.pt"), edit, tmp_path / "edited.pt"
    )
    with pytest.raises(InputError, match=message):
        load_int8(path)


def test_non_finite_weights_are_named_before_calibrating():
    """Before: "MinMaxObserver input: the tensor contains NaN or Inf", naming no layer."""
    torch.manual_seed(0)
    model = SimpleNet().eval()
    with torch.no_grad():
        model.fc2.bias[3] = float("nan")
    with pytest.raises(InputError, match="model: fc2.bias holds NaN or Inf"):
        calibrate(model, random_images(8), "minmax", progress=False)


def test_a_batchnorm_that_cannot_fold_is_named():
    """running_var + eps = 0 divided by 0 when folding: NaN weights, refused later as
    "MinMaxObserver input: ... NaN or Inf"."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, eps=0.0)).eval()
    with torch.no_grad():
        model[1].running_var[1] = 0.0
    with pytest.raises(InputError, match="layer '1': running_var: var \\+ eps must be positive"):
        fold_model(model)


# --- options that were ignored or checked late ------------------------------------------------


@pytest.fixture(scope="module")
def fp32_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("fp32")
    torch.manual_seed(0)
    return {
        "simplenet": save_fp32(SimpleNet().eval(), folder / "simplenet.pt"),
        "cnn": save_fp32(SmallCNN().eval(), folder / "cnn.pt"),
    }


def test_quantize_refuses_to_overwrite_its_fp32_checkpoint(fp32_files):
    """``--out`` naming the FP32 checkpoint overwrote it and reported "1.00x smaller"."""
    source = fp32_files["simplenet"]
    same_file = source.parent / ".." / source.parent.name / source.name
    for out in (source, same_file):
        with pytest.raises(InputError, match="would overwrite it"):
            check_settings(QuantizeSettings(checkpoint=source, out=out))


@pytest.mark.parametrize("export_format", ["onnx", "c"])
def test_export_refuses_to_overwrite_its_checkpoint(fp32_files, tmp_path, capsys, export_format):
    """``export --checkpoint X --out X`` replaced the checkpoint with the ONNX file (exit 0)."""
    source = tmp_path / "model.pt"
    source.write_bytes(fp32_files["simplenet"].read_bytes())
    before = source.read_bytes()
    same_file = tmp_path / ".." / tmp_path.name / "model.pt"
    arguments = ["export", "--checkpoint", str(source), "--out", str(same_file)]
    assert main([*arguments, "--format", export_format]) == 2
    error = capsys.readouterr().err
    assert "is the checkpoint being read (--checkpoint)" in error
    assert len(error.strip().splitlines()) == 1
    assert source.read_bytes() == before


@pytest.mark.parametrize("command", ["quantize", "export"])
def test_an_out_below_a_file_is_refused_before_any_work(fp32_files, capsys, command):
    """``quantize --out model.pt/int8.pt`` loaded the data and calibrated, then failed on
    ``mkdir`` ("[Errno 17] File exists"), naming no option."""
    source = fp32_files["simplenet"]
    arguments = [command, "--checkpoint", str(source), "--out", str(source / "out.pt")]
    extra = ["--data-dir", "/nonexistent"] if command == "quantize" else []
    assert main([*arguments, *extra]) == 2
    error = capsys.readouterr().err
    assert f"lies below {source}, which is a file" in error
    assert len(error.strip().splitlines()) == 1


def test_evaluate_target_on_a_checkpoint_file_names_the_option(fp32_files, capsys):
    """``evaluate --checkpoint model.pt --target cortex-m4`` said "[Errno 20] Not a
    directory: 'model.pt/firmware.json'"."""
    source = fp32_files["simplenet"]
    assert main(["evaluate", "--checkpoint", str(source), "--target", "cortex-m4"]) == 2
    error = capsys.readouterr().err
    assert f"{source} is a file; --target runs a firmware directory" in error
    assert len(error.strip().splitlines()) == 1


def test_equalize_without_a_conv_pair_is_refused_before_any_data(fp32_files, tmp_path):
    """SmallCNN has a max-pool between its convolutions: no pair to equalize. Before, the
    settings passed and the run failed after loading the data."""
    settings = QuantizeSettings(fp32_files["cnn"], tmp_path / "int8.pt", equalize=True)
    with pytest.raises(InputError, match="no Conv2d -> ReLU -> Conv2d pair"):
        check_settings(settings)


def test_the_library_low_bit_path_refuses_a_cnn():
    """``quantize_low_bit`` on a folded CNN quantized only ``fc`` and left every conv at 8
    bits while reporting W2."""
    torch.manual_seed(0)
    folded = fold_model(SmallCNN().eval())
    with pytest.raises(InputError, match="Linear layers only"):
        quantize_low_bit(folded, random_images(20), LowBitSettings(weight_bits=2))


def test_every_quantize_option_reaches_the_settings(fp32_files, tmp_path):
    """``--pixel-input`` was parsed and dropped; ``--requantization`` did not exist."""
    arguments = build_parser().parse_args(
        ["quantize", "--checkpoint", str(fp32_files["simplenet"]), "--out", "x.pt"]
        + ["--requantization", "float32", "--pixel-input", "--per-tensor", "--seed", "7"]
        + ["--adaround-iterations", "9", "--rounding", "adaround", "--observer", "minmax"]
    )
    settings = quantize_settings(arguments)
    assert settings.requantization == "float32" and settings.pixel_input
    assert not settings.bits.per_channel and settings.bits.rounding == "adaround"
    assert settings.bits.adaround_kwargs == {"seed": 7, "iterations": 9}
    assert settings.observer == "minmax"
    default = build_parser().parse_args(["quantize", "--checkpoint", "a.pt", "--out", "b.pt"])
    assert quantize_settings(default).requantization == "fixed_point"


@pytest.mark.parametrize(
    "options, message",
    [
        (["--adaround-iterations", "5"], "--adaround-iterations 5: set AdaRound, which runs only"),
        (["--seed", "3", "--rounding", "gptq"], "--seed 3: set AdaRound, which runs only"),
        (
            ["--format", "mxfp4", "--requantization", "float32"],
            "--format mxfp4: --requantization set the INT8 quantization",
        ),
    ],
    ids=["iterations-without-adaround", "seed-with-gptq", "requantization-with-format"],
)
def test_quantize_refuses_an_option_it_would_ignore(fp32_files, tmp_path, capsys, options, message):
    """Each ran to the end (exit 0) and ignored the option. The data directory does not
    exist: the refusal comes before any work, and no file is written."""
    out = tmp_path / "out.pt"
    arguments = ["quantize", "--checkpoint", str(fp32_files["simplenet"]), "--out", str(out)]
    assert main([*arguments, "--data-dir", "/nonexistent", *options]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1
    assert not out.exists()


def test_the_checkpoint_records_adarounds_seed_and_iterations(fp32_files, tmp_path):
    """Without them an AdaRound checkpoint could not be made again from its metadata."""
    bits = LowBitSettings(rounding="adaround", adaround_kwargs={"seed": 7, "iterations": 9})
    settings = QuantizeSettings(fp32_files["simplenet"], tmp_path / "int8.pt", bits=bits)
    meta = checkpoint_meta(settings, "simplenet", calibrated_simplenet(), seconds=1.0)
    assert meta["seed"] == 7 and meta["adaround_iterations"] == 9
    defaults = QuantizeSettings(fp32_files["simplenet"], tmp_path / "int8.pt")
    meta = checkpoint_meta(defaults, "simplenet", calibrated_simplenet(), seconds=1.0)
    assert meta["seed"] == ADAROUND_SEED and meta["adaround_iterations"] == ADAROUND_ITERATIONS


@pytest.mark.parametrize(
    "model, runtime",
    [("dwcnn", "onnxruntime"), ("dwcnn", "pt2e"), ("cnn", "pt2e")],
)
def test_bench_refuses_a_runtime_model_pair_before_any_work(model, runtime, capsys):
    """A runtime that cannot run the model (ONNX Runtime and PT2E with ``dwcnn``, PT2E with
    ``cnn``) is refused before anything is built or trained: the data directory does not
    exist, and the refusal comes first."""
    arguments = ["bench", "--model", model, "--runtime", runtime, "--data-dir", "/nonexistent"]
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert f"--runtime {runtime}: implemented for --model" in error
    assert len(error.strip().splitlines()) == 1


def test_bench_help_names_every_model():
    bench = next(
        action.choices["bench"]
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    model_help = next(action.help for action in bench._actions if action.dest == "model")
    assert all(name in model_help for name in MODELS)


def test_fold_input_normalization_refuses_a_model_that_does_not_start_with_linear():
    """On SmallCNN it folded into ``fc``, the last layer (logits off by 0.44)."""
    torch.manual_seed(0)
    with pytest.raises(InputError, match="its first layer is a Conv2d"):
        fold_input_normalization(fold_model(SmallCNN().eval()))
    folded = fold_input_normalization(nn.Sequential(nn.Linear(4, 2, bias=False)))
    assert folded[0].bias is not None  # the shift went into a new bias


# --- writing a checkpoint ----------------------------------------------------------------------


def test_save_checkpoint_sets_the_files_mode_without_touching_the_umask(tmp_path, monkeypatch):
    """It flipped the process-wide umask to read it (not thread-safe)."""
    previous = os.umask(0o027)
    try:

        def forbidden(mask):
            raise AssertionError("save_checkpoint changed the process umask")

        monkeypatch.setattr(os, "umask", forbidden)
        path = save_fp32(SimpleNet(), tmp_path / "model.pt")
    finally:
        monkeypatch.undo()
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # 0o666 under the umask 0o027
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left
