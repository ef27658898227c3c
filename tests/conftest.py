"""Shared fixtures and helpers for the tests (no test module imports another)."""

import gzip
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ptqlib.data import load_mnist

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="session")
def offline_data(tmp_path_factory):
    """The offline MNIST sample (4,000 train / 1,000 test), whatever lies in data/."""
    empty = tmp_path_factory.mktemp("no-mnist-here")
    return load_mnist(empty, download=False, verbose=False)


def idx_bytes(array: torch.Tensor) -> bytes:
    """An IDX file's bytes for a uint8 tensor: magic 0x0000080N, N big-endian sizes, data."""
    header = struct.pack(">i", 0x0800 + array.dim()) + struct.pack(f">{array.dim()}i", *array.shape)
    return header + array.to(torch.uint8).numpy().tobytes()


def _write_idx_split(directory, split: str, n: int = 20, compress: bool = False, seed: int = 0):
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


@pytest.fixture
def write_idx_split():
    """``write_idx_split(directory, split, n=20, compress=False, seed=0)``: write a small, valid
    IDX split and return ``(images, labels, {"images": path, "labels": path})``."""
    return _write_idx_split


# --- the static site, built once per session (test_docs.py and test_browser.py) ---------------


@dataclass
class Site:
    html_dir: Path
    warnings: str


def build_site(out_dir: Path) -> Site:
    """Run ``make docs``'s sphinx-build into ``out_dir``, unless a test already did."""
    html_dir = out_dir / "html"
    warnings_file = out_dir / "warnings.txt"
    if not (html_dir / "index.html").exists():
        command = [
            sys.executable, "-m", "sphinx", "-b", "html", "-q", "-E",
            "-c", "docs", "-d", str(out_dir / "doctrees"), "-w", str(warnings_file),
            ".", str(html_dir),
        ]  # fmt: skip
        result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"sphinx-build failed:\n{result.stdout}\n{result.stderr}"
    return Site(html_dir, warnings_file.read_text())


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    # A fixed folder under the session's temp dir: test_browser.py reuses the same build.
    return build_site(tmp_path_factory.getbasetemp() / "docs_site")
