"""PyTorch 2's PT2E flow (torchao) on SimpleNet: the same calibration images as ptqlib."""

import pytest
import torch
from torch._dynamo.utils import counters

from ptqlib.calibration import calibrate
from ptqlib.data import calibration_images
from ptqlib.evaluation import agreement, predict
from ptqlib.int8_model import convert
from ptqlib.reference.pt2e import (
    cpu_has_vnni,
    pt2e_activation_qparams,
    pt2e_compiled_model,
    pt2e_quantize,
)
from ptqlib.training import load_or_train_baseline


@pytest.fixture(scope="module")
def setup(offline_data):
    baseline, _ = load_or_train_baseline(offline_data, progress=False)
    images = calibration_images(offline_data.train, 500)
    return baseline, images


@pytest.fixture(scope="module")
def converted(setup):
    baseline, images = setup
    return pt2e_quantize(baseline, images)


def test_the_graph_quantizes_around_each_linear(converted):
    targets = [str(node.target) for node in converted.graph.nodes]
    assert sum("quantize_per_tensor" in t and "dequantize" not in t for t in targets) == 3
    assert sum("dequantize_per_channel" in t for t in targets) == 3
    assert sum(t == "aten.linear.default" for t in targets) == 3


def test_pt2e_chooses_ptqlibs_histogram_qparams(setup, converted):
    """Same observer (histogram), same images, same width (7 bits where PT2E reduces the
    range, on CPUs without VNNI): the activations get ptqlib's qparams, on every CPU."""
    baseline, images = setup
    width = {"reduce_range": not cpu_has_vnni()}
    qparams = calibrate(baseline, images, activation_kwargs=width, progress=False).qparams
    expected = [qparams[key] for key in ("input", "relu1", "relu2")]
    found = pt2e_activation_qparams(converted)
    assert [z for _, z in found] == [int(q.zero_point) for q in expected]
    for (scale, _), ours in zip(found, expected, strict=True):
        assert scale == pytest.approx(float(ours.scale), rel=1e-6)


def test_pt2e_eager_graph_agrees_with_ptqlib(setup, converted, offline_data):
    baseline, images = setup
    ptqlib_model = convert(baseline, calibrate(baseline, images, progress=False).qparams)
    pt2e_predictions = predict(converted, offline_data.test)
    assert agreement(pt2e_predictions, predict(ptqlib_model, offline_data.test)) >= 0.99


def test_bad_input(setup):
    baseline, _ = setup
    with pytest.raises(ValueError, match="images"):
        pt2e_quantize(baseline, torch.zeros(1, 1, 28, 28))
    with pytest.raises(TypeError, match="model"):
        pt2e_quantize("SimpleNet", torch.zeros(4, 1, 28, 28))


@pytest.mark.slow
def test_compiled_pt2e_model(setup, offline_data):
    baseline, images = setup
    result = pt2e_compiled_model(baseline, images, batch_sizes=(64,))
    assert set(result.compile_seconds) == {64} and result.compile_seconds[64] > 0
    with torch.no_grad():
        eager = result.converted(offline_data.test.images[:64])
    compiled = result.model(offline_data.test.images[:64])
    assert (compiled.argmax(1) == eager.argmax(1)).float().mean() >= 0.95
    assert (compiled - eager).abs().max() < 0.5  # the same integers up to a rounding or two
    # ptqlib.evaluation.predict calls .eval(). On an exported graph the first .eval()
    # rewrites its code; after compilation that made dynamo compile again on the next call,
    # outside the freezing patch, so the INT8 kernels were no longer fused (dequantize +
    # FP32 addmm). pt2e_quantize moves the graph to eval mode before it is compiled.
    graphs = counters["stats"]["unique_graphs"]
    result.model.eval()
    result.model(offline_data.test.images[:64])
    assert counters["stats"]["unique_graphs"] == graphs
