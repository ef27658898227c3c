"""ptqlib: post-training quantization of a small MNIST network, from scratch.

One module per stage of the pipeline, in the order the notebooks use them:

- ``ptqlib.data``          MNIST from IDX files, torchvision's download, or offline
- ``ptqlib.models``        SimpleNet, the 784-128-64-10 MLP
- ``ptqlib.train``         training, checkpoints, the cached FP32 baseline
- ``ptqlib.quantization``  scale, zero-point, quantize / dequantize, error metrics
- ``ptqlib.observers``     observers that record ranges and choose qparams
- ``ptqlib.calibrate``     attaching observers to a model and running calibration
- ``ptqlib.convert``       the INT8 model with integer-only inference
- ``ptqlib.reference``     the same model through PyTorch's eager-mode PTQ
- ``ptqlib.evaluate``      accuracy, agreement, size and latency
"""

__version__ = "0.1.0"
