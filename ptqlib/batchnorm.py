"""BatchNorm folding: a convolution (or Linear) followed by BatchNorm becomes one layer.

In eval mode a BatchNorm is a fixed affine map per channel c, with the running mean mu_c and
variance var_c it learned during training, its scale gamma_c and shift beta_c::

    BN(z)_c = gamma_c (z_c - mu_c) / sqrt(var_c + eps) + beta_c

Write ``k_c = gamma_c / sqrt(var_c + eps)``. When ``z = W x + b`` comes from a convolution
or a Linear (W has output channel c along axis 0), channel c of its output is
``z_c = W_c . x + b_c`` (a dot product with the c-th filter), so::

    BN(z)_c = k_c (W_c . x + b_c - mu_c) + beta_c
            = (k_c W_c) . x + (k_c (b_c - mu_c) + beta_c)
            =     W'_c  . x +            b'_c

    W'_c = W_c gamma_c / sqrt(var_c + eps)                 (every weight of filter c)
    b'_c = (b_c - mu_c) gamma_c / sqrt(var_c + eps) + beta_c   (b_c = 0 without a bias)

One layer with weight W' and bias b' computes exactly what the two did, so the INT8 model
never needs a BatchNorm: folding happens before calibration and quantization, which then
see W' (see notebook 07 for what that does to the weight ranges).

A depthwise convolution (``groups`` = channels, weight ``[C, 1, k, k]``) has its output
channel c on axis 0 too, so the same formula folds it, filter by filter. Beware a channel whose
running variance is ~0 (its input was always 0, e.g. after a dead ReLU channel): its factor
becomes ``gamma_c / sqrt(eps)``, about ``316 gamma_c`` with eps = 1e-5. Harmless in float (the
filter multiplies zeros), but that one filter then sets a per-tensor weight scale for all the
others (notebook 09).

Two conditions. The BatchNorm must be in eval mode: in training mode it normalises with the
statistics of each batch, not the fixed running ones, and no fixed W', b' can do that. And
it must directly follow the layer it folds into: through a ReLU or a pooling in between,
the map is no longer affine.

The float results agree up to rounding: W' and b' are computed in float64 and stored in
float32, so the folded layer's output differs from the unfolded one by float32 rounding
(relative 1e-6 of the output's magnitude; the tests check 1e-4 absolute on SmallCNN's
logits).
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn

from ptqlib.errors import InputError

FOLDABLE_LAYERS = (nn.Conv2d, nn.Linear)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def fold_parameters(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W', b')``: ``W'_c = W_c gamma_c / sqrt(var_c + eps)`` and
    ``b'_c = (b_c - mu_c) gamma_c / sqrt(var_c + eps) + beta_c`` for every output channel c
    (axis 0 of ``weight``). Computed in float64, returned in ``weight``'s dtype."""
    channels = weight.shape[0]
    for name, tensor in (
        ("running_mean", running_mean),
        ("running_var", running_var),
        ("gamma", gamma),
        ("beta", beta),
    ):
        if tuple(tensor.shape) != (channels,):
            raise InputError(
                f"{name}: expected one value per output channel, shape ({channels},), "
                f"got {tuple(tensor.shape)}"
            )
    if bias is None:
        bias = torch.zeros(channels, dtype=weight.dtype)
    variance = running_var.double() + eps
    if not bool((variance > 0).all()):  # NaN too
        channel = int(torch.nonzero(~(variance > 0))[0])
        raise InputError(
            f"running_var: var + eps must be positive to fold (folding divides by its square "
            f"root), got {float(variance[channel]):g} in channel {channel}; set that running "
            "variance to a positive value or eps > 0"
        )
    factor = gamma.double() / torch.sqrt(variance)  # k_c
    # k_c multiplies every weight of filter c: shape [C, 1, 1, 1] for a conv, [C, 1] for a Linear.
    per_filter = factor.reshape(channels, *([1] * (weight.dim() - 1)))
    folded_weight = weight.double() * per_filter
    folded_bias = (bias.double() - running_mean.double()) * factor + beta.double()
    return folded_weight.to(weight.dtype), folded_bias.to(weight.dtype)


