"""Measuring a model: accuracy, agreement, size on disk and latency.

Every function takes any model that maps a batch of images ``[N, 1, 28, 28]`` to
logits ``[N, 10]``: the FP32 SimpleNet and the INT8 models alike.
"""

from __future__ import annotations

import contextlib
import functools
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ptqlib.data import NUM_CLASSES, MNISTSplit, normalise
from ptqlib.errors import InputError


@torch.no_grad()
@torch.no_grad()
def predict(model: nn.Module, split: MNISTSplit, batch_size: int = 1024) -> torch.Tensor:
    """The predicted class (argmax of the logits) for every image of ``split``."""
    if not isinstance(split, MNISTSplit):
        raise TypeError(
            f"split: expected an MNISTSplit such as load_mnist().test, got {type(split).__name__}"
        )
    model.eval()
    # A model that takes raw pixels (its normalisation folded into its first layer, see
    # ptqlib.models.fold_input_normalization) gets the uint8 pixels of the same digits.
    images = split.pixels() if getattr(model, "takes_pixels", False) else split.images
    return torch.cat(
        [model(images[i : i + batch_size]).argmax(dim=1) for i in range(0, len(split), batch_size)]
    )


def accuracy(model: nn.Module, split: MNISTSplit) -> float:
    """The fraction of ``split`` classified correctly, in [0, 1]."""
    return float((predict(model, split) == split.labels).float().mean())


def _check_classes(predictions: torch.Tensor, labels: torch.Tensor) -> None:
    """Two 1-d integer tensors of the same length holding classes 0-9."""
    for name, tensor in (("predictions", predictions), ("labels", labels)):
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 1 or tensor.is_floating_point():
            raise TypeError(f"{name}: expected a 1-d tensor of class indices, got {tensor!r:.60}")
        if len(tensor) == 0 or int(tensor.min()) < 0 or int(tensor.max()) >= NUM_CLASSES:
            raise InputError(f"{name}: expected classes 0-{NUM_CLASSES - 1} for at least one image")
    if len(predictions) != len(labels):
        raise InputError(
            f"predictions ({len(predictions)}) and labels ({len(labels)}) differ in length"
        )


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``matrix[true, predicted]``: how many digits of each true class got each prediction."""
    _check_classes(predictions, labels)
    pairs = labels * NUM_CLASSES + predictions
    return torch.bincount(pairs, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)


def per_class_accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Accuracy of each class 0-9: the diagonal of the confusion matrix over its row sums."""
    matrix = confusion_matrix(predictions, labels)
    return matrix.diagonal().float() / matrix.sum(dim=1).clamp(min=1).float()


def agreement(predictions: torch.Tensor, reference: torch.Tensor) -> float:
    """The fraction of images on which two models predict the same class."""
    _check_classes(predictions, reference)
    return float((predictions == reference).float().mean())


