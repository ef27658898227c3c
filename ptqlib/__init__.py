"""ptqlib: post-training quantization of a small MNIST network, from scratch.

One module per stage of the pipeline, in the order the notebooks use them:

- ``ptqlib.data``          MNIST from IDX files, torchvision's download, or offline
- ``ptqlib.models``        SimpleNet, the 784-128-64-10 MLP
- ``ptqlib.train``         training, the FP32 checkpoint, the cached baseline
- ``ptqlib.quantization``  scale, zero-point, quantize / dequantize, error metrics
- ``ptqlib.observers``     observers that record ranges and choose qparams
- ``ptqlib.calibrate``     attaching observers to a model and running calibration
- ``ptqlib.convert``       the INT8 model with integer-only inference
- ``ptqlib.reference``     the same model through PyTorch's eager-mode PTQ
- ``ptqlib.evaluate``      accuracy, agreement and latency
- ``ptqlib.pipeline``      all of the above in one call (``python -m ptqlib pipeline``)

Around them: ``ptqlib.checkpoints`` (safe saving and loading), ``ptqlib.checkers``
(known-answer checks of a student's own implementation), ``ptqlib.plotting`` (figures)
and ``ptqlib.cli`` (the command line).
"""

__version__ = "0.1.0"
