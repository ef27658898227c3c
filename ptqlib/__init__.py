"""ptqlib: post-training quantization of a small MNIST network, from scratch.

The concepts a reader learns are flat modules, in the order the notebooks use them (imports
only go forward along this list, and no flat module imports a sub-package):

- ``ptqlib.data``                MNIST from IDX files, torchvision's download, or offline
- ``ptqlib.models``              SimpleNet (the MLP), SmallCNN, DepthwiseCNN; folding the input
  normalisation
- ``ptqlib.checkpoints``         safe checkpoint files; the FP32 checkpoint
- ``ptqlib.training``            training and the cached FP32 baselines
- ``ptqlib.quantization``        scale, zero-point, quantize / dequantize, error metrics
- ``ptqlib.observers``           observers (a package: base, minmax, histogram, l2_search)
- ``ptqlib.batchnorm``           folding BatchNorm into the conv or linear before it
- ``ptqlib.fusion``              which modules run as one integer step; the quantization points
- ``ptqlib.calibration``         observers on exactly those points
- ``ptqlib.integer_arithmetic``  the int32 accumulator (bias, zero-point correction) and its
  fixed-point requantization
- ``ptqlib.ort_arithmetic``      ONNX Runtime's float32 requantization, the other strategy
- ``ptqlib.int8_gemm``           int8 carriers and the one GEMM entry point
- ``ptqlib.plan``                each fused step with its input, weight and output qparams
- ``ptqlib.int8_layers``         the integer Linear and Conv2d (plain, depthwise)
- ``ptqlib.int8_pooling``        max-pool and global average pool on integers
- ``ptqlib.int8_model``          the INT8 model and ``convert`` (the MLP's and the CNN's)
- ``ptqlib.ptq``                 fold, calibrate, convert: post-training quantization in one
  call
- ``ptqlib.fake_quant``          the quantized model simulated in float
- ``ptqlib.packing``             sub-8-bit integers packed into bytes (the file format's)
- ``ptqlib.int8_checkpoint``     the INT8 checkpoint format
- ``ptqlib.evaluation``          accuracy, agreement, McNemar's test and latency
- ``ptqlib.equalization``        cross-layer equalization and bias absorption (data-free PTQ)
- ``ptqlib.debugging``           the PTQ debugging procedure, on partly fake-quantized models

Alternative flows, backends and tooling are one level down:

- ``ptqlib.fast``                the same integers, fast (``model``, ``folding``, ``conv``,
  ``profiling``)
- ``ptqlib.lowbit``              2-8 bits (``rounding``, ``weights``, ``layer_errors``)
- ``ptqlib.qat``                 quantization-aware training, the contrast to PTQ
- ``ptqlib.deploy``              ONNX export, ONNX Runtime, ORT's quantizer; the model as C
  (``c_export``, ``c_runtime``; notebook 10)
- ``ptqlib.reference``           PyTorch's own PTQ (torch.ao eager mode, torchao PT2E)
- ``ptqlib.formats``             number formats beyond integers: FP8, MX, NVFP4, group-wise
  INT4, codebooks; their checkpoint and the hardware that runs them (notebook 12)
- ``ptqlib.app``                 the command line (``cli``, ``commands``), ``quantize``,
  ``pipeline``, ``report``, ``model_files``
- ``ptqlib.classroom``           the tools of a class: ``checkers`` (known-answer checks of a
  student's code, one module a notebook), ``exercises``, ``grade``; the core never imports it

Around them: ``ptqlib.paths`` (where files go), ``ptqlib.hardware`` (what CPU this is),
``ptqlib.figures`` (saving figures) and ``ptqlib.digests`` (the SHA-256 digest every saved
file carries and every load checks), used from the first notebook on.

The functions a notebook uses most are importable from the package itself, e.g.
``from ptqlib import calibrate, convert``.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# ``from ptqlib import calibrate`` imports ptqlib.calibration (and torch) only when a name is
# first asked for: ``import ptqlib`` itself stays instant, so ``python -m ptqlib --help``
# answers at once (importing torch takes seconds). PEP 562's module ``__getattr__``.
_EXPORTS = {
    "SimpleNet": "ptqlib.models",
    "accuracy": "ptqlib.evaluation",
    "agreement": "ptqlib.evaluation",
    "calibrate": "ptqlib.calibration",
    "calibration_images": "ptqlib.data",
    "confusion_matrix": "ptqlib.evaluation",
    "convert": "ptqlib.int8_model",
    "dequantize": "ptqlib.quantization",
    "fake_quantize": "ptqlib.quantization",
    "load_fp32": "ptqlib.checkpoints",
    "load_int8": "ptqlib.int8_checkpoint",
    "load_mnist": "ptqlib.data",
    "load_or_train_baseline": "ptqlib.training",
    "post_training_quantize": "ptqlib.ptq",
    "predict": "ptqlib.evaluation",
    "qparams_from_range": "ptqlib.quantization",
    "quantize": "ptqlib.quantization",
    "save_fp32": "ptqlib.checkpoints",
    "save_int8": "ptqlib.int8_checkpoint",
    "simulate": "ptqlib.fake_quant",
    "train": "ptqlib.training",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ptqlib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
