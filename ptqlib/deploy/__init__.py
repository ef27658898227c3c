"""Deployment (notebook 08): the INT8 model outside PyTorch.

- ``ptqlib.deploy.ort_arithmetic``  ONNX Runtime's float32 requantization, as pure functions
- ``ptqlib.deploy.onnx_export``     the INT8 model as an ONNX QDQ graph
- ``ptqlib.deploy.onnx_runtime``    running and checking it in ONNX Runtime
- ``ptqlib.deploy.onnx_figure``     drawing an ONNX graph
- ``ptqlib.deploy.ort_quantizer``   ONNX Runtime's own ``quantize_static``, for comparison
"""
