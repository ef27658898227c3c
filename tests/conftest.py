"""Shared fixtures for the unit tests."""

import gzip
import struct

import pytest
import torch

from ptqlib.data import load_mnist


@pytest.fixture(scope="session")
def offline_data(tmp_path_factory):
    """The offline MNIST sample (4,000 train / 1,000 test), whatever lies in data/."""
    empty = tmp_path_factory.mktemp("no-mnist-here")
    return load_mnist(empty, download=False, verbose=False)


def idx_bytes(array: torch.Tensor) -> bytes:
    """An IDX file's bytes for a uint8 tensor: magic 0x0000080N, N big-endian sizes, data."""
    header = struct.pack(">i", 0x0800 + array.dim()) + struct.pack(f">{array.dim()}i", *array.shape)
    return header + array.to(torch.uint8).numpy().tobytes()


def write_idx_split(directory, split: str, n: int = 20, compress: bool = False, seed: int = 0):
    """Write a small, valid IDX split (``train`` or ``t10k``) into ``directory``."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 28, 28), generator=generator, dtype=torch.uint8)
    labels = torch.arange(n, dtype=torch.uint8) % 10
    written = {}
    for kind, array, ndim in (("images", images, 3), ("labels", labels, 1)):
        data = idx_bytes(array)
        name = f"{split}-{kind}-idx{ndim}-ubyte" + (".gz" if compress else "")
        path = directory / name
        path.write_bytes(gzip.compress(data) if compress else data)
        written[kind] = path
    return images, labels, written
