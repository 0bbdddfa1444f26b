"""Precision per layer: weights at each layer's bit width, and MACs split by the precision they run in.

A workload says a layer's precision in `OpWorkload.weight_bits` (32: float;
8: int8 weights with integer arithmetic). `with_weight_bits` sets it for
named layers, so every cost model prices a mixed-precision plan through the
same record; the memory model then stores an int8 layer's weights at one
byte each plus its quantization parameters (memory.quantization_parameter_bytes).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable

from .kernels import executed_kernels
from .macs import op_macs
from .memory import kernel_weight_bytes
from .workload import Workload, precision_name

WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def with_weight_bits(workload: Workload, layers: Iterable[str], bits: int = 8) -> Workload:
    """`workload` with the weighted operators named in `layers` at `bits`-bit weights (the others unchanged).

    Raises ValueError for a name that is no weighted operator of the workload.
    """
    names = set(layers)
    weighted = {op.name for op in workload if op.op_type in WEIGHTED_OPS and op.weight_shape}
    unknown = sorted(names - weighted)
    if unknown:
        raise ValueError(f"no weighted operator named {unknown[:3]} in the workload")
    return tuple(replace(op, weight_bits=bits) if op.name in names else op for op in workload)


def weight_bytes_by_precision(workload: Workload) -> dict[str, int]:
    """Bytes of stored weights (with biases and quantization parameters, BatchNorm folded) per precision."""
    totals: dict[str, int] = {}
    for kernel in executed_kernels(workload):
        stored = kernel_weight_bytes(kernel)
        if stored:
            name = precision_name(kernel.anchor.weight_bits)
            totals[name] = totals.get(name, 0) + stored
    return totals


def macs_by_precision(workload: Workload) -> dict[str, int]:
    """MACs per precision: a weighted operator's MACs run at its weights' precision."""
    totals: dict[str, int] = {}
    for op in workload:
        macs = op_macs(op)
        if macs:
            name = precision_name(op.weight_bits)
            totals[name] = totals.get(name, 0) + macs
    return totals
