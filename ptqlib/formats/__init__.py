"""Number formats beyond uniform integers (notebook 12), each written from its specification.

- ``minifloat``     floats of 4-8 bits from the bit pattern up: E4M3, E5M2 (FP8), E3M2, E2M3
  (FP6), E2M1 (FP4), E8M0 (the MX scale); round to nearest even, both overflow modes
- ``blocks``        blocks along the reduction axis, zero padding
- ``fp8``           FP8 with one FP32 scale per tensor
- ``microscaling``  OCP MX: MXFP8, MXFP6, MXFP4 (blocks of 32, E8M0 power-of-two scale)
- ``nvfp4``         NVFP4: E2M1 in blocks of 16, E4M3 scales, an FP32 tensor scale
- ``groupwise``     INT4 with one FP16 scale per group of 32 or 128
- ``codebook``      a 16-entry k-means codebook (Deep Compression) with 4-bit indices
- ``schemes``       the named formats ("mxfp4", "int4-g128", ...) and their bits per value
- ``simulation``    a model with its weights (and activations) in a format, in FP32
- ``scaled_mm``     an FP8 model on ``torch._scaled_mm``, PyTorch's FP8 GEMM
- ``checkpoint``    the ``"formats"`` checkpoint: the codes, packed, and the scales
- ``command``       ``python -m ptqlib quantize --format``, and what ``evaluate`` and
  ``layer-errors`` report for such a checkpoint
- ``hardware``      which hardware computes in which format, with sources

The core of ptqlib never imports this package; it imports only the core.
"""

# The formats by name, as plain data so that ``python -m ptqlib quantize --help`` lists them
# without importing torch; ``schemes.SCHEMES`` implements exactly these (a test checks it).
FORMAT_NAMES = (
    "fp8-e4m3",
    "fp8-e5m2",
    "mxfp8",
    "mxfp8-e5m2",
    "mxfp6",
    "mxfp6-e3m2",
    "mxfp4",
    "nvfp4",
    "int4-g32",
    "int4-g128",
    "kmeans-16",
)
