"""Rounding weights better than to nearest: GPTQ and AdaRound, layer by layer.

At 8 bits rounding each weight to its nearest grid point is all anyone needs. At 3 or 2
bits it is not: each weight's rounding error is small, but a layer's *output* is a sum of
hundreds of them, and their errors add up. What matters is not ``||W - W~||`` but the
error of the layer's output on real inputs ``X`` (``[N, in]``, one row per calibration
image)::

    L(W~) = || X W^T - X W~^T ||_F^2                 (the layer-wise reconstruction error)

Both methods below keep the grid (scale S per output channel, integers in
``quant_min..quant_max``) and choose the integers to make L small.

**GPTQ** (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers"; Optimal Brain Quantization of Frantar & Alistarh 2022). L is a
quadratic in each row w of W with Hessian ``H = 2 X^T X`` (the issue's ``2 X X^T`` with X
stored as [in, N]). Quantize the columns (input features) one at a time, in order; after
quantizing column j, the remaining columns are updated to compensate its error, which is
the optimal least-squares correction::

    err_j   = (w_j - q_j) / [H^-1]_jj
    w_k    <- w_k - err_j [H^-1]_jk        for every later column k > j

where ``H^-1`` is the inverse Hessian with the columns already done removed. GPTQ's trick
is that the rows of the upper Cholesky factor U of ``H^-1`` (``H^-1 = U^T U``) hold exactly
these successive inverses: row j of U, times U_jj, is row j of the inverse Hessian of the
columns j.. still to be quantized, so the update above is ``w_k -= (w_j - q_j) U_jk / U_jj``.
One Cholesky factorisation replaces 784 matrix inversions. H is
dampened first (``H + lambda mean(diag H) I``, lambda = 0.01) so that it is safely
invertible; an input that is always 0 (a dead pixel) gets ``H_jj = 1`` and its weights 0.

**AdaRound** (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training
Quantization"). Every weight may round down or up: ``W~ = S clamp(floor(W/S) + h(V), lo, hi)``
with a continuous relaxation ``h(V) = clamp(sigmoid(V) (zeta - gamma) + gamma, 0, 1)``
(the *rectified sigmoid*, zeta = 1.1, gamma = -0.1, so h reaches exactly 0 and 1). V is
learned with Adam to minimise::

    L(V) = mean_n || x_n W^T - x_n W~(V)^T ||^2 + lambda sum_ij (1 - |2 h(V_ij) - 1|^beta)

The regulariser pushes every h to 0 or 1; beta is annealed from 20 (gentle, lets h move)
down to 2 (strict), after a warm-up without it. At the end ``h >= 0.5`` rounds up.
"""

from __future__ import annotations

import torch

from ptqlib.errors import InputError
from ptqlib.quantization import QParams, check_finite

# AdaRound's rectified sigmoid stretches sigmoid to (gamma, zeta), then clips to [0, 1].
ZETA, GAMMA = 1.1, -0.1
GPTQ_DAMPENING = 0.01


# AdaRound's defaults: Adam steps per layer and the seed of its batches (the CLI's --seed).
ADAROUND_ITERATIONS = 400
ADAROUND_SEED = 0


def _check_layer(weight: torch.Tensor, inputs: torch.Tensor, qparams: QParams) -> None:
    check_finite(weight, "weight")
    check_finite(inputs, "inputs")
    if weight.dim() != 2 or inputs.dim() != 2 or inputs.shape[1] != weight.shape[1]:
        raise InputError(
            f"weight [out, in] and inputs [N, in] do not match: weight {tuple(weight.shape)}, "
            f"inputs {tuple(inputs.shape)}"
        )
    if not isinstance(qparams, QParams) or bool((qparams.zero_point != 0).any()):
        raise InputError(
            f"qparams: expected symmetric weight qparams (zero-point 0), got {qparams}"
        )
    if qparams.axis not in (None, 0):
        raise InputError(
            f"qparams: expected per-tensor or per-output-channel (axis 0), got {qparams}"
        )


def _column_scale(qparams: QParams, out_features: int) -> torch.Tensor:
    """The weight scale as a column ``[out, 1]`` (per channel) or broadcast from one value."""
    return qparams.scale.to(torch.float32).reshape(-1, 1).expand(out_features, 1)


def round_to_nearest(weight: torch.Tensor, qparams: QParams) -> torch.Tensor:
    """The plain rounding ``q = clamp(round(W / S), lo, hi)`` as int8 (for comparison)."""
    scale = _column_scale(qparams, weight.shape[0])
    q = torch.round(weight.float() / scale).clamp(qparams.quant_min, qparams.quant_max)
    return q.to(torch.int8)


def hessian(inputs: torch.Tensor) -> torch.Tensor:
    """``H = 2 X^T X / N`` in float64 for inputs ``X`` [N, in] (the 1/N only rescales)."""
    inputs = inputs.double()
    return 2.0 * inputs.T @ inputs / inputs.shape[0]


