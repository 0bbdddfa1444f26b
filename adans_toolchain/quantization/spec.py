"""What a QDQ model quantizes, in the float model's names, and ONNX Runtime's formulas for the parameters.

A QDQ model is the float graph with QuantizeLinear -> DequantizeLinear
pairs on some activation edges, integer initializers behind a
DequantizeLinear for weights and biases, and some Relu/Clip nodes removed
(folded into the quantization of the tensor before them, whose clamp at the
zero point does what they did). `QuantSpec` records exactly that, keyed by
(float node name, input index), so the float model plus a spec is the int8
model: `read_spec` reads one back from a QDQ model; the simulation
(simulate.py) runs it.

The parameter formulas below are onnxruntime.quantization's (quant_utils.
compute_scale_zp, quantize_nparray, base_quantizer.quantize_bias_static_impl),
written out so that a search can compute a candidate's parameters without
building its QDQ model; tests check them against what ONNX Runtime stores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from adans_toolchain.errors import LoweringError

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# Activations a QDQ model may fold into the quantization of their input (ORT's QDQRemovableActivation).
REMOVABLE = ("Relu", "Clip")
# The nodes the quantizer was asked to quantize, recorded in the QDQ model (ONNX Runtime's range adjustment depends on them).
NODES_METADATA = "adans.quantized_nodes"

_RANGES = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127), np.dtype(np.int32): (-(2**31), 2**31 - 1)}


@dataclass(frozen=True)
class ActivationQuant:
    """One QuantizeLinear -> DequantizeLinear pair on an activation, per tensor."""

    scale: float  # a float32 value
    zero_point: int
    qmin: int  # the integer type's range: QuantizeLinear saturates to it
    qmax: int
    tensor: str  # the float model's tensor that is quantized
    # The float tensor whose calibrated range gave scale and zero point: `tensor` itself, or the output of the
    # Relu/Clip that reads it alone (ONNX Runtime's adjust_tensor_ranges).
    range_of: str

    @property
    def dtype(self) -> str:
        return "uint8" if self.qmin == 0 and self.qmax == 255 else "int8" if self.qmax == 127 else "int32"


@dataclass(frozen=True, eq=False)
class ConstantQuant:
    """A float initializer stored as integers behind a DequantizeLinear (a weight per channel, a bias in int32)."""

    scale: np.ndarray  # float32, () or (channels,)
    zero_point: np.ndarray  # same shape
    axis: int | None  # the channel axis when `scale` is per channel
    dtype: np.dtype
    initializer: str  # the float model's initializer
    stored: np.ndarray | None = None  # the integers in the QDQ model (None: computed, not read)

    def dequantized(self, values: np.ndarray) -> np.ndarray:
        """What ONNX Runtime computes at run time from `values` quantized with these parameters (float32)."""
        q = quantize_constant(values, self.scale, self.zero_point, self.axis, self.dtype)
        return dequantize(q, self.scale, self.zero_point, self.axis)


@dataclass(frozen=True, eq=False)
class QuantSpec:
    """A float model's int8 version: which edges read quantized values, and with which parameters."""

    activations: Mapping[tuple[str, int], ActivationQuant]  # (node, input index) read through Q -> DQ
    constants: Mapping[tuple[str, int], ConstantQuant]  # (node, input index) read from integers
    outputs: Mapping[str, ActivationQuant]  # graph outputs quantized before they leave
    removed: frozenset[str]  # Relu/Clip nodes the QDQ model dropped (their input's quantization clamps instead)
    nodes: frozenset[str]  # the nodes the quantizer was asked to quantize

    @property
    def layers(self) -> frozenset[str]:
        """Weighted nodes whose weight is stored as integers."""
        return frozenset(node for node, index in self.constants if index == 1)

    def summary(self) -> dict:
        return {
            "quantized_activations": len({a.tensor for a in (*self.activations.values(), *self.outputs.values())}),
            "integer_constants": len(self.constants),
            "folded_activations": len(self.removed),  # Relu/Clip done by the clamp of the quantization before them
        }


