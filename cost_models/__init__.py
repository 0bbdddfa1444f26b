"""Pluggable hardware cost models behind one protocol (see `base.CostModel`).

Registered: "macs" (exact multiply-accumulates), "memory" (bytes: weights at
their bit width and sparsity format plus peak activations) and "latency"
(milliseconds from a lookup table profiled on the target, or a reported
roofline estimate). Each is made with `make_cost_model(name, target, **options)`.
Precision per layer (int8 weights) lives in the workload: see precision.py;
the latency model prices an int8 layer from the table's int8 entries.
"""

from .base import CostModel, UnsupportedOperatorError, cost_model_names, make_cost_model, register
from .kernels import Kernel, executed_kernels, structure_fingerprint
from .latency import LatencyCostModel, Prediction
from .lut import LookupTable, LookupTableError, LookupTableMismatchError, LookupTablePrecisionError
from .macs import MacsCostModel, op_macs, workload_macs, workload_params
from .memory import MemoryCostModel, workload_memory_bytes
from .precision import macs_by_precision, weight_bytes_by_precision, with_weight_bits
from .roofline import RooflineUnavailableError
from .workload import OpWorkload, Workload

__all__ = [
    "CostModel", "Kernel", "LatencyCostModel", "LookupTable", "LookupTableError", "LookupTableMismatchError",
    "LookupTablePrecisionError",
    "MacsCostModel", "MemoryCostModel", "OpWorkload", "Prediction", "RooflineUnavailableError",
    "UnsupportedOperatorError", "Workload", "cost_model_names", "executed_kernels", "make_cost_model", "op_macs",
    "register", "structure_fingerprint", "workload_macs", "workload_memory_bytes", "workload_params",
    "macs_by_precision", "weight_bytes_by_precision", "with_weight_bits",
]
