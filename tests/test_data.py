import urllib.error

import numpy as np
import pytest
import torch
import torchvision.datasets

from ptqlib.data import (
    DOWNLOAD_FAILED_NOTE,
    MNIST_MEAN,
    MNIST_STD,
    calibration_images,
    forget_download_failure,
    load_mnist,
    normalise,
)


def test_reads_flat_idx_files(tmp_path, capsys, write_idx_split):
    images, labels, _ = write_idx_split(tmp_path, "train")
    write_idx_split(tmp_path, "t10k", n=10)
    data = load_mnist(tmp_path, download=False)
    assert data.train.images.shape == (20, 1, 28, 28)
    assert data.train.images.dtype == torch.float32
    assert torch.equal(data.train.labels, labels.long())
    assert torch.allclose(data.train.images, normalise(images))
    assert len(data.test) == 10
    assert "IDX files in" in capsys.readouterr().out  # the one line naming the source


def test_reads_gzipped_torchvision_layout(tmp_path, write_idx_split):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx_split(raw, "t10k", n=12, compress=True)
    data = load_mnist(tmp_path, splits=("test",), download=False, verbose=False)
    assert len(data.test) == 12 and data.train is None


def test_test_split_needs_only_t10k_files(tmp_path, write_idx_split):
    write_idx_split(tmp_path, "t10k")
    assert len(load_mnist(tmp_path, splits=("test",), verbose=False).test) == 20
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist(tmp_path, verbose=False)


def test_normalisation_uses_mnist_statistics():
    pixels = torch.tensor([[[0, 255]]], dtype=torch.uint8)
    expected = torch.tensor([-MNIST_MEAN / MNIST_STD, (1 - MNIST_MEAN) / MNIST_STD])
    assert torch.allclose(normalise(pixels).flatten(), expected)


def test_env_variable_names_the_directory(tmp_path, monkeypatch, write_idx_split):
    write_idx_split(tmp_path, "t10k", n=7)
    monkeypatch.setenv("PTQLIB_DATA_DIR", str(tmp_path))
    assert len(load_mnist(splits=("test",), verbose=False).test) == 7


def test_missing_named_directory_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist(tmp_path / "absent", verbose=False)
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        load_mnist(tmp_path / "a-file", verbose=False)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda data: b"\x00\x00\x08\x99" + data[4:], "wrong magic number"),
        (lambda data: data[:-100], "wrong length"),
        (lambda data: data[:2], "too short"),
    ],
)
def test_corrupt_idx_file_names_the_file(tmp_path, corrupt, message, write_idx_split):
    _, _, paths = write_idx_split(tmp_path, "t10k")
    path = paths["images"]
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(ValueError, match=message) as error:
        load_mnist(tmp_path, splits=("test",), verbose=False)
    assert path.name in str(error.value)


def test_broken_gzip_is_an_error_not_a_fallback(tmp_path, write_idx_split):
    _, _, paths = write_idx_split(tmp_path, "t10k", compress=True)
    data = paths["labels"].read_bytes()
    paths["labels"].write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="decompress") as error:
        load_mnist(tmp_path, splits=("test",), verbose=False)
    assert paths["labels"].name in str(error.value)


def test_label_count_mismatch(tmp_path, write_idx_split):
    write_idx_split(tmp_path, "t10k", n=20)
    other = tmp_path / "other"
    other.mkdir()
    _, _, five = write_idx_split(other, "t10k", n=5)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(five["labels"].read_bytes())
    with pytest.raises(ValueError, match="20 images but .* 5 labels"):
        load_mnist(tmp_path, splits=("test",), verbose=False)


def test_offline_sample_is_stratified_and_deterministic(offline_data, tmp_path):
    assert (len(offline_data.train), len(offline_data.test)) == (4000, 1000)
    assert torch.equal(torch.bincount(offline_data.test.labels), torch.full((10,), 100))
    assert torch.equal(torch.bincount(offline_data.train.labels), torch.full((10,), 400))
    again = load_mnist(tmp_path, download=False, verbose=False)
    assert again.fingerprint() == offline_data.fingerprint()
    assert "offline sample" in offline_data.describe()
    # The two parts are disjoint: no test image is also a training image.
    train_rows = {row.numpy().tobytes() for row in offline_data.train.images.flatten(1)}
    assert not any(
        row.numpy().tobytes() in train_rows for row in offline_data.test.images.flatten(1)
    )


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        load_mnist(splits=("validation",))


def test_calibration_images_balanced_and_seeded(offline_data):
    images = calibration_images(offline_data.train, 25, seed=3)
    assert images.shape == (25, 1, 28, 28)
    assert torch.equal(images, calibration_images(offline_data.train, 25, seed=3))
    assert not torch.equal(images, calibration_images(offline_data.train, 25, seed=4))
    # Class balance: find each chosen image's label.
    index = {
        row.numpy().tobytes(): int(label)
        for row, label in zip(
            offline_data.train.images.flatten(1), offline_data.train.labels, strict=True
        )
    }
    counts = torch.bincount(
        torch.tensor([index[row.numpy().tobytes()] for row in images.flatten(1)])
    )
    assert counts.tolist() == [3, 3, 3, 3, 3, 2, 2, 2, 2, 2]


