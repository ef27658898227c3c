import pytest
import torch

from ptqlib.checkpoints import saved_size_bytes
from ptqlib.evaluation import (
    agreement,
    compare_latency,
    confusion_matrix,
    predict,
    torch_threads,
)
from ptqlib.models import SimpleNet


def test_agreement():
    assert agreement(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 4])) == 0.75


def test_saved_size_counts_the_tensors_bytes():
    model = SimpleNet()
    tensor_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    size = saved_size_bytes(model.state_dict())
    assert tensor_bytes < size < tensor_bytes + 10_000  # plus names and zip headers
    half = {name: t.half() for name, t in model.state_dict().items()}
    assert saved_size_bytes(half) < 0.55 * size


def test_compare_latency_reports_every_model_and_restores_threads():
    before = torch.get_num_threads()
    models = {"a": SimpleNet(), "b": torch.nn.Sequential(torch.nn.Flatten())}
    results = compare_latency(
        models, batch_size=8, threads=1, repeats=3, min_seconds_per_repeat=0.001
    )
    assert torch.get_num_threads() == before
    assert set(results) == {"a", "b"}
    for latency in results.values():
        assert latency.threads == 1 and latency.batch_size == 8 and latency.repeats == 3
        assert 0 < latency.q1_ms <= latency.median_ms <= latency.q3_ms
        assert latency.images_per_second == pytest.approx(8 / latency.median_ms * 1000)


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"batch_size": 4, "repeats": 1}])
def test_compare_latency_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        compare_latency({"a": SimpleNet()}, **kwargs)


def test_torch_threads_rejects_zero():
    with pytest.raises(ValueError, match="threads"):
        with torch_threads(0):
            pass


@pytest.mark.parametrize(
    "predictions, labels, error, message",
    [
        (torch.tensor([1, -1]), torch.tensor([1, 2]), ValueError, "classes 0-9"),
        (torch.tensor([1, 10]), torch.tensor([1, 2]), ValueError, "classes 0-9"),
        (torch.tensor([1, 2, 3]), torch.tensor([1, 2]), ValueError, "differ in length"),
        (torch.tensor([[1], [2]]), torch.tensor([1, 2]), TypeError, "1-d tensor"),
        (torch.tensor([1.0, 2.0]), torch.tensor([1, 2]), TypeError, "1-d tensor"),
    ],
)
def test_bad_predictions_are_refused(predictions, labels, error, message):
    with pytest.raises(error, match=message):
        confusion_matrix(predictions, labels)
    with pytest.raises(error, match=message):
        agreement(predictions, labels)


def test_predict_wants_a_split():
    with pytest.raises(TypeError, match="MNISTSplit"):
        predict(SimpleNet(), torch.zeros(2, 1, 28, 28))
