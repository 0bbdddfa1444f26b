"""An ONNX model evaluated in float64 by ONNX's reference evaluator (numpy).

ONNX Runtime's CPU provider has no float64 Conv, so validation's float64
reference for models given as ONNX files (lowering/validate.py) runs here:
slow (a few seconds per 224-pixel image), and only asked for on a few
images when the plain float32 tolerance is exceeded.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper


def as_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose float32 initializers, constants, casts, inputs and outputs are float64."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64), init.name))
    for value in list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
    del graph.value_info[:]
    for node in graph.node:
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.DOUBLE
            elif a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float64), a.t.name))
    return out


def run_float64(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The first output of `model` on `x`, computed in float64."""
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(as_float64(model))
    return np.asarray(evaluator.run(None, {model.graph.input[0].name: np.asarray(x, np.float64)})[0])
