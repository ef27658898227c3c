import pytest
import torch

from ptqlib.checkpoints import load_checkpoint, load_fp32, save_checkpoint, save_fp32
from ptqlib.data import MNIST
from ptqlib.evaluation import accuracy, confusion_matrix, per_class_accuracy, predict
from ptqlib.models import SimpleNet, count_parameters
from ptqlib.training import load_or_train_baseline, train


@pytest.fixture(scope="module")
def small_data(offline_data):
    """1,000 training digits and the offline test part: enough to learn, quick to train."""
    return MNIST(
        train=type(offline_data.train)(
            offline_data.train.images[:1000], offline_data.train.labels[:1000]
        ),
        test=offline_data.test,
        source="test subset",
    )


@pytest.fixture(scope="module")
def trained(small_data):
    return train(small_data, epochs=3, seed=0, progress=False)


def test_simplenet_shapes_and_names():
    model = SimpleNet()
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 10)
    assert [name for name, _ in model.named_children()] == [
        "flatten",
        "fc1",
        "relu1",
        "fc2",
        "relu2",
        "fc3",
    ]
    assert count_parameters(model) == 784 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10


def test_training_clearly_beats_chance(trained, small_data):
    assert accuracy(trained.model, small_data.test) > 0.8  # chance is 0.1
    losses = [row["loss"] for row in trained.history]
    assert losses[-1] < losses[0]
    assert [row["epoch"] for row in trained.history] == [1, 2, 3]


def test_training_is_deterministic_and_leaves_global_rng_alone(trained, small_data):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    again = train(small_data, epochs=3, seed=0, progress=False)
    assert torch.rand(1) == before  # train() did not consume the caller's random numbers
    for name, value in trained.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[name]), name


def test_bad_epochs(small_data):
    with pytest.raises(ValueError, match="epochs"):
        train(small_data, epochs=0)


def test_checkpoint_round_trip_weights_only(trained, tmp_path):
    path = save_fp32(trained.model, tmp_path / "sub" / "model.pt", {"seed": 0})
    payload = torch.load(path, weights_only=True)  # plain tensors and numbers only
    assert payload["kind"] == "fp32"
    model, meta = load_fp32(path)
    assert meta == {"seed": 0}
    images = torch.randn(4, 1, 28, 28)
    assert torch.equal(model(images), trained.model(images))
    assert not list(tmp_path.glob("sub/*.tmp"))  # the temporary file was renamed away


def test_wrong_architecture_is_a_clear_error(tmp_path):
    wrong = torch.nn.Sequential(torch.nn.Linear(784, 10))
    save_checkpoint({"kind": "fp32", "state_dict": wrong.state_dict()}, tmp_path / "w.pt")
    with pytest.raises(ValueError, match="does not hold a SimpleNet"):
        load_fp32(tmp_path / "w.pt")


@pytest.mark.parametrize(
    "content, message",
    [(b"not a checkpoint", "not a readable ptqlib checkpoint"), (b"", "not a readable")],
)
def test_corrupt_checkpoint(tmp_path, content, message):
    (tmp_path / "bad.pt").write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_fp32(tmp_path / "bad.pt")


def test_truncated_checkpoint(trained, tmp_path):
    path = save_fp32(trained.model, tmp_path / "model.pt")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="corrupt, truncated"):
        load_fp32(path)


def test_foreign_torch_file_and_kind_mismatch(tmp_path):
    torch.save({"weights": torch.ones(2)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a ptqlib checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    save_checkpoint({"kind": "int8"}, tmp_path / "int8.pt")
    with pytest.raises(ValueError, match="is an INT8 checkpoint, but an FP32"):
        load_fp32(tmp_path / "int8.pt")


def test_cached_baseline_trains_once(small_data, tmp_path):
    model, meta = load_or_train_baseline(small_data, epochs=1, directory=tmp_path, progress=False)
    (checkpoint,) = tmp_path.glob("*.pt")
    stamp = checkpoint.stat().st_mtime_ns
    again, _ = load_or_train_baseline(small_data, epochs=1, directory=tmp_path, progress=False)
    assert checkpoint.stat().st_mtime_ns == stamp  # loaded, not retrained
    assert meta["data_fingerprint"] == small_data.fingerprint()
    assert torch.equal(again.fc1.weight, model.fc1.weight)
    checkpoint.write_bytes(b"corrupt")  # a broken cache entry is retrained, not fatal
    load_or_train_baseline(small_data, epochs=1, directory=tmp_path, progress=False)
    assert load_fp32(checkpoint)[1]["epochs"] == 1


def test_confusion_matrix_and_per_class_accuracy():
    labels = torch.tensor([0, 0, 1, 1, 2])
    predictions = torch.tensor([0, 1, 1, 1, 0])
    matrix = confusion_matrix(predictions, labels)
    assert matrix[0].tolist()[:3] == [1, 1, 0] and matrix[2, 0] == 1 and matrix.sum() == 5
    assert per_class_accuracy(predictions, labels)[:3].tolist() == [0.5, 1.0, 0.0]


def test_predict_batches_match_one_pass(trained, small_data):
    whole = trained.model(small_data.test.images).argmax(dim=1)
    assert torch.equal(predict(trained.model, small_data.test, batch_size=7), whole)


def test_checkpoint_path_that_is_a_directory(tmp_path):
    with pytest.raises(ValueError, match="is not a file"):
        load_fp32(tmp_path)


def test_checkpoints_get_the_usual_file_mode(trained, tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        path = save_fp32(trained.model, tmp_path / "shared.pt")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_seed_must_fit_in_64_bits(small_data):
    with pytest.raises(ValueError, match="seed"):
        train(small_data, epochs=1, seed=10**30, progress=False)
