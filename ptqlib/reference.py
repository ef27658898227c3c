"""PyTorch's own quantization, the reference ptqlib is checked against.

Everything that touches ``torch.ao.quantization`` or the quantized dtypes
(``torch.quint8``, ``torch.qint8``) lives in this module and nowhere else in ptqlib.
Both are deprecated in PyTorch 2.14 and warn on use. We still call them on purpose:
they are the established implementation that ptqlib's from-scratch version must agree
with. So their deprecation warnings are silenced here, in one place, and only around
the calls that raise them (see :func:`deprecated_api`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch

TORCH_DTYPES = {torch.uint8: torch.quint8, torch.int8: torch.qint8}


@contextlib.contextmanager
def deprecated_api() -> Iterator[None]:
    """Silence the deprecation warnings of torch.ao.quantization and the quantized dtypes.

    They are expected (we use these APIs as a reference on purpose) and would otherwise
    repeat in every test and notebook cell.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*deprecated.*", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


def torch_dtype(dtype: torch.dtype) -> torch.dtype:
    """The quantized dtype torch.ao uses for a plain integer dtype (uint8 -> quint8...)."""
    if dtype not in TORCH_DTYPES:
        raise TypeError(f"dtype: expected torch.uint8 or torch.int8, got {dtype}")
    return TORCH_DTYPES[dtype]


def torch_qscheme(symmetric: bool, per_channel: bool) -> torch.qscheme:
    """The torch qscheme for ptqlib's ``symmetric`` flag and per-channel choice."""
    if per_channel:
        return torch.per_channel_symmetric if symmetric else torch.per_channel_affine
    return torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine


def torch_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    dtype: torch.dtype,
    axis: int | None = None,
) -> torch.Tensor:
    """The integers ``torch.quantize_per_tensor`` / ``torch.quantize_per_channel`` store."""
    with deprecated_api():
        if axis is None:
            quantized = torch.quantize_per_tensor(
                x, float(scale), int(zero_point), torch_dtype(dtype)
            )
        else:
            quantized = torch.quantize_per_channel(
                x, scale.double(), zero_point.long(), axis, torch_dtype(dtype)
            )
        return quantized.int_repr()


def torch_observer(name: str, dtype: torch.dtype = torch.uint8, symmetric: bool = False, **kwargs):
    """A ``torch.ao.quantization`` observer configured with ptqlib's argument names.

    ``name`` is the class name ("MinMaxObserver", "HistogramObserver", ...); ``dtype`` and
    ``symmetric`` become torch's ``dtype`` and ``qscheme``; other arguments pass through.
    Call it, feed it batches, then ``calculate_qparams()`` inside :func:`deprecated_api`.
    """
    with deprecated_api():
        from torch.ao import quantization

        observer_class = getattr(quantization, name)
        per_channel = name.startswith("PerChannel")
        return observer_class(
            dtype=torch_dtype(dtype), qscheme=torch_qscheme(symmetric, per_channel), **kwargs
        )
