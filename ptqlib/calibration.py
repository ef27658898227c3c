"""Calibration: run a few batches through the FP32 model with observers attached.

Static quantization needs a scale and zero-point for every tensor the INT8 model will
hold, fixed before inference. Weights are known; activations are not, so we *calibrate*:
feed representative images through the float model and let an observer (see
``ptqlib.observers``) watch every tensor that will be quantized.

Which tensors are those? The INT8 model **fuses** each Linear with the ReLU directly after
it: the pair runs as one integer step whose output is clamped at the integer of real 0
(the ReLU becomes the lower clamp), so the Linear's own output is never stored as integers
and needs no qparams. The quantization points that remain (:func:`quantization_points`):

- ``"input"``: the model's input (for SimpleNet also the Flatten output: same values);
- the output of every fused step, named after its last module, in run order
  (SimpleNet: ``relu1, relu2, fc3``; see ``ptqlib.fusion``, which also fuses
  Conv2d + BatchNorm + ReLU);
- the weight of every ``nn.Linear`` and ``nn.Conv2d``: ``"<name>.weight"`` (observed once,
  not per batch).

The observers are attached with forward hooks, so the model class is not edited, and
the hooks are removed afterwards, even after an error. The model comes back exactly as
it was: same parameters, same train/eval mode, no hooks left.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from ptqlib.errors import InputError
from ptqlib.fusion import quantization_points
from ptqlib.observers import make_observer
from ptqlib.quantization import QParams, check_finite

# Activations: unsigned 8-bit, affine (what PyTorch's x86 and ARM backends expect).
ACTIVATION_DEFAULTS = {"dtype": torch.uint8, "symmetric": False}
# Weights: signed 8-bit, symmetric (zero-point 0 keeps the integer matmul simple),
# one scale per output neuron (ch_axis=0 of a Linear weight [out, in]).
WEIGHT_DEFAULTS = {"dtype": torch.int8, "symmetric": True}
PER_CHANNEL_DEFAULTS = {"ch_axis": 0}
WEIGHTED_MODULES = (nn.Linear, nn.Conv2d)


@dataclass
class Calibration:
    """The result: qparams and the observer that chose them, for every quantized tensor.

    Keys: the :func:`~ptqlib.fusion.quantization_points` in run order, then
    ``"<layer>.weight"`` for every Linear and Conv2d.
    """

    qparams: dict[str, QParams]
    observers: dict[str, nn.Module]


def observe(
    model: nn.Module,
    images: torch.Tensor,
    make_activation_observer: Callable[[], nn.Module],
    make_weight_observer: Callable[[], nn.Module],
    batch_size: int = 100,
    progress: bool = True,
) -> dict[str, nn.Module]:
    """Attach observers made by the two factories, run ``images`` through, detach them.

    Works with any observer module called as ``observer(tensor)``, ptqlib's or
    torch.ao's (the benchmark and the notebook use both). Returns the observers by key,
    in the order described in the module docstring.
    """
    _check_arguments(model, images, batch_size)
    points = quantization_points(model)[1:]
    watched = {name: model.get_submodule(name) for name in points}
    observers = {"input": make_activation_observer()}
    observers.update({name: make_activation_observer() for name in watched})
    run_order: list[str] = []

    def watch_output(name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if name not in run_order:
                run_order.append(name)
            observers[name](output)

        return hook

    def watch_input(module: nn.Module, inputs: tuple) -> None:
        observers["input"](inputs[0])

    handles = [model.register_forward_pre_hook(watch_input)]
    handles += [
        module.register_forward_hook(watch_output(name)) for name, module in watched.items()
    ]
    try:
        _run_batches(model, images, batch_size, progress)
    finally:
        for handle in handles:
            handle.remove()

    never_ran = [name for name in watched if name not in run_order]
    if never_ran:
        raise InputError(f"model: module(s) {', '.join(never_ran)} never ran during calibration")
    ordered = {"input": observers["input"]}
    ordered.update({name: observers[name] for name in run_order})
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, WEIGHTED_MODULES):
                ordered[f"{name}.weight"] = make_weight_observer()
                ordered[f"{name}.weight"](module.weight.detach())
    return ordered


def _run_batches(model: nn.Module, images: torch.Tensor, batch_size: int, progress: bool) -> None:
    """Run ``images`` through ``model`` in eval mode, batch by batch, without gradients; the
    train/eval mode of every module is restored afterwards, even after an error."""
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()  # calibrate the model as it will run: dropout off, batch-norm frozen
        batches = images.split(batch_size)
        bar = tqdm(batches, desc="calibrating", unit="batch", ncols=80, disable=not progress)
        with torch.no_grad():
            for batch in bar:
                try:
                    model(batch)
                except RuntimeError as error:  # e.g. a shape the model cannot take
                    first_line = str(error).splitlines()[0]
                    raise InputError(
                        f"images: the model cannot run a batch of shape {tuple(batch.shape)}: "
                        f"{first_line}"
                    ) from error
    finally:
        for module, training in modes.items():
            module.training = training


def calibrate(
    model: nn.Module,
    images: torch.Tensor,
    activation_observer: str = "histogram",
    weight_observer: str = "per_channel_minmax",
    batch_size: int = 100,
    activation_kwargs: dict | None = None,
    weight_kwargs: dict | None = None,
    progress: bool = True,
) -> Calibration:
    """Calibrate ``model`` on ``images`` ``[N, ...]`` and return the qparams of every tensor.

    ``activation_observer`` / ``weight_observer`` name observers of
    ``ptqlib.observers.OBSERVERS``; their keyword arguments default to uint8 affine for
    activations and int8 symmetric (per-channel along ``ch_axis=0`` for a per-channel
    observer) for weights, and ``activation_kwargs`` / ``weight_kwargs`` override them.
    ``images`` run through in batches of ``batch_size`` with a tqdm bar (``progress``).
    """
    if isinstance(activation_observer, str) and activation_observer.startswith("per_channel"):
        raise InputError(
            f"activation_observer: {activation_observer!r} gives one range per channel, but "
            "activations get one range per tensor; use e.g. 'minmax' or 'histogram'"
        )
    activation_settings = _settings(activation_observer, ACTIVATION_DEFAULTS, activation_kwargs)
    weight_settings = _settings(weight_observer, WEIGHT_DEFAULTS, weight_kwargs)
    # Make one of each now, so that a bad name or argument fails before any work.
    make_observer(activation_observer, **activation_settings)
    make_observer(weight_observer, **weight_settings)
    observers = observe(
        model,
        images,
        lambda: make_observer(activation_observer, **activation_settings),
        lambda: make_observer(weight_observer, **weight_settings),
        batch_size=batch_size,
        progress=progress,
    )
    qparams = {name: observer.qparams() for name, observer in observers.items()}
    return Calibration(qparams=qparams, observers=observers)


def _settings(observer: str, defaults: dict, overrides: dict | None) -> dict:
    """The observer's keyword arguments: the defaults, then the caller's overrides."""
    if overrides is not None and not isinstance(overrides, dict):
        raise TypeError(f"observer kwargs: expected a dict or None, got {type(overrides).__name__}")
    settings = dict(defaults)
    if observer == "per_channel_minmax":
        settings.update(PER_CHANNEL_DEFAULTS)
    settings.update(overrides or {})
    return settings


def _check_arguments(model: nn.Module, images: torch.Tensor, batch_size: int) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    check_finite(images, "images")
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InputError(
                f"model: {name} holds NaN or Inf, so every activation after it would too; "
                "calibrate a model with finite weights (a diverged training run? retrain it)"
            )
    if images.dim() < 2:
        raise InputError(
            f"images: expected a batch [N, ...] of at least 2 dimensions, got shape "
            f"{tuple(images.shape)}"
        )
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"batch_size: expected a positive whole number, got {batch_size!r}")
