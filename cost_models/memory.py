"""Memory footprint: weight bytes as stored plus peak activation bytes as executed.

Weights count at their bit width; an unstructured-sparse weight is stored in
whichever of dense or bitmask + non-zero values is smaller. A quantized
weight (fewer than 32 bits) also stores a float32 scale and an integer zero
point per output channel, and its bias as int32 (see precision.py). A BatchNorm that
follows a Conv is folded into it (one bias per output channel), exactly as
the emitted model stores it, so the search graph and the emitted graph have
the same footprint (see `kernels.executed_kernels`).

Activations: kernels run in the workload's topological order; a kernel's
inputs and its output are live while it runs, and a tensor is freed after
its last consumer. Graph inputs are live from the start and graph outputs
until the end. In-place reuse by a runtime can only lower the true peak.

The model needs no knowledge of what an operator computes, only of its
shapes, so every operator is priced exactly; none needs a fallback.
"""

from __future__ import annotations

from math import ceil, prod
from typing import Sequence

import numpy as np

from .base import CostModel, register
from .kernels import Kernel, element_bytes, executed_kernels
from .workload import Workload, batch_of

BIAS_BITS = 32  # biases stay full precision when weights are quantised (int32 with integer weights)
SCALE_BYTES = 4  # float32 scale per output channel of a quantized weight
ZERO_POINT_BYTES = 1  # and its zero point, one integer of the weight's width (int8)


def weight_storage_bytes(elements: int, bits: int, sparsity: float) -> int:
    """Bytes to store `elements` weights of `bits` bits, `sparsity` of them exactly zero."""
    dense = ceil(elements * bits / 8)
    if sparsity <= 0.0 or elements == 0:
        return dense
    nonzero = elements - int(round(elements * min(sparsity, 1.0)))
    bitmask = ceil(elements / 8) + ceil(nonzero * bits / 8)  # one bit per position + the values
    return min(dense, bitmask)


def quantization_parameter_bytes(kernel: Kernel) -> int:
    """Per-output-channel scale and zero point of a quantized weight; 0 for a float one."""
    a = kernel.anchor
    if a.weight_bits >= 32 or not a.weight_shape:
        return 0
    if a.op_type in ("Conv", "ConvTranspose"):
        channels = a.output_shape[1]
    else:  # Gemm / MatMul: one per output feature
        channels = a.output_shape[-1]
    return int(channels) * (SCALE_BYTES + ZERO_POINT_BYTES)


def kernel_weight_bytes(kernel: Kernel) -> int:
    weights, bias = kernel.weight_elements()
    a = kernel.anchor
    return (weight_storage_bytes(weights, a.weight_bits, a.weight_sparsity) + ceil(bias * BIAS_BITS / 8)
            + quantization_parameter_bytes(kernel))


def peak_activation_bytes(kernels: Sequence[Kernel]) -> int:
    produced = {k.output for k in kernels}
    last_use: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for i, k in enumerate(kernels):
        for name, shape in zip(k.inputs, k.input_shapes):
            last_use[name] = i
            sizes.setdefault(name, prod(shape) * element_bytes(k.anchor.dtype))
    live = {t: b for t, b in sizes.items() if t not in produced}  # graph inputs
    peak = sum(live.values())
    for i, k in enumerate(kernels):
        out = prod(k.output_shape) * element_bytes(k.ops[-1].dtype)
        peak = max(peak, sum(live.values()) + out)
        live[k.output] = out
        for t in set(k.inputs):
            if last_use.get(t) == i:
                live.pop(t, None)
    return peak


def workload_memory_bytes(workload: Workload) -> int:
    kernels = executed_kernels(workload)
    return sum(kernel_weight_bytes(k) for k in kernels) + peak_activation_bytes(kernels)


@register("memory")
class MemoryCostModel(CostModel):
    name = "memory"
    unit = "bytes"

    def estimate(self, workloads: Sequence[Workload]) -> np.ndarray:
        return np.array([workload_memory_bytes(w) for w in batch_of(workloads)], dtype=np.float64)
