"""Training the FP32 baseline, saving it, and the cached baseline later notebooks reuse.

Training is plain mini-batch Adam on cross-entropy. It is deterministic on the CPU:
the weights are initialised and the batches shuffled from generators seeded by ``seed``,
without touching the caller's global random state.

A *recipe* names the optimizer settings (:data:`RECIPES`). Every model has a "default" one;
notebook 09's DepthwiseCNN also has "hot": SGD with momentum at a learning rate far too high
(2.0), the kind of setting a learning-rate search or a copied config produces. It still
trains to a good float model, but it kills a few ReLU channels on the way, and that breaks
per-tensor INT8 (notebook 09).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ptqlib.catalog import (  # noqa: F401  (the defaults, importable from here)
    DEFAULT_EPOCHS,
    DEFAULT_EPOCHS_BY_MODEL,
    DEFAULT_RECIPE,
    DEFAULT_SEED,
)
from ptqlib.checkpoints import load_fp32, save_fp32
from ptqlib.data import MNIST, MNISTSplit
from ptqlib.errors import InputError
from ptqlib.models import MODELS, SimpleNet, build_model
from ptqlib.paths import artifacts_dir

BATCH_SIZE = 64
LEARNING_RATE = 1e-3
CNN_EPOCHS = DEFAULT_EPOCHS_BY_MODEL["cnn"]
DEPTHWISE_EPOCHS = DEFAULT_EPOCHS_BY_MODEL["dwcnn"]
# SmallCNN trains on one thread. Its many small convolution, BatchNorm and pooling kernels
# gain little from a second thread, and on a busy 2-core machine every multi-threaded kernel
# waits for a scheduler slice for its second thread (measured: 35 ms per step on one thread,
# 430 ms on two while other jobs ran). One thread also makes its weights independent of the
# caller's thread setting. SimpleNet keeps the caller's setting (its cached weights stay).
TRAIN_THREADS = {"cnn": 1, "dwcnn": 1}


@dataclass(frozen=True)
class Recipe:
    """How a model is trained: the optimizer ("adam" or "sgd"), its learning rate and
    momentum (SGD only), and whether the rate follows a cosine from ``learning_rate`` down
    to 0 over all steps (``cosine``). Batches of :data:`BATCH_SIZE` images."""

    optimizer: str
    learning_rate: float
    momentum: float = 0.0
    cosine: bool = False


ADAM = Recipe("adam", LEARNING_RATE)
# The recipes of each model, by name (the names are listed in ptqlib.catalog too, for the
# command line). DepthwiseCNN's "default" is a sensible one (Adam with a cosine schedule):
# per-tensor INT8 loses little. "hot" is SGD, momentum 0.9, lr 2.0, cosine.
RECIPES: dict[str, dict[str, Recipe]] = {
    "simplenet": {"default": ADAM},
    "cnn": {"default": ADAM},
    "dwcnn": {
        "default": Recipe("adam", 3e-3, cosine=True),
        "hot": Recipe("sgd", 2.0, momentum=0.9, cosine=True),
    },
}


def recipe_for(model: str, recipe: str) -> Recipe:
    """The :class:`Recipe` named ``recipe`` of the model named ``model``."""
    if model not in RECIPES:
        raise InputError(f"model: unknown model {model!r}; expected one of {sorted(RECIPES)}")
    if recipe not in RECIPES[model]:
        raise InputError(
            f"recipe: {model} has no recipe {recipe!r}; expected one of {sorted(RECIPES[model])}"
        )
    return RECIPES[model][recipe]


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
    recipe: str = DEFAULT_RECIPE,
) -> TrainResult:
    """Train a fresh SimpleNet (or the model named ``model``: "simplenet", "cnn" or "dwcnn",
    see ``ptqlib.models.MODELS``) on ``data.train`` for ``epochs`` epochs, with the
    optimizer settings of ``RECIPES[model][recipe]``.

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
    settings = recipe_for(model_name, recipe)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(model_name)
    threads = TRAIN_THREADS.get(model_name, torch.get_num_threads())
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train_loop(model, data, epochs, seed, progress, settings)
    finally:
        torch.set_num_threads(previous_threads)


