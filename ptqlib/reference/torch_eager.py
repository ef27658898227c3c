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
import copy
import platform
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from ptqlib.calibration import observe
from ptqlib.checkpoints import saved_size_bytes
from ptqlib.errors import InputError
from ptqlib.fusion import fusion_groups

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


@contextlib.contextmanager
def quantized_engine(engine: str) -> Iterator[None]:
    """Use the quantized ``engine`` (``x86``, ``qnnpack``...) inside the block and restore the
    previous one afterwards, so that no global setting leaks out of a reference call."""
    if engine not in torch.backends.quantized.supported_engines:
        raise InputError(
            f"engine: {engine!r} is not available here; "
            f"expected one of {torch.backends.quantized.supported_engines}"
        )
    previous = torch.backends.quantized.engine
    if previous == engine:  # the common case, and a model's every call: no switch at all
        yield
        return
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


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
            quantized = torch.quantize_per_channel(  # torch wants a non-negative axis
                x, scale.double(), zero_point.long(), axis % x.dim(), torch_dtype(dtype)
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


# --- eager-mode post-training quantization of a whole model ------------------------------------


class EagerQuantModel(nn.Module):
    """A float Sequential (e.g. SimpleNet) between a QuantStub and a DeQuantStub.

    torch.ao's eager mode needs the stubs to know where float tensors become quantized
    ones and back. ``body`` is a copy of the float model: the original is never changed.
    ``engine`` is the quantized engine it was converted with; running it selects that
    engine for the call only (see :func:`quantized_engine`).
    """

    def __init__(self, model: nn.Sequential) -> None:
        super().__init__()
        if not isinstance(model, nn.Sequential):
            raise TypeError(f"model: expected an nn.Sequential, got {type(model).__name__}")
        with deprecated_api():
            from torch.ao.quantization import DeQuantStub, QuantStub

            self.quant = QuantStub()
            self.dequant = DeQuantStub()
        self.body = copy.deepcopy(model).eval()
        self.engine = torch.backends.quantized.engine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with quantized_engine(self.engine):
            return self.dequant(self.body(self.quant(x)))


def default_quantized_engine() -> str:
    """The quantized engine for this CPU: ``x86`` (FBGEMM) on Intel/AMD, ``qnnpack`` on ARM."""
    is_arm = platform.machine().lower() in ("arm64", "aarch64")
    return "qnnpack" if is_arm else "x86"


# ptqlib's observer names and torch.ao's classes, where torch.ao has the same observer.
TORCH_ACTIVATION_OBSERVERS = {
    "minmax": "MinMaxObserver",
    "moving_average_minmax": "MovingAverageMinMaxObserver",
    "histogram": "HistogramObserver",
}


def eager_qconfig(
    reduce_range: bool = False, per_channel: bool = True, activation_observer: str = "minmax"
):
    """The QConfig that matches ptqlib's calibration.

    Activations: torch.ao's observer of the same name as ptqlib's ``activation_observer``
    (see ``TORCH_ACTIVATION_OBSERVERS``), uint8, affine (per tensor). Weights:
    ``PerChannelMinMaxObserver`` (or ``MinMaxObserver`` when ``per_channel`` is False),
    int8, symmetric. ``reduce_range`` uses 0..127 for activations, as torch's default
    x86 QConfig does.
    """
    if activation_observer not in TORCH_ACTIVATION_OBSERVERS:
        raise InputError(
            f"activation_observer: torch.ao has no {activation_observer!r} observer; "
            f"expected one of {sorted(TORCH_ACTIVATION_OBSERVERS)}"
        )
    with deprecated_api():
        from torch.ao import quantization
        from torch.ao.quantization import MinMaxObserver, PerChannelMinMaxObserver, QConfig

        activation_class = getattr(quantization, TORCH_ACTIVATION_OBSERVERS[activation_observer])
        activation = activation_class.with_args(
            dtype=torch.quint8, qscheme=torch.per_tensor_affine, reduce_range=reduce_range
        )
        if per_channel:
            weight = PerChannelMinMaxObserver.with_args(
                dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0
            )
        else:
            weight = MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
        return QConfig(activation=activation, weight=weight)


def eager_fusion_groups(model: nn.Sequential) -> list[list[str]]:
    """The modules eager mode fuses into one quantized module: every Linear or Conv2d with the
    BatchNorm and/or ReLU after it (torch folds the BatchNorm itself), the same fusion as
    ptqlib's (:func:`ptqlib.fusion.fusion_groups`)."""
    return [group for group in fusion_groups(model) if len(group) > 1]


@torch.no_grad()
def torch_eager_ptq(
    model: nn.Sequential,
    calibration_images: torch.Tensor,
    batch_size: int = 100,
    reduce_range: bool = False,
    per_channel: bool = True,
    engine: str | None = None,
    activation_observer: str = "minmax",
) -> EagerQuantModel:
    """PyTorch's own eager-mode PTQ of ``model`` (SimpleNet or SmallCNN): stubs, fuse
    Linear+ReLU and Conv+BatchNorm+ReLU, prepare, calibrate on ``calibration_images`` (in
    batches of ``batch_size``), convert.

    The quantized engine is set explicitly (``x86`` here, ``qnnpack`` on ARM; or
    ``engine``), because the quantized kernels it selects decide how the integer
    arithmetic is done. ``activation_observer`` names the observer as in ptqlib
    (see :func:`eager_qconfig`). Returns the converted model (its linears are
    ``torch.ao.nn.quantized`` modules holding qint8 weights).
    """
    if not isinstance(calibration_images, torch.Tensor) or calibration_images.numel() == 0:
        raise InputError("calibration_images: expected a non-empty tensor of images")
    engine = engine or default_quantized_engine()
    with quantized_engine(engine), deprecated_api():
        wrapped = EagerQuantModel(model)
        from torch.ao import quantization

        prefixed = [
            [f"body.{name}" for name in group] for group in eager_fusion_groups(wrapped.body)
        ]
        if prefixed:
            wrapped = quantization.fuse_modules(wrapped, prefixed)
        wrapped.qconfig = eager_qconfig(reduce_range, per_channel, activation_observer)
        prepared = quantization.prepare(wrapped)
        for start in range(0, len(calibration_images), batch_size):
            prepared(calibration_images[start : start + batch_size])
        return quantization.convert(prepared)


@torch.no_grad()
def torch_quantized_logits(
    quantized_model: EagerQuantModel, images: torch.Tensor
) -> tuple[torch.Tensor, float, int]:
    """The quantized logits before the DeQuantStub: their integers (``int_repr()``, a
    plain uint8 tensor), their scale and their zero-point."""
    with (
        quantized_engine(getattr(quantized_model, "engine", torch.backends.quantized.engine)),
        deprecated_api(),
    ):
        logits = quantized_model.body(quantized_model.quant(images))
        return logits.int_repr(), float(logits.q_scale()), int(logits.q_zero_point())


def torch_linear_weights(quantized_model: EagerQuantModel) -> dict[str, dict[str, torch.Tensor]]:
    """For every quantized linear of the converted model: its int8 weights (``int_repr()``),
    weight scales and zero-points (per channel or per tensor) and its float bias."""
    result = {}
    with deprecated_api():
        for name, module in quantized_model.body.named_children():
            if not hasattr(module, "weight") or not callable(module.weight):
                continue
            weight = module.weight()
            if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                scale = weight.q_per_channel_scales().float()
                zero_point = weight.q_per_channel_zero_points()
            else:
                scale = torch.tensor(weight.q_scale(), dtype=torch.float32)
                zero_point = torch.tensor(weight.q_zero_point())
            bias = module.bias()
            result[name] = {
                "weight": weight.int_repr(),
                "scale": scale,
                "zero_point": zero_point,
                "bias": bias.detach().clone() if bias is not None else None,
            }
    return result


def torch_state_dict_bytes(quantized_model: nn.Module) -> int:
    """Bytes of ``quantized_model``'s saved state_dict, in the same file format as
    ptqlib's checkpoints (:func:`ptqlib.checkpoints.saved_size_bytes`), so sizes compare."""
    with deprecated_api():
        return saved_size_bytes(quantized_model.state_dict())


def torch_calibrate(
    model: nn.Module,
    images: torch.Tensor,
    activation_observer: str = "HistogramObserver",
    weight_observer: str = "PerChannelMinMaxObserver",
    batch_size: int = 100,
    activation_kwargs: dict | None = None,
    weight_kwargs: dict | None = None,
    progress: bool = False,
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, nn.Module]]:
    """:func:`ptqlib.calibration.calibrate` with torch.ao's observers at the same points.

    Same hooks, same batches, same keys (the quantization points after fusion, every
    "<layer>.weight"); observers named by their torch.ao class. Activations default to
    uint8 affine, weights to int8 symmetric (the kwargs override them; per-channel
    observers default to ch_axis=0 as in torch.ao). Returns ``(qparams, observers)``:
    ``qparams[key] = (scale, zero_point)`` as torch.ao computes them (shape [1] per tensor).
    """

    activation_settings = {"dtype": torch.uint8, "symmetric": False, **(activation_kwargs or {})}
    weight_settings = {"dtype": torch.int8, "symmetric": True, **(weight_kwargs or {})}
    with deprecated_api():
        observers = observe(
            model,
            images,
            lambda: torch_observer(activation_observer, **activation_settings),
            lambda: torch_observer(weight_observer, **weight_settings),
            batch_size=batch_size,
            progress=progress,
        )
        qparams = {name: observer.calculate_qparams() for name, observer in observers.items()}
    return qparams, observers


def torch_histogram_range(observer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipping range ``(min, max)`` a torch.ao HistogramObserver chooses from its data.

    It is the result of its (private) L2 search ``_non_linear_param_search``, from which
    ``calculate_qparams`` computes the qparams.
    """
    if observer.min_val > observer.max_val:
        raise InputError("observer: it has seen no data yet")
    with deprecated_api():
        return observer._non_linear_param_search()


@torch.no_grad()
def torch_layer_outputs(
    quantized_model: EagerQuantModel, images: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The integers (``int_repr()``, plain uint8) of the quantized input and of the output
    of every child of the converted model, by name (``"input"``, ``"flatten"``, ``"fc1"``...)."""
    outputs = {}
    with (
        quantized_engine(getattr(quantized_model, "engine", torch.backends.quantized.engine)),
        deprecated_api(),
    ):
        x = quantized_model.quant(images)
        outputs["input"] = x.int_repr()
        for name, module in quantized_model.body.named_children():
            x = module(x)
            outputs[name] = x.int_repr()
    return outputs