@pytest.mark.parametrize("n", [0, -5, 2.5, 10**6])
def test_calibration_images_bad_n(offline_data, n):
    with pytest.raises(ValueError, match="n:"):
        calibration_images(offline_data.train, n)


# --- the download: only a failed download falls back to the offline sample --------------------


def failing_mnist(error: BaseException):
    """A stand-in for torchvision's MNIST class whose construction raises ``error``."""

    def construct(*args, **kwargs):
        raise error

    return construct


@pytest.mark.parametrize(
    "error, reason",
    [
        (
            RuntimeError(
                "Error downloading train-images-idx3-ubyte.gz:\nTried https://a/, got:\n"
                "<urlopen error [Errno -2] Name or service not known>\n"
            ),
            "no network",
        ),
        (RuntimeError("Error downloading x.gz:\nTried https://a/, got:\nHTTP Error 404"), "every"),
        (urllib.error.URLError("[Errno 101] Network is unreachable"), "no network"),
        (ConnectionResetError(104, "Connection reset by peer"), "no network"),
        (PermissionError(13, "Permission denied"), "cannot write the download: Permission denied"),
    ],
)
def test_a_failed_download_falls_back_to_the_offline_sample(tmp_path, monkeypatch, error, reason):
    monkeypatch.setattr(torchvision.datasets, "MNIST", failing_mnist(error))
    data = load_mnist(tmp_path, splits=("test",), verbose=False)
    assert len(data.test) == 1000
    assert f"MNIST could not be downloaded: {reason}" in data.describe()
    assert "RuntimeError" not in data.describe()


@pytest.mark.parametrize(
    "bug",
    [TypeError("a bug in the download code"), RuntimeError("an unrelated failure"), KeyError(1)],
)
def test_a_bug_in_the_download_propagates(tmp_path, monkeypatch, bug):
    """A bug is not "offline": it must not silently fall back to the 5,000-digit sample."""
    monkeypatch.setattr(torchvision.datasets, "MNIST", failing_mnist(bug))
    with pytest.raises(type(bug)):
        load_mnist(tmp_path, splits=("test",), verbose=False)


def test_without_network_the_line_says_so(tmp_path):
    """The real torchvision on this machine: offline, or MNIST really downloaded."""
    data = load_mnist(tmp_path, splits=("test",), verbose=False)
    if data.source.startswith("the offline sample"):
        assert "MNIST could not be downloaded: " in data.source
        assert "Error" not in data.source
    else:
        assert len(data.test) == 10_000


def test_a_failed_download_is_noted_and_not_tried_again(tmp_path, monkeypatch):
    """Offline, every load would wait for torchvision's mirrors again: the first failure is
    noted in the data directory, later loads skip the download, and forgetting the note
    (the command line's --download) tries again."""
    calls = []

    def offline(*args, **kwargs):
        calls.append(1)
        raise urllib.error.URLError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    first = load_mnist(tmp_path, splits=("test",), verbose=False)
    second = load_mnist(tmp_path, splits=("test",), verbose=False)
    assert len(calls) == 1 and (tmp_path / DOWNLOAD_FAILED_NOTE).is_file()
    assert "MNIST could not be downloaded: no network" in first.source
    assert "noted earlier; --download tries again" in second.source
    assert torch.equal(first.test.images, second.test.images)
    forget_download_failure(tmp_path)
    load_mnist(tmp_path, splits=("test",), verbose=False)
    assert len(calls) == 2


def test_the_cli_download_option_forgets_the_failure(tmp_path, monkeypatch, capsys):
    from ptqlib.app.cli import main

    (tmp_path / DOWNLOAD_FAILED_NOTE).write_text("MNIST could not be downloaded: no network\n")
    monkeypatch.setattr("ptqlib.app.commands.run_evaluate", lambda args: 0)  # no real work
    arguments = ["evaluate", "--checkpoint", "x.pt", "--data-dir", str(tmp_path)]
    assert main(arguments) == 0
    assert (tmp_path / DOWNLOAD_FAILED_NOTE).is_file()
    assert main([*arguments, "--download"]) == 0
    assert not (tmp_path / DOWNLOAD_FAILED_NOTE).exists()


def test_the_offline_sample_is_parsed_once_and_cached(tmp_path, monkeypatch):
    """The CSV's digits are cached as tensors in artifacts/; a damaged cache is parsed again."""
    monkeypatch.setenv("PTQLIB_OUTPUT_DIR", str(tmp_path))
    first = load_mnist(tmp_path, download=False, verbose=False)
    cache = tmp_path / "artifacts" / "mnist_5k.pt"
    assert cache.is_file()

    def no_parsing(*args, **kwargs):
        raise AssertionError("the CSV was parsed again")

    with monkeypatch.context() as patch:
        patch.setattr(np, "loadtxt", no_parsing)
        cached = load_mnist(tmp_path, download=False, verbose=False)
    assert first.fingerprint() == cached.fingerprint()
    cache.write_bytes(b"not a torch file")
    again = load_mnist(tmp_path, download=False, verbose=False)
    assert again.fingerprint() == first.fingerprint()
