"""ptqlib: post-training quantization of a small MNIST network, from scratch.

One module per idea, in the order the notebooks use them (imports only go forward):

- ``ptqlib.data``                MNIST from IDX files, torchvision's download, or offline
- ``ptqlib.models``              SimpleNet (the MLP), SmallCNN; folding the input normalisation
- ``ptqlib.training``            training and the cached FP32 baselines
- ``ptqlib.checkpoints``         safe checkpoint files; the FP32 checkpoint
- ``ptqlib.quantization``        scale, zero-point, quantize / dequantize, error metrics
- ``ptqlib.observer_base``       the observer interface and its settings
- ``ptqlib.observers``           the min/max family and the registry (``make_observer``)
- ``ptqlib.histogram_observers`` histogram, percentile, entropy and MSE observers
- ``ptqlib.histogram_l2_search`` torch.ao's range search for the histogram observer
- ``ptqlib.batchnorm``           folding BatchNorm into the conv or linear before it
- ``ptqlib.fusion``              which modules run as one integer step; the quantization points
- ``ptqlib.calibration``         observers on exactly those points
- ``ptqlib.integer_arithmetic``  fixed-point multiplier, rounding shift, requantize, int32 bias
- ``ptqlib.conversion_plan``     each fused step with its input, weight and output qparams
- ``ptqlib.int8_model``          the INT8 model (integer-only layers) and ``convert``
- ``ptqlib.fast_int8``           the same integers, fast (folded constants, raw pixels in)
- ``ptqlib.int8_conv``           integer convolution and max-pool (notebook 07)
- ``ptqlib.int8_cnn``            the CNN's conversion and float simulation
- ``ptqlib.fast_int8_conv``      the CNN's fast path (same integers)
- ``ptqlib.fake_quant``          the quantized MLP simulated in float
- ``ptqlib.int8_checkpoint``     the INT8 checkpoint format
- ``ptqlib.packing``             sub-8-bit weights packed into bytes
- ``ptqlib.weight_rounding``     nearest, MSE clipping, bias correction, AdaRound, GPTQ
- ``ptqlib.low_bit``             2-8 bit weights and 4-8 bit activations end to end
- ``ptqlib.diagnose``            layer-by-layer error, sensitivity, mixed precision
- ``ptqlib.qat``                 quantization-aware fine-tuning, the contrast to PTQ
- ``ptqlib.reference``           the same model through PyTorch's eager-mode PTQ (torch.ao)
- ``ptqlib.reference_cnn``       the same for the CNN
- ``ptqlib.reference_pt2e``      PyTorch 2's export flow (torchao PT2E) and torch.compile
- ``ptqlib.runtime_arithmetic``  ONNX Runtime's float32 requantization
- ``ptqlib.onnx_export``         the INT8 model as an ONNX QDQ graph
- ``ptqlib.onnx_runtime``        running and checking it in ONNX Runtime
- ``ptqlib.ort_quantizer``       ONNX Runtime's own ``quantize_static``, for comparison
- ``ptqlib.evaluation``          accuracy, agreement, McNemar's test and latency
- ``ptqlib.profiling``           where an INT8 forward pass spends its time
- ``ptqlib.pipeline``            all of the above in one call; quantizing a checkpoint

Around them: ``ptqlib.paths`` (where files go), ``ptqlib.hardware`` (what CPU this is),
``ptqlib.figures`` (saving figures), ``ptqlib.onnx_figure`` (drawing an ONNX graph),
``ptqlib.checkers`` (known-answer checks of a student's own code, one module per notebook)
and ``ptqlib.cli`` (the command line).

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
