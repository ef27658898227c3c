"""What every observer shares: its settings and the record-then-choose interface.

An observer is called like a layer, ``obs(x)``: it records some statistics of ``x`` and
returns ``x`` unchanged, so it can sit anywhere in a model during calibration. Afterwards
``obs.calculate_qparams()`` turns what it saw into ``(scale, zero_point)`` in two steps:

1. choose a *clipping range* ``[min_val, max_val]`` from the statistics
   (:meth:`Observer.clipping_range`); values outside it will be clamped;
2. turn the range into qparams with :func:`ptqlib.quantization.qparams_from_range`
   (which first widens the range to include 0; see ``ptqlib.quantization``).

Step 2 depends only on :class:`ObserverSettings` (which integers, affine or symmetric),
the same five choices for every observer. The observers differ only in step 1: the
min/max family lives in ``ptqlib.observers``, the histogram-based ones in
``ptqlib.observers.histogram``.

Unlike torch.ao, bad input is an error here, never a silent NaN or a default scale:
an empty tensor, NaN or Inf in the input, asking for qparams before any data, or
settings that do not describe a range of integers.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from ptqlib.errors import InputError
from ptqlib.quantization import (
    QParams,
    check_finite,
    check_float_tensor,
    qparams_from_range,
    quant_range,
)


def check_bool(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {value!r}")


def check_positive_int(value: object, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{name}: expected a positive whole number, got {value!r}")


@dataclass(frozen=True)
class ObserverSettings:
    """Which integers an observer's range is mapped onto: the same for every observer.

    Attributes:
        dtype: ``torch.uint8`` (0..255) or ``torch.int8`` (-128..127), the stored integers.
        symmetric: a range symmetric around 0 (zero-point 0 for int8, 128 for uint8)
            instead of an affine one that fits [min, max] exactly.
        reduce_range: use one bit less (0..127 or -64..63), as some x86 kernels need.
        quant_min, quant_max: a custom integer range instead (give both), e.g. 0..15;
            ``reduce_range`` halves it too. Kept as given; :meth:`integer_range` is the
            range actually used.

    The arguments mirror torch.ao's, except that ``symmetric: bool`` replaces ``qscheme``
    and ``dtype`` is the plain ``torch.uint8`` / ``torch.int8``. Checked once, when created
    (frozen: a checked setting cannot be changed afterwards).
    """

    dtype: torch.dtype = torch.uint8
    symmetric: bool = False
    reduce_range: bool = False
    quant_min: int | None = None
    quant_max: int | None = None

    def __post_init__(self) -> None:
        check_bool(self.symmetric, "symmetric")
        check_bool(self.reduce_range, "reduce_range")
        # quant_range checks dtype and the custom range (both given, quant_min < quant_max,
        # includes 0, fits in dtype) and that reduce_range leaves a range.
        self.integer_range()

    def integer_range(self) -> tuple[int, int]:
        """``(quant_min, quant_max)`` in use: the custom range or the whole dtype, reduced."""
        return quant_range(self.dtype, self.reduce_range, self.quant_min, self.quant_max)

    def qparams_from_range(
        self, min_val: torch.Tensor, max_val: torch.Tensor, axis: int | None = None
    ) -> QParams:
        """The qparams for values in ``[min_val, max_val]`` with these settings.

        Per-tensor for 0-d ranges; one (scale, zero-point) per entry along ``axis`` for 1-d.
        """
        return qparams_from_range(
            min_val,
            max_val,
            dtype=self.dtype,
            symmetric=self.symmetric,
            reduce_range=self.reduce_range,
            quant_min=self.quant_min,
            quant_max=self.quant_max,
            axis=axis,
        )


SETTING_NAMES = tuple(field.name for field in dataclasses.fields(ObserverSettings))


def combine_settings(
    owner: str, settings: ObserverSettings | None, overrides: dict[str, object]
) -> ObserverSettings:
    """``settings`` (default: uint8 affine) with some fields replaced, checked once."""
    if settings is None:
        settings = ObserverSettings()
    elif not isinstance(settings, ObserverSettings):
        raise TypeError(f"{owner}: settings: expected an ObserverSettings, got {settings!r}")
    for name in overrides:
        if name not in SETTING_NAMES:
            raise TypeError(
                f"{owner}: unexpected argument {name!r}; expected its own arguments or the "
                f"settings {', '.join(SETTING_NAMES)}"
            )
    return dataclasses.replace(settings, **overrides)


class Observer(nn.Module, ABC):
    """The common interface: ``obs(x)`` records, ``calculate_qparams()`` chooses.

    Every observer takes its own arguments (e.g. ``bins``) and then the settings, either
    as one :class:`ObserverSettings` or as its fields by name, or both (the fields
    override the object)::

        MinMaxObserver(dtype=torch.int8, symmetric=True)
        MinMaxObserver(ObserverSettings(torch.int8, symmetric=True))

    Attributes:
        settings: the :class:`ObserverSettings`, checked when the observer was created.
        min_val, max_val: running statistics, the smallest and largest value seen
            (0-d; 1-d with one entry per channel when ``ch_axis`` is set).
        ch_axis: the axis that gets one range per slice; None for one range per tensor.
        batches_seen: how many batches were observed since creation or :meth:`reset`.
    """

    ch_axis: int | None = None
    min_val: torch.Tensor
    max_val: torch.Tensor

    def __init__(self, settings: ObserverSettings | None = None, **overrides: object) -> None:
        super().__init__()
        self.settings = combine_settings(type(self).__name__, settings, overrides)
        self.register_buffer("min_val", torch.tensor(math.inf))
        self.register_buffer("max_val", torch.tensor(-math.inf))
        self.batches_seen = 0

    # The settings, readable on the observer itself (obs.dtype, obs.quant_min, ...).
    @property
    def dtype(self) -> torch.dtype:
        return self.settings.dtype

    @property
    def symmetric(self) -> bool:
        return self.settings.symmetric

    @property
    def reduce_range(self) -> bool:
        return self.settings.reduce_range

    @property
    def quant_min(self) -> int:
        """The smallest integer used (after reduce_range), not the custom one as given."""
        return self.settings.integer_range()[0]

    @property
    def quant_max(self) -> int:
        """The largest integer used (after reduce_range), not the custom one as given."""
        return self.settings.integer_range()[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Record the statistics of ``x`` and return ``x`` itself, untouched."""
        name = f"{type(self).__name__} input"
        check_float_tensor(x, name, action="observe")
        values = x.detach().to(torch.float32)  # as torch.ao's min/max observers do
        batch_min, batch_max = self._extremes(values)
        # NaN propagates through min and max, and Inf is an extreme, so the data is finite
        # exactly when its extremes are: one pass over the data instead of two.
        check_finite(torch.stack([batch_min, batch_max]), name)
        self._observe(values, batch_min, batch_max)
        self.batches_seen += 1
        return x

    def _extremes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The smallest and largest value of the batch (per channel for per-channel observers)."""
        return torch.aminmax(x)

    @abstractmethod
    def _observe(self, x: torch.Tensor, batch_min: torch.Tensor, batch_max: torch.Tensor) -> None:
        """Update the statistics with one finite, non-empty float32 batch and its extremes."""

    @abstractmethod
    def _choose_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The clipping range from the statistics (called only after some data)."""

    def _reset_statistics(self) -> None:
        """Forget every batch seen so far (subclasses with more statistics extend this)."""
        self.min_val.fill_(math.inf)
        self.max_val.fill_(-math.inf)

    def clipping_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The range ``(min_val, max_val)`` this observer chose (before widening to 0)."""
        if self.batches_seen == 0:
            raise RuntimeError(
                f"{type(self).__name__}: no data observed yet; call the observer on at least "
                "one batch, obs(x), before asking for qparams"
            )
        return self._choose_range()

    def qparams(self) -> QParams:
        """The chosen range as a :class:`~ptqlib.quantization.QParams`."""
        min_val, max_val = self.clipping_range()
        return self.settings.qparams_from_range(min_val, max_val, axis=self.ch_axis)

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)``: 0-d tensors, or 1-d ``[C]`` for a per-channel observer."""
        qparams = self.qparams()
        return qparams.scale, qparams.zero_point

    def reset(self) -> None:
        """Forget all data, as if just created."""
        self._reset_statistics()
        self.batches_seen = 0

    def extra_repr(self) -> str:
        scheme = "symmetric" if self.symmetric else "affine"
        settings = f"{self.dtype}, {scheme}, quant range {self.quant_min}..{self.quant_max}"
        if self.batches_seen == 0:
            return f"{settings}, no data yet"
        return f"{settings}, {self._describe_statistics()} after {self.batches_seen} batches"

    def _describe_statistics(self) -> str:
        return f"range [{self.min_val.item():.4g}, {self.max_val.item():.4g}]"
