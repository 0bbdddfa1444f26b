"""Factorised layers: which layers can be factorised, the ranks that still save MACs, and the names the factors carry.

Shared by the search space (which ranks exist), the workload model (what a
factorised layer computes), lowering (which nodes it writes) and the report
(which original layer a factor's kernel time belongs to), so the rank box
and the factor names are defined once.
"""

from __future__ import annotations

import numpy as np

from adans_toolchain.analysis.layers import WeightedLayer

# Node-name suffixes of the factors lowering writes in place of a layer, in order.
TUCKER_FACTORS = ("tucker_in", "tucker_core", "tucker_out")
SVD_FACTORS = ("svd_in", "svd_out")
SVD_MIDDLE = "svd"  # the tensor between the two SVD factors


def factor_name(base: str, factor: str) -> str:
    """The node (or tensor) name of `factor` of the layer (or output) named `base`."""
    return f"{base}/{factor}"


def origin_layer(op_name: str) -> str:
    """The original node a (possibly factorised) operator came from."""
    for factor in TUCKER_FACTORS + SVD_FACTORS:
        if op_name.endswith("/" + factor):
            return op_name[: -len(factor) - 1]
    return op_name


def decomposable(layer: WeightedLayer) -> str | None:
    """'svd', 'tucker' or None."""
    if layer.groups != 1:
        return None
    if layer.op in ("Gemm", "MatMul") or layer.is_pointwise:
        return "svd"
    return "tucker"


def tucker_macs(layer: WeightedLayer, r1: int, r2: int) -> int:
    """MACs per image of 1x1 (c->r1) -> kxk (r1->r2) -> 1x1 (r2->f); a full rank drops its factor."""
    c, f = layer.c_in, layer.c_out
    k = int(np.prod(layer.kernel))
    first = c * r1 * layer.in_spatial if r1 < c else 0  # runs before the stride, at input resolution
    core = k * r1 * r2 * layer.out_spatial
    last = r2 * f * layer.out_spatial if r2 < f else 0
    return first + core + last


def svd_macs(layer: WeightedLayer, r: int) -> int:
    return r * (layer.c_in + layer.c_out) * layer.out_spatial


def max_ranks(layer: WeightedLayer) -> tuple[int, ...]:
    """Largest rank per mode that keeps the factorised layer cheaper than the original (0: none)."""
    original = layer.macs_per_image
    if decomposable(layer) == "svd":
        r = min(layer.c_in, layer.c_out)
        while r >= 1 and (r >= min(layer.c_in, layer.c_out) or svd_macs(layer, r) >= original):
            r -= 1
        return (r,)
    c, f = layer.c_in, layer.c_out
    r1 = c - 1
    while r1 >= 1 and tucker_macs(layer, r1, f) >= original:
        r1 -= 1
    r2 = f - 1
    while r2 >= 1 and tucker_macs(layer, c, r2) >= original:
        r2 -= 1
    while r1 >= 1 and r2 >= 1 and tucker_macs(layer, r1, r2) >= original:
        # Shrink the mode that is relatively larger, keeping the box balanced.
        if r1 / c >= r2 / f:
            r1 -= 1
        else:
            r2 -= 1
    return (max(r1, 0), max(r2, 0))
