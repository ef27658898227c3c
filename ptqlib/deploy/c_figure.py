"""The packed weight layout of the AVX2 kernels, drawn (notebook 10)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from ptqlib.deploy.c_avx2_packing import PANEL, pack_weights


def packed_order(outputs: int, inputs: int) -> torch.Tensor:
    """``order[o, k]``: where weight (o, k) of a ``[outputs, inputs]`` matrix lands in the
    packed INT8 layout ``[out/8][in/2][8][2]`` (its byte offset)."""
    offsets = torch.arange(outputs * inputs).reshape(outputs, inputs)
    packed = pack_weights(offsets, inputs, "int8").reshape(-1)
    order = torch.empty(outputs * inputs, dtype=torch.int64)
    order[packed] = torch.arange(len(packed))
    return order.reshape(outputs, inputs)


def packed_layout_figure(outputs: int = 16, inputs: int = 6) -> plt.Figure:
    """The weight matrix as PyTorch stores it (row after row) beside the same weights in
    packed order: each cell shows its byte offset, one 16-byte load is outlined."""
    order = packed_order(outputs, inputs)
    row_major = torch.arange(outputs * inputs).reshape(outputs, inputs)
    figure, axes = plt.subplots(1, 2, figsize=(7.5, 5.2))
    titles = (
        "row-major [out][in]\n(PyTorch, the portable C)",
        "packed [out/8][in/2][8][2] (AVX2)\nred: one 16-byte load, 8 outputs x 2 inputs",
    )
    for axis, offsets, title in zip(axes, (row_major, order), titles, strict=True):
        axis.imshow(offsets.numpy(), cmap="viridis", aspect="auto")
        for (o, k), value in zip(
            [(o, k) for o in range(outputs) for k in range(inputs)],
            offsets.reshape(-1).tolist(),
            strict=True,
        ):
            axis.text(k, o, str(value), ha="center", va="center", fontsize=7, color="white")
        axis.set_xticks(range(inputs))
        axis.set_yticks(range(outputs))
        axis.set_xlabel("input k")
        axis.set_title(title, fontsize=9)
    axes[0].set_ylabel("output o")
    # Bytes 0..15 of the packed layout: outputs 0..7, inputs 0 and 1, one vpmovsxbw load.
    axes[1].add_patch(
        plt.Rectangle((-0.5, -0.5), 2, PANEL, fill=False, edgecolor="red", linewidth=2)
    )
    figure.suptitle("Byte offset of each weight in memory", fontsize=10)
    figure.tight_layout()
    return figure
