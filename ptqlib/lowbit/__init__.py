"""Below 8 bits (notebook 06): where post-training quantization starts to break.

- ``ptqlib.lowbit.rounding``      nearest, MSE clipping, bias correction, AdaRound, GPTQ
- ``ptqlib.lowbit.weights``       2-8 bit weights and 4-8 bit activations end to end
- ``ptqlib.lowbit.layer_errors``  each layer's error against FP32, sensitivity, mixed
  precision (``python -m ptqlib layer-errors``)

Sub-8-bit weights are stored packed (``ptqlib.packing``, part of the INT8 file format);
quantization-aware training, the contrast, is ``ptqlib.qat``.
"""
