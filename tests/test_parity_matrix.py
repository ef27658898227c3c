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
"""

import functools

import pytest
import torch
from test_convert import RecordOps
from test_depthwise import depthwise_cnn
from torch import nn

import ptqlib.int8_gemm as int8_gemm
from ptqlib.batchnorm import fold_model
from ptqlib.calibration import calibrate
from ptqlib.fast import FastInt8Model
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
