"""Below 8 bits (notebook 06): where post-training quantization starts to break.

- ``ptqlib.lowbit.packing``   sub-8-bit weights packed into bytes
- ``ptqlib.lowbit.rounding``  nearest, MSE clipping, bias correction, AdaRound, GPTQ
- ``ptqlib.lowbit.weights``   2-8 bit weights and 4-8 bit activations end to end
- ``ptqlib.lowbit.diagnose``  layer-by-layer error, sensitivity, mixed precision
- ``ptqlib.lowbit.qat``       quantization-aware fine-tuning, the contrast to PTQ
"""
