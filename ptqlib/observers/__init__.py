"""Observers: small modules that watch tensors go by and then choose a scale and zero-point.

``obs(x)`` records statistics of ``x`` and returns ``x``; ``obs.calculate_qparams()``
chooses a clipping range from them and turns it into ``(scale, zero_point)`` with the
observer's :class:`~ptqlib.observers.base.ObserverSettings`. The observers differ in how they
choose the range:

- ``ptqlib.observers.base``       the interface (``Observer``) and its settings
- ``ptqlib.observers.minmax``     the min/max family: ``MinMaxObserver``,
  ``MovingAverageMinMaxObserver``, ``PerChannelMinMaxObserver`` (torch.ao's qparams exactly)
- ``ptqlib.observers.histogram``  the ones that clip on purpose: ``HistogramObserver``
  (torch.ao's L2 range search, in ``ptqlib.observers.l2_search``), ``PercentileObserver``,
  ``EntropyObserver`` (TensorRT's KL threshold), ``MSEObserver``

This package holds the registry: ``make_observer("histogram", bins=256)`` builds any of them
by its name in :data:`OBSERVERS`.
"""

from __future__ import annotations

from ptqlib.catalog import OBSERVER_NAMES
from ptqlib.errors import InputError
from ptqlib.observers.base import Observer, ObserverSettings
from ptqlib.observers.histogram import (
    EntropyObserver,
    HistogramObserver,
    MSEObserver,
    PercentileObserver,
)
from ptqlib.observers.minmax import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    PerChannelMinMaxObserver,
)

__all__ = [
    "OBSERVERS",
    "EntropyObserver",
    "HistogramObserver",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "MSEObserver",
    "Observer",
    "ObserverSettings",
    "PercentileObserver",
    "PerChannelMinMaxObserver",
    "make_observer",
]


# --- the registry ------------------------------------------------------------------------

OBSERVERS: dict[str, type[Observer]] = dict(
    zip(
        OBSERVER_NAMES,  # ptqlib.catalog: the names, for the command line
        (
            MinMaxObserver,
            MovingAverageMinMaxObserver,
            PerChannelMinMaxObserver,
            HistogramObserver,
            PercentileObserver,
            EntropyObserver,
            MSEObserver,
        ),
        strict=True,
    )
)


def make_observer(name: str, **kwargs: object) -> Observer:
    """A new observer by its name in :data:`OBSERVERS`, e.g. ``make_observer("histogram")``.

    ``kwargs`` are the observer's own arguments (``ch_axis``, ``averaging_constant``,
    ``bins``, ``percentile``, ``num_candidates``) and its settings (``dtype``,
    ``symmetric``, ``reduce_range``, ``quant_min``, ``quant_max``, or ``settings=``).
    """
    if not isinstance(name, str):
        raise TypeError(f"observer name: expected a string, got {type(name).__name__}")
    if name not in OBSERVERS:
        raise InputError(
            f"observer name: unknown observer {name!r}; expected one of {', '.join(OBSERVERS)}"
        )
    try:
        return OBSERVERS[name](**kwargs)
    except TypeError as error:
        raise TypeError(f"observer {name!r}: {error}") from error
