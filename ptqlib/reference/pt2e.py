"""PyTorch 2's maintained quantization flow (PT2E, in ``torchao``), next to ptqlib.

``torch.ao.quantization``'s eager mode (``ptqlib.reference.torch_eager``) is deprecated; its
successor quantizes a *graph* captured by ``torch.export`` and lets ``torch.compile`` (Inductor)
generate the INT8 kernels::

    torch.export.export(model)        the model as an ATen graph (batch dimension dynamic)
    prepare_pt2e(graph, quantizer)    observers where the X86InductorQuantizer wants them
    graph(images)                     calibrate: the same images as ptqlib
    convert_pt2e(graph)               quantize_per_tensor / dequantize_* around aten.linear
    torch.compile(graph)              Inductor fuses each q/dq + linear into an INT8 kernel

Like ``ptqlib.reference.torch_eager``, this is the only module of ptqlib that touches these
APIs, and their warnings (experimental-API notes, Inductor's internals) are filtered in one place,
:func:`quiet_pt2e`.

**Compilation.** Inductor compiles on the first call (about 2-3 s on an idle machine,
much longer on a busy one or with a cold cache; :class:`CompiledModel` records it). It
fuses a quantized linear into one oneDNN kernel only under ``torch.no_grad()`` with
Inductor's *freezing* on (weights become constants); otherwise it falls back to
dequantize + FP32 matmul. :class:`CompiledModel` does both.

**CPUs.** The quantizer's default config uses 8-bit activations. Without VNNI, x86 INT8
kernels add pairs of uint8 x int8 products in int16, which can saturate; the quantizer's
documentation then asks for ``reduce_range=True`` (7-bit activations), which
:func:`pt2e_quantize` chooses from the CPU's flags unless told otherwise.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from ptqlib.errors import InputError
from ptqlib.hardware import cpu_has_vnni  # notebook 08 imports it from here too


@contextlib.contextmanager
def quiet_pt2e() -> Iterator[None]:
    """Silence the warnings torchao, torch.export and Inductor print on every use.

    They are about APIs and internals, not about the model (e.g. Inductor's "To copy
    construct from a tensor" from its oneDNN lowering, torch's note on torchao's enums); a
    notebook cell would otherwise drown in them.
    """
    # torch's log lines: the enum note on importing torchao, "No CUDA runtime is found".
    names = ("torch.utils._pytree", "torch.utils.cpp_extension")
    loggers = [logging.getLogger(name) for name in names]
    previous_levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            yield
    finally:
        for logger, level in zip(loggers, previous_levels, strict=True):
            logger.setLevel(level)


def pt2e_quantize(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = 100,
    reduce_range: bool | None = None,
) -> torch.fx.GraphModule:
    """The PT2E INT8 graph of ``model`` (not yet compiled), calibrated on ``images``.

    The X86InductorQuantizer's default: uint8 affine activations with the histogram observer,
    int8 symmetric per-channel weights. ``reduce_range`` (7-bit activations) defaults to True
    exactly on CPUs without VNNI. ``model`` is not changed.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(images, torch.Tensor) or images.dim() < 2 or len(images) < 2:
        raise InputError(f"images: expected a batch of at least 2 images, got {images!r:.60}")
    if reduce_range is None:
        reduce_range = not cpu_has_vnni()
    with quiet_pt2e():
        from torchao.quantization.pt2e import allow_exported_model_train_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )

        float_model = copy.deepcopy(model).eval()
        batch = torch.export.Dim.DYNAMIC  # any batch size, not the calibration's
        exported = torch.export.export(
            float_model, (images[:batch_size].float(),), dynamic_shapes=({0: batch},)
        ).module()
        quantizer = X86InductorQuantizer()
        config = get_default_x86_inductor_quantization_config(reduce_range=reduce_range)
        quantizer.set_global(config)
        prepared = prepare_pt2e(exported, quantizer)
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                prepared(images[start : start + batch_size].float())
        converted = convert_pt2e(prepared)
        # Lets ptqlib.evaluation call .eval() on it. The first .eval() rewrites the graph's
        # code (torchao swaps dropout/BatchNorm patterns and recompiles the module, even
        # when it has neither); done after torch.compile, dynamo would compile the new code
        # again on the next call, outside CompiledModel's freezing patch, and the INT8
        # kernels would no longer be fused. So the graph goes to eval mode here, once;
        # later .eval() calls change nothing.
        allow_exported_model_train_eval(converted)
        converted.eval()
    return converted


def pt2e_activation_qparams(converted: torch.fx.GraphModule) -> list[tuple[float, int]]:
    """The ``(scale, zero_point)`` of every ``quantize_per_tensor`` in the converted graph,
    in graph order: the input, then each Linear(+ReLU)'s output."""
    found = []
    for node in converted.graph.nodes:
        if node.target == torch.ops.quantized_decomposed.quantize_per_tensor.default:
            scale, zero_point = node.args[1], node.args[2]
            found.append((float(scale), int(zero_point)))
    return found


class CompiledModel(nn.Module):
    """A PT2E graph compiled by Inductor, called the way it runs fast: under no_grad, compiled
    with freezing. ``compile_seconds[batch_size]`` holds the first call's time per batch size
    (tracing, Inductor's code generation and the C++ compiler; cached on disk afterwards).
    ``dynamic=True`` compiles one graph for every batch size (batch 1 gets its own), instead
    of one per batch size."""

    def __init__(self, converted: torch.fx.GraphModule, dynamic: bool = True) -> None:
        super().__init__()
        self.converted = converted
        # A fresh wrapper object: dynamo caches compiled code per wrapped function.
        self.compiled = torch.compile(converted, dynamic=dynamic)
        self.compile_seconds: dict[int, float] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch_size = images.shape[0]
        with torch.no_grad():
            if batch_size in self.compile_seconds:
                return self.compiled(images)
            start = time.perf_counter()
            with quiet_pt2e(), torch._inductor.config.patch(freezing=True):
                logits = self.compiled(images)
            self.compile_seconds[batch_size] = time.perf_counter() - start
            return logits


@dataclass
class PT2EResult:
    """The compiled PT2E model, the graph it compiles, and how long each step took (s)."""

    model: CompiledModel
    converted: torch.fx.GraphModule
    quantize_seconds: float
    compile_seconds: dict[int, float] = field(default_factory=dict)


def pt2e_compiled_model(
    model: nn.Module,
    images: torch.Tensor,
    batch_sizes: tuple[int, ...] = (),
    reduce_range: bool | None = None,
    dynamic: bool = True,
) -> PT2EResult:
    """:func:`pt2e_quantize`, then :class:`CompiledModel`, compiled ahead for ``batch_sizes``
    (other batch sizes compile on their first call, if at all: see ``dynamic``)."""
    start = time.perf_counter()
    converted = pt2e_quantize(model, images, reduce_range=reduce_range)
    quantize_seconds = time.perf_counter() - start
    compiled = CompiledModel(converted, dynamic)
    for batch_size in batch_sizes:
        compiled(torch.zeros(batch_size, *images.shape[1:]))
    return PT2EResult(compiled, converted, quantize_seconds, compiled.compile_seconds)
