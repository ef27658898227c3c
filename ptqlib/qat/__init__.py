"""Quantization-aware training (notebook 06's contrast): training, not post-training
quantization.

Every other method in this series quantizes a trained model with a few hundred unlabelled
images and no gradient step. QAT fine-tunes the model with the rounding in its forward pass
(the straight-through estimator), on the labelled training set, for epochs: it shows what
the post-training fixes leave on the table, and what it costs to get it.

- ``ptqlib.qat.finetune``  the straight-through estimator and the fine-tuning loop, on the
  B-bit weight grid of ``ptqlib.lowbit.weights``
"""

from ptqlib.qat.finetune import QATResult, qat_finetune, straight_through

__all__ = ["QATResult", "qat_finetune", "straight_through"]
