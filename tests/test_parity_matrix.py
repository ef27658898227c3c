"""The parity matrix: the fast path equals the teaching path, bit for bit, in every mode it
accepts, and both survive a checkpoint and a ``load_state_dict`` round trip.

{MLP (SimpleNet), CNN (SmallCNN, BatchNorm folded), a tiny depthwise CNN}
x {fixed point, float32 requantization} x {8-bit, W2/A6} x {uint8, int8 activations}
x batch {1, 2, 63, 1024} x {int8 GEMM, exact float GEMM}.

W2/A6 are the widths the low-bit path (``ptqlib.lowbit.weights``) gives its Int8Models:
weights in -2..1 (``weight_range``), activations in 0..63 (uint8) or -32..31 (int8). The
models have random weights and are calibrated on random images, so the matrix runs in
seconds; the CNN's Linear has 1,568 inputs, so its exact float GEMM sums in float64. The
teaching path of SmallCNN takes seconds at batch 1024, so SmallCNN runs that batch in its
8-bit uint8 rows (both requantizations) only; every other row runs every batch.

Two more families, against an int64 reference written from the math alone
(``int64_reference.py``): the degenerate models of ``degenerate_models.py`` (zero output
channels, BatchNorm gamma = 0 and variance ~0, one-wide layers, constant inputs, extreme
scales and zero-points) and a seeded fuzz of small MLPs with odd widths and zero rows.
"""

import functools

import pytest
import torch
from degenerate_models import degenerate_family
from int64_reference import reference_integers
from test_convert import RecordOps
from test_depthwise import depthwise_cnn
from torch import nn

import ptqlib.int8_gemm as int8_gemm
from ptqlib.batchnorm import fold_model
from ptqlib.calibration import calibrate
from ptqlib.errors import InputError
from ptqlib.fake_quant import FakeQuantModel
from ptqlib.fast import FastInt8Model
from ptqlib.fast.folding import FoldedArithmetic
from ptqlib.int8_checkpoint import load_int8, save_int8
from ptqlib.int8_model import convert
from ptqlib.models import SimpleNet, SmallCNN

BATCHES = (1, 2, 63, 1024)
MODES = ("fixed_point", "float32")
BITS = ("8bit", "W2A6")
DTYPES = {"uint8": torch.uint8, "int8": torch.int8}


ARCHITECTURES = {"mlp": SimpleNet, "cnn": SmallCNN, "depthwise": depthwise_cnn}


