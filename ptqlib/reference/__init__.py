"""The references ptqlib is checked against: PyTorch's own quantization tooling.

- ``ptqlib.reference.torch_eager``      the same model through torch.ao's eager-mode PTQ
- ``ptqlib.reference.torch_eager_cnn``  the same for the CNN
- ``ptqlib.reference.pt2e``             PyTorch 2's export flow (torchao PT2E) and torch.compile

All use of the deprecated ``torch.ao.quantization`` and quantized dtypes lives here.
"""
