"""What a cost model sees: the operators a model executes, with their shapes.

Cost models sit below the toolchain (they never import it), so they do not
know about Plans. The toolchain turns a Plan into a `Workload` (the model's
operators with the channel counts that Plan leaves) and asks a cost model to
price it; the emitted ONNX model is priced through the very same record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

Shape = tuple[int, ...]


@dataclass(frozen=True)
class OpWorkload:
    """One operator as executed at inference time (shapes are concrete, batch included)."""

    op_type: str
    name: str
    input_shape: Shape  # the data input (first input)
    output_shape: Shape
    weight_shape: Shape = ()  # () when the operator has no weight
    kernel: Shape = ()
    strides: Shape = ()
    dilations: Shape = ()
    groups: int = 1
    has_bias: bool = False
    dtype: str = "float32"
    # Fraction of weight elements that are exactly zero (unstructured pruning);
    # dense kernels do not skip them, memory formats can.
    weight_sparsity: float = 0.0
    weight_bits: int = 32
    extra_input_shapes: tuple[Shape, ...] = ()  # shapes of the other activation inputs (Add, Concat, ...)
    # Tensor names, so a cost model can see which operators feed which (a
    # runtime fuses Conv -> BatchNormalization -> Relu into one kernel).
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    attributes: tuple[tuple[str, object], ...] = ()  # the remaining ONNX attributes, sorted by name


Workload = tuple[OpWorkload, ...]

FLOAT_PRECISION = "fp32"


def precision_name(bits: int) -> str:
    """How a layer's precision is named in tables and reports: 'fp32' for float weights, else 'int<bits>'."""
    return FLOAT_PRECISION if bits >= 32 else f"int{bits}"


def batch_of(workloads: Sequence[Workload]) -> list[Workload]:
    """Normalise a single workload or a sequence of them into a list."""
    if workloads and isinstance(workloads[0], OpWorkload):
        return [tuple(workloads)]  # type: ignore[arg-type]
    return list(workloads)  # type: ignore[arg-type]
