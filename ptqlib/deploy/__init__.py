"""Deployment (notebooks 08, 10 and 11): the INT8 model outside PyTorch.

- ``ptqlib.deploy.onnx_export``     the INT8 model as an ONNX QDQ graph
- ``ptqlib.deploy.onnx_runtime``    running and checking it in ONNX Runtime
- ``ptqlib.deploy.onnx_figure``     drawing an ONNX graph
- ``ptqlib.deploy.ort_quantizer``   ONNX Runtime's own ``quantize_static``, for comparison
- ``ptqlib.deploy.c_export``        the model as one dependency-free C file pair (notebook 10)
- ``ptqlib.deploy.c_source``        the C text it writes (integer kernels, VNNI path, main.c)
- ``ptqlib.deploy.c_runtime``       compiling it with the system C compiler, calling it via ctypes
- ``ptqlib.deploy.c_latency``       PyTorch, ONNX Runtime and C timed in one interleaved run
- ``ptqlib.deploy.c_budget``        flash, RAM (the arena) and an energy estimate per inference
- ``ptqlib.deploy.mcu``             the C as Cortex-M firmware, run in QEMU (notebook 11)
"""
