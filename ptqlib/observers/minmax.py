"""The min/max observers: the range is the smallest and largest value seen.

- ``MinMaxObserver``: the smallest and largest value seen in all batches.
- ``MovingAverageMinMaxObserver``: min and max averaged over batches, m <- m + c (m_batch - m).
- ``PerChannelMinMaxObserver``: min and max of every slice along ``ch_axis`` (for weights).

They give exactly ``torch.ao.quantization``'s qparams for the same batches: they observe in
float32 and update min/max with the same float32 operations (the tests compare both).
"""

from __future__ import annotations

import torch

from ptqlib.errors import InputError
from ptqlib.observers.base import Observer, ObserverSettings
from ptqlib.quantization import normalise_axis


class MinMaxObserver(Observer):
    """The running minimum and maximum: min_val = min over all batches of min(x), same for max.

    Exactly ``torch.ao.quantization.MinMaxObserver``'s qparams for the same batches.
    """

    def _observe(self, x: torch.Tensor, batch_min: torch.Tensor, batch_max: torch.Tensor) -> None:
        # In place (copy_): cheaper than re-assigning a module's buffer on every batch.
        self.min_val.copy_(torch.min(batch_min, self.min_val))
        self.max_val.copy_(torch.max(batch_max, self.max_val))

    def _choose_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.min_val.clone(), self.max_val.clone()


class MovingAverageMinMaxObserver(MinMaxObserver):
    """An exponential moving average of each batch's min and max.

    The first batch sets ``min_val = min(x)``; every later batch moves it a fraction
    ``averaging_constant`` (c) of the way: ``min_val <- min_val + c * (min(x) - min_val)``,
    and the same for ``max_val``. One unusual batch therefore moves the range only a
    little. Exactly ``torch.ao.quantization.MovingAverageMinMaxObserver``'s qparams.
    """

    def __init__(
        self,
        averaging_constant: float = 0.01,
        settings: ObserverSettings | None = None,
        **overrides: object,
    ) -> None:
        super().__init__(settings, **overrides)
        if isinstance(averaging_constant, bool) or not isinstance(averaging_constant, int | float):
            raise TypeError(f"averaging_constant: expected a number, got {averaging_constant!r}")
        if not 0.0 < averaging_constant <= 1.0:
            raise InputError(
                f"averaging_constant: expected a number in (0, 1], got {averaging_constant!r}"
            )
        self.averaging_constant = averaging_constant

    def _observe(self, x: torch.Tensor, batch_min: torch.Tensor, batch_max: torch.Tensor) -> None:
        if self.batches_seen == 0:
            self.min_val.copy_(batch_min)
            self.max_val.copy_(batch_max)
            return
        # The update exactly as torch.ao writes it: the same float32 rounding, the same qparams.
        self.min_val.copy_(self.min_val + self.averaging_constant * (batch_min - self.min_val))
        self.max_val.copy_(self.max_val + self.averaging_constant * (batch_max - self.max_val))


class PerChannelMinMaxObserver(Observer):
    """The running min and max of every slice along ``ch_axis`` (one range per channel).

    For a Linear weight ``[out_features, in_features]`` and ``ch_axis=0`` every output
    neuron gets its own scale. Exactly ``torch.ao.quantization.PerChannelMinMaxObserver``'s
    qparams; ``calculate_qparams()`` returns 1-d tensors ``[C]``. ``min_val``/``max_val``
    are 1-d ``[C]`` (empty until the first batch sets the number of channels C).
    """

    def __init__(
        self, ch_axis: int = 0, settings: ObserverSettings | None = None, **overrides: object
    ) -> None:
        super().__init__(settings, **overrides)
        if not isinstance(ch_axis, int) or isinstance(ch_axis, bool):
            raise TypeError(f"ch_axis: expected an integer axis, got {ch_axis!r}")
        self.ch_axis = ch_axis
        self._reset_statistics()

    def _extremes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        axis = normalise_axis(self.ch_axis, x.dim())  # a clear error for an axis x lacks
        # One row per channel; the order of the other values does not matter for min/max.
        rows = x.transpose(0, axis).reshape(x.shape[axis], -1)
        return torch.aminmax(rows, dim=1)

    def _observe(self, x: torch.Tensor, batch_min: torch.Tensor, batch_max: torch.Tensor) -> None:
        if self.batches_seen == 0:
            self.min_val, self.max_val = batch_min, batch_max
            return
        if batch_min.numel() != self.min_val.numel():
            raise InputError(
                f"PerChannelMinMaxObserver input: {batch_min.numel()} channels along axis "
                f"{self.ch_axis}, but earlier batches had {self.min_val.numel()}"
            )
        self.min_val = torch.min(batch_min, self.min_val)
        self.max_val = torch.max(batch_max, self.max_val)

    def _choose_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.min_val.clone(), self.max_val.clone()

    def _reset_statistics(self) -> None:
        self.min_val = torch.empty(0)
        self.max_val = torch.empty(0)

    def _describe_statistics(self) -> str:
        return (
            f"{self.min_val.numel()} channels along axis {self.ch_axis}, "
            f"min in [{self.min_val.min().item():.4g}, {self.min_val.max().item():.4g}], "
            f"max in [{self.max_val.min().item():.4g}, {self.max_val.max().item():.4g}]"
        )