@dataclass(frozen=True)
class Latency:
    """Time for one forward pass of a batch: the median over repeats and the quartiles (ms)."""

    batch_size: int
    threads: int
    median_ms: float
    q1_ms: float
    q3_ms: float
    repeats: int

    @property
    def images_per_second(self) -> float:
        return self.batch_size / (self.median_ms / 1000.0)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run torch's CPU kernels on ``threads`` threads, restoring the old count afterwards."""
    if not isinstance(threads, int) or threads < 1:
        raise InputError(f"threads: expected a positive whole number, got {threads!r}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}


@torch.no_grad()
def time_interleaved(
    functions: dict[str, Callable[[], object]],
    threads: int = 2,
    repeats: int = 21,
    min_seconds_per_repeat: float = 0.02,
    clock: str = "wall",
) -> dict[str, list[float]]:
    """Milliseconds per call of each function, one sample per repeat, measured interleaved.

    After warm-up calls, each repeat times enough back-to-back calls to last at least
    ``min_seconds_per_repeat`` and records the time per call. The functions take turns
    repeat by repeat, so a slow moment of the machine hurts them all alike and their
    ratio stays honest — on an idle machine. Where another process competes for the cores,
    every multi-threaded operator may wait a scheduler time slice (milliseconds) for its
    threads, so models with many small operators suffer most: benchmark on an idle machine.

    ``clock`` "wall" measures elapsed time; "thread" the CPU time of the calling thread
    (``time.thread_time``): the time the work itself took, not the time spent waiting for a
    core that other processes hold. It sees only this thread's work, so it needs
    ``threads=1`` (and functions that start no threads of their own).
    """
    if repeats < 3:
        raise InputError(f"repeats: expected at least 3 to report quartiles, got {repeats}")
    if clock not in CLOCKS or (clock == "thread" and threads != 1):
        raise InputError(
            f"clock: expected 'wall', or 'thread' with threads=1; got {clock!r} with "
            f"{threads} threads"
        )
    now = CLOCKS[clock]
    samples: dict[str, list[float]] = {name: [] for name in functions}
    with torch_threads(threads):
        calls = {}
        for name, function in functions.items():
            start = now()
            for _ in range(3):  # warm-up: first calls allocate and pick kernels
                function()
            per_call = (now() - start) / 3
            calls[name] = max(1, math.ceil(min_seconds_per_repeat / max(per_call, 1e-7)))
        for _ in range(repeats):
            for name, function in functions.items():
                start = now()
                for _ in range(calls[name]):
                    function()
                samples[name].append((now() - start) / calls[name] * 1000.0)
    return samples


def latency_call(model: nn.Module, pixels: torch.Tensor) -> Callable[[], object]:
    """The call to time for ``model`` on the digits ``pixels`` (uint8 ``[N, 28, 28]``): the
    model on what it takes (the pixels for a model with ``takes_pixels``, else the
    normalised images), or the model's own ``latency_call`` where it has one (the exported
    C: its call bound to buffers allocated once, without the torch wrapper)."""
    if hasattr(model, "latency_call"):
        return model.latency_call(pixels)
    if getattr(model, "takes_pixels", False):
        return functools.partial(model, pixels.unsqueeze(1))
    return functools.partial(model, normalise(pixels))


def compare_latency(
    models: dict[str, nn.Module],
    batch_size: int,
    threads: int = 2,
    repeats: int = 21,
    min_seconds_per_repeat: float = 0.02,
    seed: int = 0,
    clock: str = "wall",
) -> dict[str, Latency]:
    """Latency of each model on the same random batch of ``batch_size`` images, timed with
    :func:`time_interleaved`: the median and quartiles over ``repeats``. Each model starts
    from what it needs (:func:`latency_call`)."""
    if batch_size < 1:
        raise InputError(f"batch_size: expected a positive number of images, got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (batch_size, 28, 28), dtype=torch.uint8, generator=generator)
    for model in models.values():
        model.eval()
    functions = {name: latency_call(model, pixels) for name, model in models.items()}
    samples = time_interleaved(functions, threads, repeats, min_seconds_per_repeat, clock)
    results = {}
    for name, times in samples.items():
        q1, median, q3 = statistics.quantiles(times, n=4)
        results[name] = Latency(batch_size, threads, median, q1, q3, repeats)
    return results


def latency_table(
    models: dict[str, nn.Module],
    batch_sizes: tuple[int, ...] = (1, 64, 1024),
    threads: int = 2,
    repeats: int = 21,
    min_seconds_per_repeat: float = 0.02,
    clock: str = "wall",
) -> dict[int, dict[str, Latency]]:
    """``table[batch_size][model]``: :func:`compare_latency` at each batch size."""
    return {
        batch_size: compare_latency(
            models, batch_size, threads, repeats, min_seconds_per_repeat, clock=clock
        )
        for batch_size in batch_sizes
    }


@dataclass(frozen=True)
class PairedComparison:
    """Two models' predictions on the same digits, compared digit by digit.

    ``fixed``: digits model A got wrong and model B right; ``broken``: the reverse. Only
    these change the accuracy: ``acc_B - acc_A = (fixed - broken) / n``.
    """

    n: int
    fixed: int
    broken: int

    @property
    def p_value(self) -> float:
        return mcnemar_p_value(self.fixed, self.broken)

    def __str__(self) -> str:
        net = self.fixed - self.broken
        return f"+{self.fixed} / -{self.broken} digits (net {net:+d}, p = {self.p_value:.2g})"


def paired_comparison(
    reference: torch.Tensor, candidate: torch.Tensor, labels: torch.Tensor
) -> PairedComparison:
    """Count the digits ``candidate`` fixed and broke relative to ``reference``."""
    _check_classes(reference, labels)
    _check_classes(candidate, labels)
    reference_right, candidate_right = reference == labels, candidate == labels
    return PairedComparison(
        len(labels),
        int((candidate_right & ~reference_right).sum()),
        int((reference_right & ~candidate_right).sum()),
    )


def mcnemar_p_value(fixed: int, broken: int) -> float:
    """McNemar's exact test: how surprising is a split of ``fixed`` vs ``broken`` digits if
    neither model is better?

    Two models scored on the *same* digits are judged by the digits where they differ: if
    both were equally good, each of the ``n = fixed + broken`` changed digits would be a fair
    coin flip, so the two-sided p-value is ``min(1, 2 P[Binomial(n, 1/2) <= min(fixed,
    broken)])``. A small value (say below 0.05) says such a lopsided split would be rare if
    neither model were better; a large one says these digits cannot tell the two apart, not
    that they are equally good. Digits both models got right or both got wrong say nothing
    about which is better.
    """
    for value, name in ((fixed, "fixed"), (broken, "broken")):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InputError(
                f"{name}: expected a count of digits (a whole number >= 0), got {value!r}"
            )
    n = fixed + broken
    tail = sum(math.comb(n, k) for k in range(min(fixed, broken) + 1)) / 2**n
    return min(1.0, 2 * tail)
