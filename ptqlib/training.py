"""Training the FP32 baseline, saving it, and the cached baseline later notebooks reuse.

Training is plain mini-batch Adam on cross-entropy. It is deterministic on the CPU:
the weights are initialised and the batches shuffled from generators seeded by ``seed``,
without touching the caller's global random state.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ptqlib.checkpoints import load_fp32, save_fp32
from ptqlib.data import MNIST, MNISTSplit
from ptqlib.models import SimpleNet
from ptqlib.paths import artifacts_dir

DEFAULT_EPOCHS = 10
DEFAULT_SEED = 0
BATCH_SIZE = 64
LEARNING_RATE = 1e-3


@dataclass
class TrainResult:
    """The trained model, one row of metrics per epoch, and the wall-clock training time."""

    model: SimpleNet
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def train(
    data: MNIST,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = DEFAULT_SEED,
    progress: bool = True,
) -> TrainResult:
    """Train a fresh SimpleNet on ``data.train`` for ``epochs`` epochs.

    Each epoch records the mean training loss, the training accuracy over the epoch and
    the test accuracy (when ``data.test`` is loaded). ``progress`` shows a tqdm bar.
    """
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs: expected a positive whole number, got {epochs!r}")
    if not isinstance(seed, int) or not -(2**63) <= seed < 2**64:
        raise ValueError(f"seed: expected a whole number that fits in 64 bits, got {seed!r}")
    if data.train is None:
        raise ValueError("data: the train split is not loaded; call load_mnist() with 'train'")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = SimpleNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss_function = nn.CrossEntropyLoss()
    loader = data.train.loader(batch_size=BATCH_SIZE, shuffle=True, seed=seed)

    result = TrainResult(model)
    start = time.perf_counter()
    bar = tqdm(range(1, epochs + 1), desc="training", unit="epoch", disable=not progress)
    for epoch in bar:
        model.train()
        total_loss, correct, seen = 0.0, 0, 0
        for images, labels in loader:
            optimizer.zero_grad()
            logits = model(images)
            loss = loss_function(logits, labels)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(labels)
            correct += int((logits.argmax(dim=1) == labels).sum())
            seen += len(labels)
        row = {"epoch": epoch, "loss": total_loss / seen, "train_accuracy": correct / seen}
        if data.test is not None:
            row["test_accuracy"] = _accuracy(model, data.test)
        result.history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['train_accuracy']:.3f}")
    result.seconds = time.perf_counter() - start
    model.eval()
    return result


def baseline_path(
    data: MNIST,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = DEFAULT_SEED,
    directory: str | os.PathLike | None = None,
) -> Path:
    """Where the baseline for these epochs, seed and data is cached:
    ``artifacts/simplenet_fp32_e<epochs>_s<seed>_<data fingerprint>.pt``. Notebook 01 saves
    its model there, so that every later notebook finds it instead of training again."""
    directory = artifacts_dir() if directory is None else Path(directory)
    return directory / f"simplenet_fp32_e{epochs}_s{seed}_{data.fingerprint()}.pt"


def load_or_train_baseline(
    data: MNIST,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = DEFAULT_SEED,
    directory: str | os.PathLike | None = None,
    progress: bool = True,
) -> tuple[SimpleNet, dict]:
    """The trained FP32 baseline, from :func:`baseline_path` if a valid checkpoint for the
    same epochs, seed and data is there, otherwise trained now and saved there.

    Returns the model and its meta (data source, accuracy, training time...).
    """
    path = baseline_path(data, epochs, seed, directory)
    if path.is_file():
        try:
            model, meta = load_fp32(path)
            if meta.get("data_fingerprint") == data.fingerprint():
                return model, meta
        except ValueError:
            pass  # a corrupt or stale cache entry is simply trained again and overwritten
    result = train(data, epochs=epochs, seed=seed, progress=progress)
    meta = training_meta(result, data, epochs, seed)
    save_fp32(result.model, path, meta)
    return result.model, meta


def training_meta(result: TrainResult, data: MNIST, epochs: int, seed: int) -> dict:
    """What a checkpoint records about how its model was trained."""
    return {
        "epochs": epochs,
        "seed": seed,
        "data_source": data.source,
        "data_fingerprint": data.fingerprint(),
        "n_train": len(data.train),
        "train_seconds": round(result.seconds, 2),
        "history": result.history,
    }


@torch.no_grad()
def _accuracy(model: nn.Module, split: MNISTSplit) -> float:
    """Test accuracy during training (``ptqlib.evaluation`` has the full set of metrics)."""
    model.eval()
    predictions = torch.cat([model(images).argmax(dim=1) for images, _ in split.loader(1024)])
    return float((predictions == split.labels).float().mean())
