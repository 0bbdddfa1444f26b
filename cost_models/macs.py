"""Exact multiply-accumulate counts from operator shapes.

Only operators that multiply by weights or by other activations count (Conv,
ConvTranspose, Gemm, MatMul); elementwise, normalisation and pooling
operators cost no MACs by this definition, which is the one papers use for
"FLOPs" of CNNs. Counts are per batch of the workload's input shape.
"""

from __future__ import annotations

from math import prod
from typing import Sequence

import numpy as np

from .base import CostModel, register
from .workload import OpWorkload, Workload

# Operators that do no multiply-accumulate work by the convention above.
_ZERO_MAC_OPS = frozenset(
    {
        "BatchNormalization", "Relu", "Clip", "LeakyRelu", "PRelu", "HardSwish", "HardSigmoid",
        "Sigmoid", "Tanh", "Add", "Sub", "Mul", "Div", "MaxPool", "AveragePool",
        "GlobalAveragePool", "GlobalMaxPool", "Flatten", "Reshape", "Concat", "Pad", "Slice",
        "Identity", "Dropout", "Softmax", "ReduceMean", "Squeeze", "Unsqueeze", "Transpose",
        "Resize", "Upsample", "Split", "Shape", "Gather", "Cast", "Constant", "Elu", "Gelu",
        "Erf", "Sqrt", "Pow", "Exp", "Neg", "Abs", "Max", "Min", "ConstantOfShape", "Expand",
        "LRN", "Softplus", "Selu", "Celu", "Mish", "Where", "Equal", "ReduceSum", "ReduceMax",
        "LogSoftmax", "Range", "Floor", "Ceil", "Round", "Less", "Greater", "Not", "And", "Or",
        # Normalisation: a mean, a variance and a scale per element, no weighted sums (as BatchNormalization).
        "LayerNormalization", "InstanceNormalization", "GroupNormalization",
    }
)


def op_macs(op: OpWorkload) -> int:
    """MACs of one operator; raises for an operator with weights this model does not know."""
    if op.op_type == "Conv":
        # Every output element sums (C_in / groups) * prod(kernel) products.
        c_in = op.input_shape[1]
        return prod(op.output_shape) * (c_in // op.groups) * prod(op.kernel)
    if op.op_type == "ConvTranspose":
        c_out = op.output_shape[1]
        return prod(op.input_shape) * (c_out // op.groups) * prod(op.kernel)
    if op.op_type in ("Gemm", "MatMul"):
        # output (…, M, N) each summing K products; K is the shared dimension.
        k = op.extra_input_shapes[0][-2] if op.op_type == "MatMul" and op.extra_input_shapes else None
        if k is None:
            k = op.input_shape[-1]
        return prod(op.output_shape) * k
    if op.op_type in _ZERO_MAC_OPS:
        return 0
    from .base import UnsupportedOperatorError

    raise UnsupportedOperatorError(f"MACs of operator {op.op_type} ({op.name}) are not known")


def workload_macs(workload: Workload) -> int:
    return sum(op_macs(op) for op in workload)


def workload_params(workload: Workload) -> int:
    """Parameters of weighted operators: weights plus one bias per output channel.

    BatchNormalization counts its scale and shift (weight_shape (C,), has_bias);
    LayerNormalization its scale and bias over the normalised axes (weight_shape).
    """
    total = 0
    for op in workload:
        if op.weight_shape:
            total += prod(op.weight_shape)
            if op.has_bias and op.op_type == "LayerNormalization":
                total += prod(op.weight_shape)
            elif op.has_bias:
                total += op.output_shape[1]  # one bias per output channel / feature
    return total


@register("macs")
class MacsCostModel(CostModel):
    name = "macs"
    unit = "macs"

    def estimate(self, workloads: Sequence[Workload]) -> np.ndarray:
        return np.array([workload_macs(w) for w in workloads], dtype=np.float64)