def _train_loop(
    model: nn.Module,
    data: MNIST,
    epochs: int,
    seed: int,
    progress: bool,
    recipe: Recipe = ADAM,
) -> TrainResult:
    """The epochs of :func:`train` (arguments already checked)."""
    if recipe.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            model.parameters(), lr=recipe.learning_rate, momentum=recipe.momentum
        )
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe.learning_rate)
    loss_function = nn.CrossEntropyLoss()
    loader = data.train.loader(batch_size=BATCH_SIZE, shuffle=True, seed=seed)
    schedule = None
    if recipe.cosine:  # one cosine from the full rate down to 0, stepped after every batch
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * len(loader))

    result = TrainResult(model)
    start = time.perf_counter()
    bar = tqdm(range(1, epochs + 1), desc="training", unit="epoch", ncols=80, disable=not progress)
    for epoch in bar:
        model.train()
        total_loss, correct, seen = 0.0, 0, 0
        for images, labels in loader:
            optimizer.zero_grad()
            logits = model(images)
            loss = loss_function(logits, labels)
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
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
    recipe: str = DEFAULT_RECIPE,
) -> Path:
    """Where the baseline for these epochs, seed and data is cached:
    ``artifacts/<model>_fp32_e<epochs>_s<seed>_<data fingerprint>.pt`` (model "simplenet",
    "cnn" or "dwcnn"; a recipe other than "default" is added to the model's name, e.g.
    ``dwcnn_hot_fp32_...``). Notebook 01 saves its model there, so that every later notebook
    finds it instead of training again."""
    recipe_for(model, recipe)  # checks both names
    directory = artifacts_dir() if directory is None else Path(directory)
    stem = model if recipe == DEFAULT_RECIPE else f"{model}_{recipe}"
    return directory / f"{stem}_fp32_e{epochs}_s{seed}_{data.fingerprint()}.pt"


def load_or_train_baseline(
    data: MNIST,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = DEFAULT_SEED,
    directory: str | os.PathLike | None = None,
    progress: bool = True,
    model: str = "simplenet",
    recipe: str = DEFAULT_RECIPE,
) -> tuple[SimpleNet, dict]:
    """The trained FP32 baseline, from :func:`baseline_path` if a valid checkpoint for the
    same epochs, seed and data is there, otherwise trained now and saved there.
    ``model`` names the network ("simplenet", "cnn" for notebook 07's SmallCNN, "dwcnn" for
    notebook 09's DepthwiseCNN) and ``recipe`` its training settings (:data:`RECIPES`).

    Returns the model and its meta (data source, accuracy, training time...).
    """
    path = baseline_path(data, epochs, seed, directory, model=model, recipe=recipe)
    if path.is_file():
        try:
            cached, meta = load_fp32(path, expected_model=model)
            if meta.get("data_fingerprint") == data.fingerprint():
                return cached, meta
        except ValueError:
            pass  # a corrupt or stale cache entry is simply trained again and overwritten
    result = train(data, epochs=epochs, seed=seed, progress=progress, model=model, recipe=recipe)
    meta = training_meta(result, data, epochs, seed, recipe)
    save_fp32(result.model, path, meta)
    return result.model, meta


def training_meta(
    result: TrainResult, data: MNIST, epochs: int, seed: int, recipe: str = DEFAULT_RECIPE
) -> dict:
    """What a checkpoint records about how its model was trained (the recipe only when it is
    not "default", so the other checkpoints stay as they were)."""
    meta = {
        "epochs": epochs,
        "seed": seed,
        "data_source": data.source,
        "data_fingerprint": data.fingerprint(),
        "n_train": len(data.train),
        "train_seconds": round(result.seconds, 2),
        "history": result.history,
    }
    if recipe != DEFAULT_RECIPE:
        meta["recipe"] = recipe
    return meta


@torch.no_grad()
def _accuracy(model: nn.Module, split: MNISTSplit) -> float:
    """Test accuracy during training (``ptqlib.evaluation`` has the full set of metrics)."""
    model.eval()
    predictions = torch.cat([model(images).argmax(dim=1) for images, _ in split.loader(1024)])
    return float((predictions == split.labels).float().mean())
