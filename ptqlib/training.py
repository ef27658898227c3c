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
from ptqlib.errors import InputError
from ptqlib.models import MODELS, SimpleNet, build_model
from ptqlib.paths import artifacts_dir

DEFAULT_EPOCHS = 10
DEFAULT_SEED = 0
BATCH_SIZE = 64
LEARNING_RATE = 1e-3
# SmallCNN (notebook 07) learns faster per epoch and costs more per epoch than SimpleNet.
CNN_EPOCHS = 4
DEFAULT_EPOCHS_BY_MODEL = {"simplenet": DEFAULT_EPOCHS, "cnn": CNN_EPOCHS}
# SmallCNN trains on one thread. Its many small convolution, BatchNorm and pooling kernels
# gain little from a second thread, and on a busy 2-core machine every multi-threaded kernel
# waits for a scheduler slice for its second thread (measured: 35 ms per step on one thread,
# 430 ms on two while other jobs ran). One thread also makes its weights independent of the
# caller's thread setting. SimpleNet keeps the caller's setting (its cached weights stay).
TRAIN_THREADS = {"cnn": 1}


@dataclass
class TrainResult:
    """The trained model, one row of metrics per epoch, and the wall-clock training time."""

    model: SimpleNet  # or a SmallCNN, when trained with model="cnn"
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def train(
    data: MNIST,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = DEFAULT_SEED,
    progress: bool = True,
    model: str = "simplenet",
) -> TrainResult:
    """Train a fresh SimpleNet (or the model named ``model``: "simplenet" or "cnn", see
    ``ptqlib.models.MODELS``) on ``data.train`` for ``epochs`` epochs.

    Each epoch records the mean training loss, the training accuracy over the epoch and
    the test accuracy (when ``data.test`` is loaded). ``progress`` shows a tqdm bar.
    """
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise InputError(f"epochs: expected a positive whole number, got {epochs!r}")
    if not isinstance(seed, int) or not -(2**63) <= seed < 2**64:
        raise InputError(f"seed: expected a whole number that fits in 64 bits, got {seed!r}")
    if data.train is None:
        raise InputError("data: the train split is not loaded; call load_mnist() with 'train'")
    model_name = model
    if model_name not in MODELS:
        raise InputError(f"model: unknown model {model_name!r}; expected one of {sorted(MODELS)}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(model_name)
    threads = TRAIN_THREADS.get(model_name, torch.get_num_threads())
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train_loop(model, data, epochs, seed, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _train_loop(
    model: nn.Module, data: MNIST, epochs: int, seed: int, progress: bool
) -> TrainResult:
    """The epochs of :func:`train` (arguments already checked)."""
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
    model: str = "simplenet",
) -> Path:
    """Where the baseline for these epochs, seed and data is cached:
    ``artifacts/<model>_fp32_e<epochs>_s<seed>_<data fingerprint>.pt`` (model "simplenet"
    or "cnn"). Notebook 01 saves its model there, so that every later notebook finds it
    instead of training again."""
    if model not in MODELS:
        raise InputError(f"model: unknown model {model!r}; expected one of {sorted(MODELS)}")
    directory = artifacts_dir() if directory is None else Path(directory)
    return directory / f"{model}_fp32_e{epochs}_s{seed}_{data.fingerprint()}.pt"


def load_or_train_baseline(
    data: MNIST,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = DEFAULT_SEED,
    directory: str | os.PathLike | None = None,
    progress: bool = True,
    model: str = "simplenet",
) -> tuple[SimpleNet, dict]:
    """The trained FP32 baseline, from :func:`baseline_path` if a valid checkpoint for the
    same epochs, seed and data is there, otherwise trained now and saved there.
    ``model`` names the network ("simplenet", or "cnn" for notebook 07's SmallCNN).

    Returns the model and its meta (data source, accuracy, training time...).
    """
    path = baseline_path(data, epochs, seed, directory, model=model)
    if path.is_file():
        try:
            cached, meta = load_fp32(path, expected_model=model)
            if meta.get("data_fingerprint") == data.fingerprint():
                return cached, meta
        except ValueError:
            pass  # a corrupt or stale cache entry is simply trained again and overwritten
    result = train(data, epochs=epochs, seed=seed, progress=progress, model=model)
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