def gptq(
    weight: torch.Tensor,
    inputs: torch.Tensor,
    qparams: QParams,
    dampening: float = GPTQ_DAMPENING,
) -> torch.Tensor:
    """GPTQ's integers for ``weight`` [out, in] on the grid of ``qparams`` (see the module
    docstring), from the layer's calibration ``inputs`` [N, in]. Returns int8 [out, in].

    Deterministic: no randomness at all; the columns go in their natural order.
    """
    _check_layer(weight, inputs, qparams)
    if not dampening > 0:
        raise InputError(f"dampening: expected a positive number, got {dampening!r}")
    work = weight.detach().double().clone()
    h = hessian(inputs)
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0  # an input that is always 0: its weights do not matter, set them to 0
    work[:, dead] = 0.0
    h += dampening * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    # Upper Cholesky factor U of H^-1 (H^-1 = U^T U): U_jj * row j of U is row j of the
    # inverse Hessian of the columns j.. that are still to be quantized.
    upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    scale = _column_scale(qparams, work.shape[0]).double().flatten()
    integers = torch.empty_like(work)
    for column in range(work.shape[1]):
        w = work[:, column]
        q = torch.round(w / scale).clamp(qparams.quant_min, qparams.quant_max)
        integers[:, column] = q
        error = (w - q * scale) / upper[column, column]
        # Spread this column's error over the columns still to come.
        work[:, column + 1 :] -= error[:, None] * upper[column, column + 1 :][None, :]
    return integers.to(torch.int8)


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """AdaRound's ``h(V) = clamp(sigmoid(V) (zeta - gamma) + gamma, 0, 1)``."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _initial_v(rest: torch.Tensor) -> torch.Tensor:
    """V with ``h(V) = rest`` (the fractional part of W/S), so training starts at W itself."""
    probability = ((rest - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4)
    return torch.log(probability / (1 - probability))


def adaround(
    weight: torch.Tensor,
    inputs: torch.Tensor,
    qparams: QParams,
    iterations: int = ADAROUND_ITERATIONS,
    batch_size: int = 256,
    learning_rate: float = 0.05,
    regularisation: float = 0.1,
    beta_range: tuple[float, float] = (20.0, 2.0),
    warmup: float = 0.2,
    seed: int = ADAROUND_SEED,
) -> torch.Tensor:
    """AdaRound's integers for ``weight`` [out, in] on the grid of ``qparams`` (see the
    module docstring), learned on the layer's calibration ``inputs`` [N, in].

    Each of the ``iterations`` Adam steps uses a random batch of ``batch_size`` inputs,
    drawn from a generator seeded by ``seed``, so the same arguments give the same integers.
    Returns int8 [out, in].
    """
    _check_layer(weight, inputs, qparams)
    if not isinstance(iterations, int) or iterations < 1:
        raise InputError(f"iterations: expected a positive whole number, got {iterations!r}")
    generator = torch.Generator().manual_seed(seed)
    weight = weight.detach().float()
    inputs = inputs.detach().float()
    scale = _column_scale(qparams, weight.shape[0])
    floor = torch.floor(weight / scale)
    v = _initial_v(weight / scale - floor).requires_grad_(True)
    optimizer = torch.optim.Adam([v], lr=learning_rate)
    warmup_steps = int(warmup * iterations)
    start_beta, end_beta = beta_range
    for step in range(iterations):
        batch = inputs[
            torch.randint(len(inputs), (min(batch_size, len(inputs)),), generator=generator)
        ]
        h = rectified_sigmoid(v)
        soft = scale * torch.clamp(floor + h, qparams.quant_min, qparams.quant_max)
        loss = ((batch @ (soft - weight).T) ** 2).sum(dim=1).mean()  # the reconstruction error
        if step >= warmup_steps:
            # beta falls from start to end over the steps after the warm-up.
            progress = (step - warmup_steps) / max(1, iterations - warmup_steps)
            beta = end_beta + (start_beta - end_beta) * (1 - progress)
            loss = loss + regularisation * (1 - (2 * h - 1).abs().pow(beta)).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        rounded_up = (rectified_sigmoid(v) >= 0.5).float()
        q = torch.clamp(floor + rounded_up, qparams.quant_min, qparams.quant_max)
    return q.to(torch.int8)


def reconstruction_error(
    weight: torch.Tensor, integers: torch.Tensor, qparams: QParams, inputs: torch.Tensor
) -> float:
    """``mean_n || x_n W^T - x_n W~^T ||^2`` with ``W~ = S q``: the error both methods reduce."""
    scale = _column_scale(qparams, weight.shape[0]).double()
    difference = inputs.double() @ (weight.double() - integers.double() * scale).T
    return float((difference**2).sum(dim=1).mean())
