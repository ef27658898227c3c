"""Measuring a model: accuracy, per-class accuracy, the confusion matrix.

Every function takes any model that maps a batch of images ``[N, 1, 28, 28]`` to
logits ``[N, 10]``: the FP32 SimpleNet and the INT8 models alike.
"""

from __future__ import annotations

import torch
from torch import nn

from ptqlib.data import NUM_CLASSES, MNISTSplit


@torch.no_grad()
def predict(model: nn.Module, split: MNISTSplit, batch_size: int = 1024) -> torch.Tensor:
    """The predicted class (argmax of the logits) for every image of ``split``."""
    model.eval()
    return torch.cat(
        [
            model(split.images[i : i + batch_size]).argmax(dim=1)
            for i in range(0, len(split), batch_size)
        ]
    )


def accuracy(model: nn.Module, split: MNISTSplit) -> float:
    """The fraction of ``split`` classified correctly, in [0, 1]."""
    return float((predict(model, split) == split.labels).float().mean())


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``matrix[true, predicted]``: how many digits of each true class got each prediction."""
    pairs = labels * NUM_CLASSES + predictions
    return torch.bincount(pairs, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)


def per_class_accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Accuracy of each class 0-9: the diagonal of the confusion matrix over its row sums."""
    matrix = confusion_matrix(predictions, labels)
    return matrix.diagonal().float() / matrix.sum(dim=1).clamp(min=1).float()
