"""Where the activations live (notebook 10): a liveness plan of the layer graph.

Each activation buffer is *alive* from the step that writes it to the last step that reads
it. Two buffers whose lives overlap need different bytes; two that never live at once may
share them. :func:`plan_arena` places every buffer at an offset of one block of memory, the
*arena*, by the greedy rule of TensorFlow Lite Micro's ``GreedyMemoryPlanner``: the largest
buffer first, each at the lowest offset where it overlaps no buffer already placed that is
alive at the same time. For a chain of layers the arena is the largest sum of two
neighbouring buffers; a skip connection keeps a buffer alive longer, and the plan shows
what that costs.

The exported C allocates exactly this arena (one local array of the forward function) and
points every buffer into it at its planned offset; ``gcc -fstack-usage`` reports the
function's frame, which the tests compare with the plan.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptqlib.errors import InputError


@dataclass(frozen=True)
class Buffer:
    """An activation buffer: ``size`` bytes, written at step ``first``, last read at ``last``."""

    name: str
    size: int
    first: int
    last: int

    def overlaps_in_time(self, other: Buffer) -> bool:
        return self.first <= other.last and other.first <= self.last


@dataclass(frozen=True)
class ArenaPlan:
    """Every buffer's offset in the arena, and the arena's size in bytes."""

    offsets: dict[str, int]
    size: int


def plan_arena(buffers: list[Buffer], alignment: int = 1) -> ArenaPlan:
    """Offsets for ``buffers`` in one arena (greedy, largest first; module docstring), each
    offset a multiple of ``alignment`` bytes."""
    for buffer in buffers:
        if buffer.size < 0 or buffer.first > buffer.last:
            raise InputError(f"buffers: {buffer} has a negative size or ends before it starts")
    placed: list[tuple[Buffer, int]] = []
    for buffer in sorted(buffers, key=lambda b: (-b.size, b.first, b.name)):
        offset = 0
        # Try the lowest offset, then the end of every conflicting buffer, lowest first.
        conflicts = sorted(
            (start, start + other.size) for other, start in placed if other.overlaps_in_time(buffer)
        )
        for start, end in conflicts:
            if offset + buffer.size <= start:
                break
            offset = max(offset, -(-end // alignment) * alignment)
        placed.append((buffer, offset))
    size = max((offset + buffer.size for buffer, offset in placed), default=0)
    return ArenaPlan({buffer.name: offset for buffer, offset in placed}, size)


def chain_buffers(sizes: list[int], names: list[str] | None = None) -> list[Buffer]:
    """The buffers of a chain of steps: buffer i (``sizes[i]`` bytes) is written by step i
    and read by step i + 1 (``names`` default to ``"b0", "b1", ...``)."""
    names = names or [f"b{index}" for index in range(len(sizes))]
    return [
        Buffer(name, size, index, index + 1)
        for index, (name, size) in enumerate(zip(names, sizes, strict=True))
    ]


def live_bytes(buffers: list[Buffer]) -> int:
    """The most bytes alive at one step: ``max_t sum(size of the buffers alive at t)``.
    No plan can use less; for a chain it is the largest pair of neighbours."""
    steps = {step for buffer in buffers for step in (buffer.first, buffer.last)}
    return max(
        (sum(b.size for b in buffers if b.first <= step <= b.last) for step in steps), default=0
    )
