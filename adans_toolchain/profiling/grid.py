"""Which channel counts the profiler measures along one axis of a kernel family.

Runtimes run some channel counts in other code than their neighbours: on
x86, ONNX Runtime 1.32 runs a convolution in its blocked NCHWc layout when
its input channels are a multiple of 4 (padding them to its SIMD block of 8
or 16), and in a much slower plain path otherwise; elsewhere full SIMD tiles
make multiples of the vector width cheaper. The cost over channel counts is a
staircase, not a line. The grid therefore has two classes of counts per
axis, multiples of `align` ("aligned") and the rest, and the latency model
interpolates only within a class. `align` is probed on the device (the
smallest period with which the runtime's choice of blocked layout repeats,
see profiler.probe_alignment) unless given.

The grid, for an axis whose channel count pruning can change (at most C):

- C <= `small_all` (16): every count 1..C;
- otherwise aligned counts: every multiple of `align` up to `dense_limit`
  (8 x align: 32 when the runtime's period is 4, 64 when it is 8), then
  about `aligned_points` more spaced geometrically up to the largest
  multiple of `align` <= C;
- and unaligned counts: 1, `align`-1, and about `unaligned_points` more
  spaced geometrically up to C, each placed just below a multiple of
  `align` (the slow side of the staircase); C itself when C is unaligned.

An axis pruning cannot change is measured at its one count. A family's
points are the product of its axes' grids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GridRule:
    align: int | None = None  # None: probe the runtime (profiler.probe_alignment)
    dense_limit: int | None = None  # None: 8 x align (64 for align 8, 32 for align 4)
    aligned_points: int = 5
    unaligned_points: int = 5
    small_all: int = 16

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def axis_grid(max_c: int, rule: GridRule, *, variable: bool = True) -> list[int]:
    if max_c < 1:
        raise ValueError(f"a channel axis needs at least one channel, not {max_c}")
    if not variable:
        return [max_c]
    if max_c <= rule.small_all:
        return list(range(1, max_c + 1))
    if not rule.align:
        raise ValueError("the grid's align is not set (probe it first: profiler.probe_alignment)")
    a = rule.align
    dense = rule.dense_limit or 8 * a
    values = set(range(a, min(max_c, dense) + 1, a))
    top = max_c // a * a
    if top > dense and rule.aligned_points > 0:
        for v in np.geomspace(dense, top, rule.aligned_points + 1)[1:]:
            values.add(int(round(v / a)) * a)
        values.add(top)
    values.update({1, a - 1} & set(range(1, max_c + 1)))
    if rule.unaligned_points > 0 and max_c > 2 * a:
        for v in np.geomspace(2 * a, max_c, rule.unaligned_points):
            below = int(round(v / a)) * a - 1
            if 1 <= below <= max_c:
                values.add(below)
    values.add(max_c)
    return sorted(v for v in values if 1 <= v <= max_c)
