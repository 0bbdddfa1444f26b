"""An int8 model's costs for the cost models and the report: weight bytes and MACs by precision, memory."""

from __future__ import annotations

from typing import Iterable

import onnx

from cost_models import macs_by_precision, weight_bytes_by_precision, with_weight_bits, workload_memory_bytes
from cost_models.workload import Workload

from adans_toolchain.analysis.graph import Graph
from adans_toolchain.plan.workload import graph_workload


def int8_workload(workload: Workload, layers: Iterable[str]) -> Workload:
    """`workload` (of the float model) with `layers` (node names) at int8 weights: what the memory model prices."""
    return with_weight_bits(workload, layers, 8)


def precision_costs(float_model: onnx.ModelProto, layers: Iterable[str], image_shape: tuple[int, ...]) -> dict:
    """Weight bytes per precision and memory (weights + peak activations) of `float_model` and of its int8 version
    with `layers` quantized, and the int8 version's MACs per precision (batch 1)."""
    work = graph_workload(Graph.from_model(float_model, image_shape))
    int8 = int8_workload(work, layers)
    return {
        "weight_bytes": {"float": weight_bytes_by_precision(work), "int8": weight_bytes_by_precision(int8)},
        "macs": macs_by_precision(int8),
        "memory_bytes": {"float": workload_memory_bytes(work), "int8": workload_memory_bytes(int8)},
    }
