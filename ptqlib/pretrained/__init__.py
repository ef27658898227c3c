"""Weights that ship with ptqlib: notebook 09's two DepthwiseCNNs, the same on every CPU.

Training is deterministic on one machine but not across CPUs (their floating-point kernels
sum in different orders), and the depthwise CNN of notebook 09 was trained "too hot" on
purpose: whether a given seed ends with channels whose BatchNorm variance collapses, and so
whether per-tensor INT8 breaks, can change with the CPU. The FP32 checkpoint here is the one
the notebook's story is told with; ptqlib's integer engine is exact, so the collapse, the
diagnosis and the repairs are the same wherever it is quantized. Its metadata records the
command, the CPU and the torch version that trained it.

- ``dwcnn_hot_fp32.pt``: ``python -m ptqlib train --model dwcnn --recipe hot --seed 2`` on
  the offline sample (4,000 training digits)
- ``dwcnn_default_fp32.pt``: the same network, seed and data with the sensible recipe,
  ``python -m ptqlib train --model dwcnn --recipe default --seed 2``: the contrast that
  per-tensor INT8 does not break
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from torch import nn

from ptqlib.checkpoints import load_fp32
from ptqlib.errors import InputError

PRETRAINED = {"dwcnn_hot": "dwcnn_hot_fp32.pt", "dwcnn_default": "dwcnn_default_fp32.pt"}


def pretrained_path(name: str) -> Path:
    """The shipped checkpoint called ``name`` (a key of :data:`PRETRAINED`)."""
    if name not in PRETRAINED:
        raise InputError(
            f"name: no shipped checkpoint {name!r}; expected one of {sorted(PRETRAINED)}"
        )
    return Path(str(resources.files("ptqlib.pretrained") / PRETRAINED[name]))


def load_pretrained(name: str) -> tuple[nn.Module, dict]:
    """The shipped FP32 model called ``name`` and its metadata (digest checked on load)."""
    return load_fp32(pretrained_path(name))