# -- ONNX Runtime's parameter formulas -------------------------------------------------------------------------

def activation_params(rmin: float, rmax: float, qmin: int = 0, qmax: int = 255) -> tuple[float, int]:
    """(scale, zero point) of an asymmetric per-tensor activation calibrated to [rmin, rmax] (compute_scale_zp)."""
    rmin = np.minimum(np.float32(rmin), np.float32(0))
    rmax = np.maximum(np.float32(rmax), np.float32(0))
    scale = (np.float64(rmax) - np.float64(rmin)) / (np.float64(qmax) - np.float64(qmin))
    if scale < np.finfo(np.float32).tiny:
        return 1.0, 0
    zero_point = int(np.round(qmin - rmin / scale))
    return float(np.float32(scale)), zero_point


def weight_params(weight: np.ndarray, axis: int, qmin: int, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric (scale, zero point) of a weight over [qmin, qmax] (quantize_weight_per_channel)."""
    moved = np.moveaxis(np.asarray(weight, dtype=np.float32), axis, 0).reshape(weight.shape[axis], -1)
    scales = np.empty(len(moved), dtype=np.float32)
    for c, row in enumerate(moved):
        rmin = np.minimum(row.min() if row.size else np.float32(0), np.float32(0))
        rmax = np.maximum(row.max() if row.size else np.float32(0), np.float32(0))
        absmax = np.maximum(np.abs(rmin), np.abs(rmax))
        scale = (np.float64(absmax) - np.float64(-absmax)) / (np.float64(qmax) - np.float64(qmin))
        scales[c] = 1.0 if scale < np.finfo(np.float32).tiny else np.float32(scale)
    zero_point = np.full(len(moved), int(np.round((qmin + qmax) / 2.0)), dtype=np.int8)
    return scales, zero_point


def bias_scale(input_scale: float, weight_scale: np.ndarray) -> np.ndarray:
    """The int32 bias's scale: input scale x weight scale, in float32 (quantize_bias_static_impl)."""
    return (np.float32(input_scale) * np.asarray(weight_scale, dtype=np.float32)).astype(np.float32)


def adjust_weight_scale_for_bias(input_scale: float, weight_scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """ONNX Runtime enlarges a weight scale whose bias scale would put the bias outside int32 (per channel)."""
    qrange = np.float64(2**31 - 1) - np.float64(-(2**31) + 1)
    scale = np.array(weight_scale, dtype=np.float32)
    for i in range(scale.shape[0]):
        smallest = 1.0001 * (2.0 * np.abs(np.float64(bias[i]))) / qrange
        candidate = np.float64(np.float32(input_scale)) * np.float64(scale[i])
        if 0.0 < candidate < smallest:
            scale[i] = np.float32(np.float64(scale[i]) * (smallest / candidate))
    return scale


def _broadcast(values: np.ndarray, per_channel: np.ndarray, axis: int | None, ndim: int) -> np.ndarray:
    per_channel = np.asarray(per_channel)
    if per_channel.ndim == 0 or axis is None:
        return per_channel
    shape = [1] * ndim
    shape[axis] = per_channel.shape[0]
    return per_channel.reshape(shape)


def quantize_constant(values: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int | None, dtype) -> np.ndarray:
    """The integers ONNX Runtime stores: int8 weights in float32 arithmetic (quantize_nparray), int32 biases in float64."""
    dtype = np.dtype(dtype)
    lo, hi = _RANGES[dtype]
    values = np.asarray(values)
    s = _broadcast(values, scale, axis, values.ndim)
    z = _broadcast(values, zero_point, axis, values.ndim)
    if dtype == np.int32:
        q = np.round(values.astype(np.float64) / np.asarray(s, dtype=np.float64))
    else:
        q = np.round(values.astype(np.float32) / np.asarray(s, dtype=np.float32)) + z.astype(np.float32)
    return np.clip(q, lo, hi).astype(dtype)


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int | None) -> np.ndarray:
    """DequantizeLinear: (q - zero point) x scale, in float32."""
    q = np.asarray(q)
    s = _broadcast(q, scale, axis, q.ndim).astype(np.float32)
    z = _broadcast(q, zero_point, axis, q.ndim)
    return np.asarray((q.astype(np.int64) - z.astype(np.int64)).astype(np.float32) * s, dtype=np.float32)


# -- reading a QDQ model back ----------------------------------------------------------------------------------

def read_spec(qdq: onnx.ModelProto, float_model: onnx.ModelProto) -> QuantSpec:
    """The spec of `qdq`, a QDQ model ONNX Runtime's quantizer made from `float_model`, in `float_model`'s names.

    Raises LoweringError for anything the simulation could not reproduce
    (a node the float model lacks, an integer tensor a float operator reads
    directly, a quantized edge that does not carry the float model's tensor).
    """
    float_nodes = {n.name: n for n in float_model.graph.node}
    inits = {i.name: i for i in qdq.graph.initializer}
    producer = {o: n for n in qdq.graph.node for o in n.output if o}
    kept = {n.name for n in qdq.graph.node if n.op_type not in QDQ_OPS}
    missing = [n for n in float_nodes if n not in kept]
    removed = frozenset(n for n in missing if float_nodes[n].op_type in REMOVABLE)
    if set(missing) - removed:
        raise LoweringError(f"the int8 model lacks float node(s) {sorted(set(missing) - removed)[:3]}: it cannot be simulated")
    unknown = sorted(kept - set(float_nodes))
    if unknown:
        raise LoweringError(f"the int8 model has node(s) {unknown[:3]} the float model lacks: it cannot be simulated")
    nodes = _recorded_nodes(qdq)
    float_producer = {o: n for n in float_model.graph.node for o in n.output if o}
    float_consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in float_model.graph.node:
        for i in n.input:
            if i:
                float_consumers.setdefault(i, []).append(n)

    def float_tensor(name: str) -> str:
        node = producer.get(name)
        if node is None:
            return name  # a graph input
        return float_nodes[node.name].output[list(node.output).index(name)]

    def through_removed(name: str) -> str:
        while name in float_producer and float_producer[name].name in removed:
            name = float_producer[name].input[0]
        return name

    # Which quantization parameters each float tensor uses, by initializer name: an operator that moves values
    # without changing them (Slice, Pad with zeros, MaxPool, Reshape, ...) passes its input's on (ORT's
    # quantize_output_same_as_input), and the simulation must calibrate such a tensor by its input's range.
    scale_of = {float_tensor(n.input[0]): n.input[1] for n in qdq.graph.node if n.op_type == "QuantizeLinear"}

    def range_of(tensor: str) -> str:
        node = float_producer.get(tensor)
        if node is not None and node.input and node.input[0]:
            upstream = through_removed(node.input[0])
            if upstream in scale_of and scale_of[upstream] == scale_of.get(tensor):
                return range_of(upstream)
        return _range_of(tensor, float_consumers, removed, nodes)

    def activation(q: onnx.NodeProto, dq: onnx.NodeProto) -> ActivationQuant:
        scale, zero_point = _array(inits, q.input[1]), _array(inits, q.input[2]) if len(q.input) > 2 and q.input[2] else None
        dq_scale, dq_zero = _array(inits, dq.input[1]), _array(inits, dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
        if scale.size != 1 or not np.array_equal(scale, dq_scale) or not np.array_equal(zero_point, dq_zero):
            raise LoweringError(f"QuantizeLinear '{q.name}' is not per tensor or not undone by its DequantizeLinear: cannot simulate")
        zero_point = np.zeros((), np.uint8) if zero_point is None else zero_point
        lo, hi = _RANGES[zero_point.dtype]
        tensor = float_tensor(q.input[0])
        return ActivationQuant(float(scale.reshape(())), int(zero_point.reshape(())), lo, hi, tensor, range_of(tensor))

    activations, constants, outputs = {}, {}, {}
    for node in qdq.graph.node:
        if node.op_type in QDQ_OPS:
            continue
        original = float_nodes[node.name]
        for index, name in enumerate(node.input):
            source = producer.get(name)
            if source is None or source.op_type not in QDQ_OPS:
                continue
            if source.op_type == "QuantizeLinear":
                raise LoweringError(f"node '{node.name}' reads the integers of '{name}': cannot simulate")
            behind = source.input[0]
            if behind in inits:
                constants[(node.name, index)] = _constant(inits, source, original.input[index])
                continue
            q = producer.get(behind)
            if q is None or q.op_type != "QuantizeLinear":
                raise LoweringError(f"DequantizeLinear '{source.name}' does not follow a QuantizeLinear: cannot simulate")
            quant = activation(q, source)
            if through_removed(original.input[index]) != through_removed(quant.tensor):
                raise LoweringError(
                    f"node '{node.name}' input {index} reads '{quant.tensor}' quantized, but the float model gives it "
                    f"'{original.input[index]}': cannot simulate")
            activations[(node.name, index)] = quant
    for out in qdq.graph.output:
        dq = producer.get(out.name)
        if dq is not None and dq.op_type == "DequantizeLinear" and producer.get(dq.input[0]) is not None:
            q = producer[dq.input[0]]
            if q.op_type == "QuantizeLinear":
                outputs[out.name] = activation(q, dq)
    return QuantSpec(activations, constants, outputs, removed, nodes if nodes is not None else frozenset())


def _recorded_nodes(model: onnx.ModelProto) -> frozenset[str] | None:
    for prop in model.metadata_props:
        if prop.key == NODES_METADATA:
            return frozenset(json.loads(prop.value))
    return None


def _range_of(tensor: str, consumers: dict, removed: frozenset[str], nodes: frozenset[str] | None) -> str:
    """ONNX Runtime calibrates a tensor read only by a quantized Relu/Clip with that Relu/Clip's output range."""
    readers = consumers.get(tensor, [])
    if len(readers) == 1 and readers[0].op_type in REMOVABLE:
        reader = readers[0]
        if reader.name in removed or (nodes is not None and reader.name in nodes):
            return reader.output[0]
    return tensor


def _array(inits: dict, name: str) -> np.ndarray:
    if name not in inits:
        raise LoweringError(f"quantization parameter '{name}' is not a constant: cannot simulate")
    return numpy_helper.to_array(inits[name])


def _constant(inits: dict, dq: onnx.NodeProto, float_name: str) -> ConstantQuant:
    stored = numpy_helper.to_array(inits[dq.input[0]])
    scale = _array(inits, dq.input[1]).astype(np.float32)
    zero_point = _array(inits, dq.input[2]) if len(dq.input) > 2 and dq.input[2] else np.zeros(scale.shape, stored.dtype)
    axis = None
    if scale.ndim == 1:  # per axis (ONNX: a 1-D scale is per channel along `axis`, default 1)
        axis = next((int(a.i) for a in dq.attribute if a.name == "axis"), 1)
        axis = axis + stored.ndim if axis < 0 else axis
        if axis >= stored.ndim:
            # A layer pruned to one output channel: its bias is 1-D with a one-element scale and no axis (the
            # default, 1, is outside it), which ONNX Runtime reads as per tensor, and so does the simulation.
            if scale.size != 1:
                raise LoweringError(f"DequantizeLinear '{dq.name}': per-channel axis {axis} outside its {stored.ndim}-D input")
            axis = None
    if stored.dtype not in _RANGES:
        raise LoweringError(f"DequantizeLinear '{dq.name}' reads {stored.dtype} integers: cannot simulate")
    return ConstantQuant(scale, zero_point, axis, stored.dtype, float_name, stored)