@functools.cache
def images() -> torch.Tensor:
    """Random 'digits' in the range of normalised MNIST (about -0.4..2.8)."""
    return torch.rand(1024, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 3.2 - 0.42


@functools.cache
def float_model(architecture: str, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = ARCHITECTURES[architecture]().eval()
    return fold_model(model) if architecture == "cnn" else model  # fold the BatchNorms


@functools.cache
def teaching(architecture: str, mode: str, bits: str, dtype: str, seed: int = 0):
    model = float_model(architecture, seed)
    activation_kwargs = {"dtype": DTYPES[dtype]}
    weight_range = None
    if bits == "W2A6":
        low, high = (0, 63) if dtype == "uint8" else (-32, 31)
        activation_kwargs.update(quant_min=low, quant_max=high)
        weight_range = (-2, 1)
    qparams = calibrate(
        model, images()[:128], "minmax", activation_kwargs=activation_kwargs, progress=False
    ).qparams
    return convert(model, qparams, requantization=mode, weight_range=weight_range)


MATRIX = pytest.mark.parametrize(
    "architecture, mode, bits, dtype",
    [
        (architecture, mode, bits, dtype)
        for architecture in ARCHITECTURES
        for mode in MODES
        for bits in BITS
        for dtype in DTYPES
    ],
)


@MATRIX
def test_fast_equals_teaching_bit_for_bit(architecture, mode, bits, dtype):
    model = teaching(architecture, mode, bits, dtype)
    assert model.requantization == mode
    assert all(step.requantization == mode for step in model.integer_layers())
    fast_paths = [FastInt8Model(model, use_int8_gemm=gemm) for gemm in (True, False)]
    slow = architecture == "cnn" and (bits, dtype) != ("8bit", "uint8")
    for batch in BATCHES[:-1] if slow else BATCHES:
        expected = model.quantized_logits(images()[:batch])
        for fast in fast_paths:
            found = fast.quantized_logits(images()[:batch])
            assert torch.equal(found, expected), (batch, fast.accumulator)


@MATRIX
def test_the_float_simulation_computes_the_same_integers(architecture, mode, bits, dtype):
    """``ptqlib.fake_quant`` with everything quantized: the INT8 model's logits, every one."""
    model = teaching(architecture, mode, bits, dtype)
    some = images()[:63]
    simulated = FakeQuantModel(model).quantized_logits(some)
    assert torch.equal(simulated, model.quantized_logits(some).long())


@MATRIX
def test_checkpoint_and_state_dict_round_trips(architecture, mode, bits, dtype, tmp_path):
    model = teaching(architecture, mode, bits, dtype)
    some = images()[:63]
    expected = model.quantized_logits(some)
    loaded, _ = load_int8(save_int8(model, tmp_path / "int8.pt"))
    assert loaded.requantization == mode  # the mode is saved, not rebuilt as the default
    assert torch.equal(loaded.quantized_logits(some), expected)
    assert torch.equal(FastInt8Model(loaded).quantized_logits(some), expected)

    # load_state_dict: the fast path follows the teaching model's new state
    other = teaching(architecture, mode, bits, dtype, seed=1)
    target = other.quantized_logits(some)
    assert not torch.equal(target, expected)
    fast = FastInt8Model(loaded)
    assert torch.equal(fast.quantized_logits(some), expected)
    loaded.load_state_dict(other.state_dict())
    assert torch.equal(loaded.quantized_logits(some), target)
    assert torch.equal(fast.quantized_logits(some), target)


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_the_teaching_path_uses_the_one_gemm_entry_point(architecture, monkeypatch):
    """Defect 2: every product of the teaching path, convolutions included, goes through
    int8_matmul and so follows its choice of GEMM; both choices give the same integers."""
    model = teaching(architecture, "fixed_point", "8bit", "uint8")
    some = images()[:5]
    results, gemms = {}, {}
    for use_int8_gemm in (True, False):
        monkeypatch.setattr(int8_gemm, "default_uses_int8_gemm", lambda u=use_int8_gemm: u)
        with RecordOps() as recorder:
            results[use_int8_gemm] = model.quantized_logits(some)
        gemms[use_int8_gemm] = [name for name, _ in recorder.calls].count("_int_mm")
    assert torch.equal(results[True], results[False])
    weighted = [step for step in model.integer_layers() if not getattr(step, "depthwise", False)]
    assert gemms == {True: len(weighted), False: 0}


# --- degenerate models and a fuzz, against the int64 reference ---------------------------------


def assert_all_paths_equal(model, images: torch.Tensor, name: str) -> None:
    """Teaching path = fast path (both GEMMs) = float simulation = int64 reference, bit for
    bit, on ``images`` and on its first image alone."""
    for batch in (images, images[:1]):
        expected = reference_integers(model, batch)
        assert torch.equal(model.quantized_logits(batch).long(), expected), name
        assert torch.equal(FakeQuantModel(model).quantized_logits(batch), expected), name
        for use_int8_gemm in (True, False):
            fast = FastInt8Model(model, use_int8_gemm=use_int8_gemm)
            found = fast.quantized_logits(batch).long()
            assert torch.equal(found, expected), (name, fast.accumulator, len(batch))


@pytest.mark.parametrize("mode", MODES)
def test_degenerate_models_agree_with_the_int64_reference(mode):
    cases = degenerate_family(mode)
    for case in cases:
        assert_all_paths_equal(case.model, case.images, case.name)
    # The family reaches every arithmetic of the fast path's requantization, and int64 both
    # with one shift for the layer and with one per channel.
    if mode == "fixed_point":
        folded = [
            FastInt8Model(case.model).folded(step)
            for case in cases
            for step in case.model.integer_layers()
        ]
        assert {step.arithmetic for step in folded} == set(FoldedArithmetic)
        int64_shifts = {s.shift.dim() for s in folded if s.arithmetic == FoldedArithmetic.INT64}
        assert int64_shifts == {0, 1}


def random_mlp(generator: torch.Generator) -> tuple[nn.Sequential, list[int]]:
    """An MLP of 1-3 Linear layers with odd widths from 1 to 17, ReLUs at random, and each
    output row pruned (weights and bias 0) with probability 1/4."""
    depth = int(torch.randint(1, 4, (), generator=generator))
    widths = (2 * torch.randint(0, 9, (depth + 1,), generator=generator) + 1).tolist()
    layers = []
    for inputs, outputs in zip(widths, widths[1:], strict=False):
        linear = nn.Linear(inputs, outputs)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(outputs, inputs, generator=generator))
            linear.bias.copy_(torch.randn(outputs, generator=generator))
            pruned = torch.rand(outputs, generator=generator) < 0.25
            linear.weight[pruned] = 0
            linear.bias[pruned] = 0
        layers.append(linear)
        if bool(torch.rand((), generator=generator) < 0.5):
            layers.append(nn.ReLU())
    if isinstance(layers[-1], nn.ReLU) and bool(torch.rand((), generator=generator) < 0.5):
        layers.pop()
    return nn.Sequential(*layers).eval(), widths


def test_random_mlps_with_zero_rows_agree_with_the_int64_reference():
    """Every random model that convert accepts (a few are refused: a layer whose input is
    always 0 gets S_x = EPS, and its bias does not fit in int32 at S_x S_w)."""
    generator = torch.Generator().manual_seed(25)
    converted = 0
    for trial in range(40):
        model, widths = random_mlp(generator)
        scale = 10 ** float(torch.empty(()).uniform_(-3, 2, generator=generator))
        images = torch.randn(33, widths[0], generator=generator) * scale
        dtype = (torch.uint8, torch.int8)[trial % 2]
        qparams = calibrate(
            model, images, "minmax", activation_kwargs={"dtype": dtype}, progress=False
        ).qparams
        mode = MODES[(trial // 2) % 2]
        per_channel = trial % 5 != 0
        try:
            int8_model = convert(model, qparams, per_channel, requantization=mode)
        except InputError as refused:
            assert "does not fit in int32" in str(refused)
            continue
        converted += 1
        assert_all_paths_equal(int8_model, images, f"trial {trial}: {widths} {mode} {dtype}")
    assert converted >= 30
