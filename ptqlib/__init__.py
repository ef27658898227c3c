"""ptqlib: post-training quantization of a small MNIST network, from scratch.

The concepts a reader learns are flat modules, in the order the notebooks use them (imports
only go forward along this list; the one import of a sub-package from the core is
``int8_checkpoint`` packing sub-8-bit weights with ``lowbit.packing``):

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
- ``ptqlib.integer_arithmetic``  requantization (fixed point, float32), int32 bias, the GEMM
- ``ptqlib.plan``                each fused step with its input, weight and output qparams
- ``ptqlib.int8_layers``         the integer Linear and Conv2d (plain, depthwise)
- ``ptqlib.int8_pooling``        max-pool and global average pool on integers
- ``ptqlib.int8_model``          the INT8 model and ``convert`` (the MLP's and the CNN's)
- ``ptqlib.fake_quant``          the quantized model simulated in float
- ``ptqlib.int8_checkpoint``     the INT8 checkpoint format
- ``ptqlib.evaluation``          accuracy, agreement, McNemar's test and latency
- ``ptqlib.equalization``        cross-layer equalization and bias absorption (data-free PTQ)
- ``ptqlib.debugging``           the PTQ debugging procedure, on partly fake-quantized models

Alternative flows, backends and tooling are one level down:

- ``ptqlib.fast``                the same integers, fast (``model``, ``folding``, ``cnn``,
  ``profiling``)
- ``ptqlib.lowbit``              2-8 bits (``packing``, ``rounding``, ``weights``, ``diagnose``,
  ``qat``)
- ``ptqlib.deploy``              ONNX export, ONNX Runtime and its arithmetic, ORT's quantizer;
  the model as one C file (``c_export``, ``c_runtime``; notebook 10)
- ``ptqlib.reference``           PyTorch's own PTQ (torch.ao eager mode, torchao PT2E)
- ``ptqlib.app``                 the command line (``cli``, ``commands``), ``pipeline``,
  ``quantize``
- ``ptqlib.classroom``           the tools of a class: ``checkers`` (each exercise defined once,
  its known-answer checks, one module a notebook), ``cells``, ``grade`` in a sandbox; the
  core never imports it

Around them: ``ptqlib.paths`` (where files go), ``ptqlib.hardware`` (what CPU this is),
``ptqlib.figures`` (saving figures) and ``ptqlib.digests`` (the SHA-256 digest every saved
file carries and every load checks), used from the first notebook on.

The functions a notebook uses most are importable from the package itself, e.g.
``from ptqlib import calibrate, convert``.
"""

from ptqlib.calibration import calibrate
from ptqlib.checkpoints import load_fp32, save_fp32
from ptqlib.data import calibration_images, load_mnist
from ptqlib.evaluation import accuracy, agreement, confusion_matrix, predict
from ptqlib.fake_quant import simulate
from ptqlib.int8_checkpoint import load_int8, load_model, save_int8
from ptqlib.int8_model import convert
from ptqlib.models import SimpleNet
from ptqlib.quantization import dequantize, fake_quantize, qparams_from_range, quantize
from ptqlib.training import load_or_train_baseline, train

__version__ = "0.1.0"

__all__ = [
    "SimpleNet",
    "accuracy",
    "agreement",
    "calibrate",
    "calibration_images",
    "confusion_matrix",
    "convert",
    "dequantize",
    "fake_quantize",
    "load_fp32",
    "load_int8",
    "load_model",
    "load_mnist",
    "load_or_train_baseline",
    "predict",
    "qparams_from_range",
    "quantize",
    "save_fp32",
    "save_int8",
    "simulate",
    "train",
]
