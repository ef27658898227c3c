"""Deployment (notebooks 08, 10 and 11): the INT8 model outside PyTorch.

- ``ptqlib.deploy.onnx_export``     the INT8 model as an ONNX QDQ graph
- ``ptqlib.deploy.onnx_runtime``    running and checking it in ONNX Runtime
- ``ptqlib.deploy.onnx_figure``     drawing an ONNX graph
- ``ptqlib.deploy.ort_quantizer``   ONNX Runtime's own ``quantize_static``, for comparison
- ``ptqlib.deploy.u8s8_saturation`` why ORT's int8-weight kernels saturate without VNNI
- ``ptqlib.deploy.c_export``        the model as dependency-free C files, their digest (notebook 10)
- ``ptqlib.deploy.c_graph``         the layers as the C computes them: shapes, folded constants
- ``ptqlib.deploy.c_source``        the portable C kernels (Linear, conv, depthwise, pools)
- ``ptqlib.deploy.c_files``         the header, the portable source, main.c
- ``ptqlib.deploy.c_memory``        the liveness plan of the activations (the arena)
- ``ptqlib.deploy.c_avx2``          the same forward pass with packed weights for x86 AVX2 + FMA
- ``ptqlib.deploy.c_avx2_packing``  its packed weights, requantization constants and arena
- ``ptqlib.deploy.c_runtime``       compiling it with the system C compiler, calling it from Python
- ``ptqlib.deploy.c_call``          the light call: a CPython extension, pointers checked once
- ``ptqlib.deploy.c_cache``         the private per-user cache of compiled libraries
- ``ptqlib.deploy.c_peaks``         the measured peaks of one core, instruction counts of a build
- ``ptqlib.deploy.c_latency``       PyTorch, ONNX Runtime and C timed in one interleaved run
- ``ptqlib.deploy.c_budget``        flash, RAM (the arena) and an energy estimate per inference
- ``ptqlib.deploy.mcu``             the C as Cortex-M firmware, run in QEMU (notebook 11)
"""
