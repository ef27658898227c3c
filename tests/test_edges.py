"""Correct at the edges: all-zero output channels, every stride, replaced buffers, empty
batches, bad files and odd options. Each test pins one behaviour that broke before it was
written; the degenerate models and the random-model fuzz are in ``test_parity_matrix.py``."""

import pytest
import torch
from degenerate_models import issue_zero_row_linear
from int64_reference import reference_integers
from torch import nn

import ptqlib.int8_gemm as int8_gemm
from ptqlib.calibration import calibrate
from ptqlib.fast import FastInt8Model
from ptqlib.int8_gemm import int8_matmul
from ptqlib.int8_model import Int8Model, convert, with_requantization
from ptqlib.models import SimpleNet

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
        getattr(model, pruned[0]).weight[pruned[1]] = 0
    qparams = calibrate(model, random_images(128), "minmax", progress=False).qparams
    int8_model = convert(model, qparams)
    images = random_images(20, seed=1)
    fast = FastInt8Model(int8_model)
    assert torch.equal(fast.quantized_logits(images), int8_model.quantized_logits(images))


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
    constants were folded from: an ``id()`` stamp missed it in about half of the cases."""
    model = calibrated_simplenet()
    images = random_images(16, seed=2)
    fast = FastInt8Model(model, use_int8_gemm=False)
    layer = model.integer_layers()[1]
    generator = torch.Generator().manual_seed(3)
    for _ in range(50):
        fast.quantized_logits(images)  # folds the constants from the current bias
        values = torch.randint(-3000, 3000, layer.bias.shape, generator=generator)
        layer.bias = torch.zeros_like(values, dtype=torch.int32)  # frees the folded one
        layer.bias = values.to(torch.int32)  # may land where the folded one was
        assert torch.equal(fast.quantized_logits(images), model.quantized_logits(images))
