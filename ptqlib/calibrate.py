"""Calibration: run a few batches through the FP32 model with observers attached.

Static quantization needs a scale and zero-point for every tensor the INT8 model will
hold, fixed before inference. Weights are known; activations are not, so we *calibrate*:
feed representative images through the float model and let an observer (see
``ptqlib.observers``) watch every tensor that will be quantized:

- ``"input"``: the model's input (for SimpleNet also the Flatten output: same values);
- the output of every ``nn.Linear`` and every ``nn.ReLU``, by module name, in the order
  they run (SimpleNet: ``fc1, relu1, fc2, relu2, fc3``);
- the weight of every ``nn.Linear`` (and ``nn.Conv2d``): ``"<name>.weight"`` (observed
  once, not per batch).

With ``points`` (a list of module names) only those modules' outputs are observed, besides
the input: after fusion (notebook 07: conv+BN+ReLU is one quantized step) the output of a
fused conv is not a quantization point, only the ReLU's is. The weights of every Linear and
Conv2d are observed either way.

The observers are attached with forward hooks, so the model class is not edited, and
the hooks are removed afterwards, even after an error. The model comes back exactly as
it was: same parameters, same train/eval mode, no hooks left.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from ptqlib.observers import make_observer
from ptqlib.quantization import QParams, check_finite

# Activations: unsigned 8-bit, affine (what PyTorch's x86 and ARM backends expect).
ACTIVATION_DEFAULTS = {"dtype": torch.uint8, "symmetric": False}
# Weights: signed 8-bit, symmetric (zero-point 0 keeps the integer matmul simple),
# one scale per output neuron (ch_axis=0 of a Linear weight [out, in]).
WEIGHT_DEFAULTS = {"dtype": torch.int8, "symmetric": True}
PER_CHANNEL_DEFAULTS = {"ch_axis": 0}
OBSERVED_MODULES = (nn.Linear, nn.ReLU)
WEIGHTED_MODULES = (nn.Linear, nn.Conv2d)


@dataclass
class Calibration:
    """The result: qparams and the observer that chose them, for every quantized tensor.

    Keys: ``"input"``, then every Linear/ReLU output by module name in run order, then
    ``"<linear>.weight"`` for every Linear (and Conv2d).
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
    points: Sequence[str] | None = None,
) -> dict[str, nn.Module]:
    """Attach observers made by the two factories, run ``images`` through, detach them.

    ``points`` names the modules whose outputs are observed (default: every Linear and
    ReLU); the weights of every Linear and Conv2d are observed in any case.

    Works with any observer module called as ``observer(tensor)``, ptqlib's or
    torch.ao's (the benchmark and the notebook use both). Returns the observers by key,
    in the order described in the module docstring.
    """
    _check_arguments(model, images, batch_size)
    watched = _watched_modules(model, points)
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
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()  # calibrate the model as it will run: dropout off, batch-norm frozen
        batches = images.split(batch_size)
        bar = tqdm(batches, desc="calibrating", unit="batch", disable=not progress)
        with torch.no_grad():
            for batch in bar:
                try:
                    model(batch)
                except RuntimeError as error:  # e.g. a shape the model cannot take
                    first_line = str(error).splitlines()[0]
                    raise ValueError(
                        f"images: the model cannot run a batch of shape {tuple(batch.shape)}: "
                        f"{first_line}"
                    ) from error
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training

    never_ran = [name for name in watched if name not in run_order]
    if never_ran:
        raise ValueError(f"model: module(s) {', '.join(never_ran)} never ran during calibration")
    ordered = {"input": observers["input"]}
    ordered.update({name: observers[name] for name in run_order})
    with torch.no_grad():
        for name, module in model.named_modules():
            if name and isinstance(module, WEIGHTED_MODULES):
                ordered[f"{name}.weight"] = make_weight_observer()
                ordered[f"{name}.weight"](module.weight.detach())
    return ordered


def calibrate(
    model: nn.Module,
    images: torch.Tensor,
    activation_observer: str = "histogram",
    weight_observer: str = "per_channel_minmax",
    batch_size: int = 100,
    activation_kwargs: dict | None = None,
    weight_kwargs: dict | None = None,
    progress: bool = True,
    points: Sequence[str] | None = None,
) -> Calibration:
    """Calibrate ``model`` on ``images`` ``[N, ...]`` and return the qparams of every tensor.

    ``activation_observer`` / ``weight_observer`` name observers of
    ``ptqlib.observers.OBSERVERS``; their keyword arguments default to uint8 affine for
    activations and int8 symmetric (per-channel along ``ch_axis=0`` for a per-channel
    observer) for weights, and ``activation_kwargs`` / ``weight_kwargs`` override them.
    ``images`` run through in batches of ``batch_size`` with a tqdm bar (``progress``).
    ``points`` limits the observed outputs to those modules (see :func:`observe`).
    """
    if isinstance(activation_observer, str) and activation_observer.startswith("per_channel"):
        raise ValueError(
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
        points=points,
    )
    qparams = {name: observer.qparams() for name, observer in observers.items()}
    return Calibration(qparams=qparams, observers=observers)


def _watched_modules(model: nn.Module, points: Sequence[str] | None) -> dict[str, nn.Module]:
    """The modules whose outputs are observed: ``points`` by name, else every Linear/ReLU."""
    if points is None:
        return {
            name: module
            for name, module in model.named_modules()
            if name and isinstance(module, OBSERVED_MODULES)
        }
    modules = dict(model.named_modules())
    unknown = [name for name in points if not name or name not in modules]
    if isinstance(points, str) or unknown:
        raise ValueError(
            f"points: expected a list of module names of the model, got {points!r} "
            f"(the model has {', '.join(name for name in modules if name)})"
        )
    return {name: modules[name] for name in points}


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
    if images.dim() < 2:
        raise ValueError(
            f"images: expected a batch [N, ...] of at least 2 dimensions, got shape "
            f"{tuple(images.shape)}"
        )
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive whole number, got {batch_size!r}")