def fold_batchnorm(layer: nn.Conv2d | nn.Linear, batchnorm: nn.Module) -> nn.Conv2d | nn.Linear:
    """A new layer like ``layer`` (same shape, stride, padding...) that computes
    ``batchnorm(layer(x))`` in one step; ``layer`` and ``batchnorm`` are not changed."""
    if not isinstance(layer, FOLDABLE_LAYERS):
        raise InputError(
            f"layer: a BatchNorm folds into a Conv2d or a Linear, got {type(layer).__name__}"
        )
    if not isinstance(batchnorm, BATCHNORMS):
        raise TypeError(
            f"batchnorm: expected a BatchNorm1d or BatchNorm2d, got {type(batchnorm).__name__}"
        )
    if batchnorm.training:
        raise InputError(
            "batchnorm: is in training mode, where it normalises with each batch's own "
            "statistics; fold only a model in eval mode (call model.eval() first)"
        )
    if batchnorm.running_mean is None or batchnorm.running_var is None:
        raise InputError("batchnorm: has no running statistics (track_running_stats=False)")
    channels = layer.weight.shape[0]
    if batchnorm.num_features != channels:
        raise InputError(
            f"batchnorm: has {batchnorm.num_features} channels, but the layer before it "
            f"has {channels} outputs"
        )
    gamma = batchnorm.weight if batchnorm.affine else torch.ones(channels)
    beta = batchnorm.bias if batchnorm.affine else torch.zeros(channels)
    with torch.no_grad():
        weight, bias = fold_parameters(
            layer.weight.detach(),
            None if layer.bias is None else layer.bias.detach(),
            batchnorm.running_mean,
            batchnorm.running_var,
            gamma.detach(),
            beta.detach(),
            batchnorm.eps,
        )
        folded = _copy_with_bias(layer)
        folded.weight.copy_(weight)
        folded.bias.copy_(bias)
    return folded.eval()


def _copy_with_bias(layer: nn.Conv2d | nn.Linear) -> nn.Conv2d | nn.Linear:
    """A copy of ``layer`` that has a bias parameter (folding always creates one)."""
    copied = copy.deepcopy(layer)
    if copied.bias is None:
        copied.bias = nn.Parameter(torch.zeros(copied.weight.shape[0], dtype=layer.weight.dtype))
    return copied


def fold_model(model: nn.Sequential) -> nn.Sequential:
    """A copy of the Sequential ``model`` with every BatchNorm folded into the Conv2d or
    Linear right before it, and removed. The other children keep their names, so the
    quantization points keep theirs (SmallCNN: conv1, relu1, pool1, conv2, ..., fc).
    ``model`` is not changed.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(
            f"model: expected an nn.Sequential (like SmallCNN), got {type(model).__name__}"
        )
    children = list(model.named_children())
    folded: OrderedDict[str, nn.Module] = OrderedDict()
    for index, (name, module) in enumerate(children):
        if not isinstance(module, BATCHNORMS):
            folded[name] = copy.deepcopy(module)
            continue
        previous_name, previous = children[index - 1] if index > 0 else (None, None)
        if not isinstance(previous, FOLDABLE_LAYERS):
            after = (
                f"follows {previous_name!r} ({type(previous).__name__})"
                if previous_name
                else "is the first layer"
            )
            raise InputError(
                f"layer {name!r}: a BatchNorm folds only into the Conv2d or Linear right "
                f"before it, but it {after}"
            )
        try:
            folded[previous_name] = fold_batchnorm(previous, module)
        except InputError as error:  # say which BatchNorm of the model it is
            raise InputError(f"layer {name!r}: {error}") from error
    return nn.Sequential(folded).eval()


def has_batchnorm(model: nn.Module) -> bool:
    """Whether any BatchNorm is left in ``model``."""
    return any(isinstance(module, BATCHNORMS) for module in model.modules())
