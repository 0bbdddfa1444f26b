"""Single-kernel ONNX graphs: one executed kernel of a model, at chosen channel counts.

The profiler times these in ONNX Runtime. A graph holds exactly the
operators of one `cost_models.kernels.Kernel` (Conv with bias standing in
for Conv+BatchNorm, which onnxsim folds), its weights random, its activation
inputs as graph inputs. Values do not matter for timing; shapes, attributes
and the fused pattern do.

For a Conv+Add kernel the `blocked_residual` variant feeds the residual
through a 1x1 depthwise helper convolution, so that on x86 ONNX Runtime
sees it arrive in the blocked layout and fuses the Add as a sum input, as
it does inside a chain of blocked convolutions. The helper's nodes are
named `adans_helper*` and left out of the timing.

An int8 kernel (its anchor's weights at 8 bits, `Kernel.quantized`) is built
as the QDQ graph onnxruntime.quantization.quantize_static writes for that
layer (quantization/qdq.py INT8_SCHEME), which ONNX Runtime fuses into its
integer kernels when it loads the model:

    x -> QuantizeLinear -> DequantizeLinear -> Conv/Gemm/MatMul -> QuantizeLinear -> DequantizeLinear -> y
                int8 weights -> DequantizeLinear ----^      ^---- DequantizeLinear <- int32 bias

with uint8 activations (per tensor), int8 weights symmetric per output
channel in INT8_SCHEME's range, an int32 bias at input scale x weight
scale. As quantize_static does, a Relu or Clip after the layer is not a node:
the output's quantization (zero point 0) clips. A residual Add reads both
operands through Q/DQ pairs (ONNX Runtime: QLinearAdd); another activation
sits between Q/DQ pairs. The QuantizeLinear of the graph's inputs and the
DequantizeLinear of its output are the boundary with float: the timing
keeps them out of the kernel (timing.py), since between int8 layers the
runtime runs neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cost_models.kernels import Kernel
from cost_models.workload import FLOAT_PRECISION

OPSET = 17
HELPER = "adans_helper"
INPUT, RESIDUAL, OUTPUT = "x", "residual", "y"
# Weighted operators with an int8 form (quantization/qdq.py WEIGHTED_OPS: what the int8 lowering quantizes).
INT8_OPS = ("Conv", "Gemm", "MatMul")
# Activations quantize_static folds into the preceding layer's output quantization (zero point 0 clips at 0).
CLIPPING_ACTIVATIONS = ("Relu", "Clip")


class UnsupportedKernelError(ValueError):
    """The profiler cannot build a graph for this kernel (the reason says why)."""


@dataclass(frozen=True)
class KernelGraph:
    model: onnx.ModelProto
    feeds: dict[str, tuple[int, ...]]  # graph input name -> shape
    output_shape: tuple[int, ...]
    precision: str = FLOAT_PRECISION  # "int8": a QDQ graph (see the module docstring)

    @property
    def quantized(self) -> bool:
        return self.precision != FLOAT_PRECISION


def _with_channels(shape: tuple[int, ...], c: int) -> tuple[int, ...]:
    return (shape[0], c, *shape[2:]) if len(shape) >= 2 else shape


def _attrs(op) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in op.attributes}


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: dict[str, tuple[int, ...]] = {}
        self._n = 0

    def name(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"

    def const(self, value: np.ndarray, stem: str = "c") -> str:
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, shape: tuple[int, ...], stem: str = "w") -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        return self.const((self.rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))).astype(np.float32), stem)

    def node(self, op_type: str, inputs: list[str], *, name: str | None = None, output: str | None = None, **attrs) -> str:
        out = output or self.name(f"{op_type.lower()}_out")
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name or self.name(op_type), **attrs))
        return out

    def model(self, output: str, output_shape: tuple[int, ...], precision: str = FLOAT_PRECISION) -> KernelGraph:
        graph = helper.make_graph(
            self.nodes,
            "adans_kernel",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in self.inputs.items()],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, list(output_shape))],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = min(model.ir_version, 9)
        return KernelGraph(model, dict(self.inputs), output_shape, precision)


def kernel_graph(kernel: Kernel, channels: tuple[int, ...], axes: tuple[str, ...], *, variant: str | None = None, seed: int = 0) -> KernelGraph:
    """The graph of `kernel` with the channel counts `channels` along `axes` (see Kernel.channels)."""
    if kernel.anchor.dtype != "float32":
        raise UnsupportedKernelError(f"only float32 kernels are profiled, not {kernel.anchor.dtype}")
    values = dict(zip(axes, channels))
    c_in = values.get("c_in", values.get("c", values.get("k", kernel.input_shape[1] if len(kernel.input_shape) > 1 else 1)))
    c_out = values.get("c_out", values.get("c", values.get("n", kernel.output_shape[1] if len(kernel.output_shape) > 1 else 1)))
    if min(c_in, c_out) < 1:
        raise UnsupportedKernelError("channel counts must be >= 1")
    b = _Builder(seed)
    in_shape = _with_channels(kernel.input_shape, c_in)
    out_shape = _with_channels(kernel.output_shape, c_out)
    b.inputs[INPUT] = in_shape
    t = kernel.anchor.op_type
    if kernel.quantized:
        if variant is not None:
            raise UnsupportedKernelError(f"variant {variant} applies to float kernels only")
        y = _int8(b, kernel, c_in, c_out, out_shape)
    elif t in ("Conv", "ConvTranspose"):
        y = _conv(b, kernel, c_in, c_out, in_shape, out_shape, variant)
    elif t in ("Gemm", "MatMul"):
        y = _gemm(b, kernel, c_in, c_out)
    else:
        if variant is not None:
            raise UnsupportedKernelError(f"variant {variant} applies to Conv+Add kernels only")
        y = _single(b, kernel, c_in, c_out, in_shape, out_shape)
    b.nodes[-1].output[0] = OUTPUT
    if y != OUTPUT:
        for n in b.nodes:  # rename the last output
            for i, name in enumerate(n.input):
                if name == y:
                    n.input[i] = OUTPUT
    return b.model(OUTPUT, out_shape, kernel.precision)


def _activation(b: _Builder, op, x: str) -> str:
    attrs = _attrs(op)
    if op.op_type == "Clip":
        lo = b.const(np.array(0.0, np.float32), "clip_min")
        hi = b.const(np.array(6.0, np.float32), "clip_max")
        return b.node("Clip", [x, lo, hi])
    return b.node(op.op_type, [x], **attrs)


def _conv_form(kernel: Kernel, c_in: int, c_out: int) -> tuple[dict, tuple[int, ...]]:
    """The convolution's attributes and weight shape at `c_in` -> `c_out` channels (groups follow for depthwise)."""
    a = kernel.anchor
    if kernel.is_depthwise:
        if c_in != c_out:
            raise UnsupportedKernelError("a depthwise convolution keeps its channel count")
        groups = c_in
    else:
        groups = int(a.groups)
        if c_in % groups or c_out % groups:
            raise UnsupportedKernelError(f"{c_in} -> {c_out} channels do not divide into {groups} groups")
    attrs = _attrs(a)
    attrs.update(kernel_shape=list(a.kernel), strides=list(a.strides), dilations=list(a.dilations), group=groups)
    if a.op_type == "Conv":
        return attrs, (c_out, c_in // groups, *a.kernel)
    return attrs, (c_in, c_out // groups, *a.kernel)


def _conv(b: _Builder, kernel: Kernel, c_in: int, c_out: int, in_shape, out_shape, variant: str | None) -> str:
    a = kernel.anchor
    attrs, weight_shape = _conv_form(kernel, c_in, c_out)
    w = b.weight(weight_shape)
    bias = b.const(np.zeros(c_out, np.float32), "bias")
    y = b.node(a.op_type, [INPUT, w, bias], **attrs)
    for op in kernel.ops[1:]:
        if op.op_type == "BatchNormalization":
            continue  # folded into the weights and bias
        if op.op_type == "Add":
            b.inputs[RESIDUAL] = out_shape
            residual = RESIDUAL
            if variant == "blocked_residual":
                hw = b.weight((c_out, 1, 1, 1), f"{HELPER}_w")
                hb = b.const(np.zeros(c_out, np.float32), f"{HELPER}_b")
                residual = b.node("Conv", [RESIDUAL, hw, hb], name=f"{HELPER}_conv", output=f"{HELPER}_out",
                                  kernel_shape=[1, 1], group=c_out)
            elif variant is not None:
                raise UnsupportedKernelError(f"unknown variant {variant}")
            y = b.node("Add", [y, residual])
        else:
            y = _activation(b, op, y)
    if variant is not None and RESIDUAL not in b.inputs:
        raise UnsupportedKernelError(f"variant {variant} applies to Conv+Add kernels only")
    return y


def _gemm(b: _Builder, kernel: Kernel, k: int, n: int) -> str:
    a = kernel.anchor
    if len(kernel.input_shape) != 2 and a.op_type == "Gemm":
        raise UnsupportedKernelError("Gemm takes a 2-D input")
    b.inputs[INPUT] = (*kernel.input_shape[:-1], k)
    if a.op_type == "Gemm":
        attrs = _attrs(a)
        trans_b = int(attrs.get("transB", 0))
        w = b.weight((n, k) if trans_b else (k, n))
        bias = b.const(np.zeros(n, np.float32), "bias")
        y = b.node("Gemm", [INPUT, w, bias], **attrs)
    else:
        w = b.weight((k, n))
        y = b.node("MatMul", [INPUT, w])
    for op in kernel.ops[1:]:
        if op.op_type == "Add":
            y = b.node("Add", [y, b.const(np.zeros(n, np.float32), "bias")])
        else:
            y = _activation(b, op, y)
    return y


class _Qdq:
    """QuantizeLinear/DequantizeLinear pieces of a QDQ graph, in INT8_SCHEME's types and ranges.

    The scales are plausible, not calibrated: values do not change which
    kernels ONNX Runtime runs or how long they take; zero points do (0 lets
    the runtime drop a Relu into the quantization), so they follow quantize_static.
    """

    def __init__(self, b: _Builder) -> None:
        from adans_toolchain.quantization.qdq import ACTIVATION_RANGE, WEIGHT_RANGE

        self.b = b
        self.weight_range = WEIGHT_RANGE
        self.activation_low, activation_high = ACTIVATION_RANGE
        self.activation_middle = (self.activation_low + activation_high + 1) // 2
        self.activation_scale = 4.0 / (activation_high - self.activation_low)

    def round_trip(self, x: str, *, clips_at_zero: bool = False, stem: str = "act") -> str:
        """x -> QuantizeLinear -> DequantizeLinear: a tensor held as uint8 between integer kernels."""
        b = self.b
        scale = b.const(np.array(self.activation_scale, np.float32), f"{stem}_scale")
        zero = b.const(np.array(self.activation_low if clips_at_zero else self.activation_middle, np.uint8), f"{stem}_zero")
        q = b.node("QuantizeLinear", [x, scale, zero])
        return b.node("DequantizeLinear", [q, scale, zero])

    def weight(self, shape: tuple[int, ...], axis: int) -> tuple[str, np.ndarray]:
        """int8 weights, symmetric per channel along `axis`, behind a DequantizeLinear; (its output, the scales)."""
        b = self.b
        low, high = self.weight_range
        channels = shape[axis]
        fan_in = max(1, int(np.prod(shape)) // channels)
        scales = np.full(channels, 1.0 / (high * np.sqrt(fan_in)), np.float32)
        values = b.const(b.rng.integers(low, high + 1, shape).astype(np.int8), "w_int8")
        inputs = [values, b.const(scales, "w_scale"), b.const(np.zeros(channels, np.int8), "w_zero")]
        return b.node("DequantizeLinear", inputs, axis=axis), scales

    def bias(self, weight_scales: np.ndarray) -> str:
        """An int32 bias at input scale x weight scale, as quantize_static stores it."""
        b = self.b
        n = len(weight_scales)
        scales = (weight_scales * np.float32(self.activation_scale)).astype(np.float32)
        inputs = [b.const(np.zeros(n, np.int32), "bias_int32"), b.const(scales, "bias_scale"), b.const(np.zeros(n, np.int32), "bias_zero")]
        return b.node("DequantizeLinear", inputs, axis=0)


def _int8(b: _Builder, kernel: Kernel, c_in: int, c_out: int, out_shape) -> str:
    """The QDQ graph of an int8 kernel (see the module docstring)."""
    a = kernel.anchor
    if a.op_type not in INT8_OPS or not a.weight_shape:
        raise UnsupportedKernelError(f"int8 is profiled for {', '.join(INT8_OPS)} with constant weights, not {a.op_type}")
    qdq = _Qdq(b)
    if a.op_type == "Conv":
        attrs, weight_shape = _conv_form(kernel, c_in, c_out)
        w, scales = qdq.weight(weight_shape, axis=0)
        y = b.node("Conv", [qdq.round_trip(INPUT, stem="x"), w, qdq.bias(scales)], **attrs)
    else:
        y = _int8_gemm(b, qdq, kernel, c_in, c_out)
    clips_at_zero = False
    for op in kernel.ops[1:]:
        if op.op_type == "BatchNormalization":
            continue  # folded into the weights and bias
        if op.op_type == "Add":
            y = b.node("Add", [qdq.round_trip(y), _int8_addend(b, qdq, kernel, out_shape, c_out)])
        elif op.op_type in CLIPPING_ACTIVATIONS:
            clips_at_zero = True  # quantize_static drops the node; the output quantization clips
        else:
            y = _activation(b, op, qdq.round_trip(y))
    return qdq.round_trip(y, clips_at_zero=clips_at_zero, stem="y")


def _int8_gemm(b: _Builder, qdq: _Qdq, kernel: Kernel, k: int, n: int) -> str:
    a = kernel.anchor
    if len(kernel.input_shape) != 2 and a.op_type == "Gemm":
        raise UnsupportedKernelError("Gemm takes a 2-D input")
    b.inputs[INPUT] = (*kernel.input_shape[:-1], k)
    x = qdq.round_trip(INPUT, stem="x")
    if a.op_type == "MatMul":
        w, _ = qdq.weight((k, n), axis=1)
        return b.node("MatMul", [x, w])
    attrs = _attrs(a)
    trans_b = int(attrs.get("transB", 0))
    w, scales = qdq.weight((n, k) if trans_b else (k, n), axis=0 if trans_b else 1)
    return b.node("Gemm", [x, w, qdq.bias(scales)], **attrs)


def _int8_addend(b: _Builder, qdq: _Qdq, kernel: Kernel, out_shape, n: int) -> str:
    """The other operand of a fused Add, quantized: a convolution's residual input, or a MatMul's constant bias."""
    if kernel.is_conv:
        b.inputs[RESIDUAL] = out_shape
        return qdq.round_trip(RESIDUAL, stem="residual")
    return qdq.round_trip(b.const(np.zeros(n, np.float32), "bias"), stem="bias")


def _split(total: int, parts: list[int]) -> list[int]:
    """Split `total` channels over inputs in proportion to their original counts, each >= 1."""
    if total < len(parts):
        raise UnsupportedKernelError(f"{total} channels cannot feed {len(parts)} inputs")
    weights = np.array(parts, dtype=float) / sum(parts)
    split = np.maximum(1, np.floor(weights * total).astype(int))
    split[int(np.argmax(weights))] += total - split.sum()
    if split.min() < 1:
        raise UnsupportedKernelError(f"{total} channels cannot feed {len(parts)} inputs")
    return [int(s) for s in split]


def _single(b: _Builder, kernel: Kernel, c_in: int, c_out: int, in_shape, out_shape) -> str:
    op = kernel.anchor
    t = op.op_type
    attrs = _attrs(op)
    if t == "Slice":
        starts, ends, axes, steps = [], [], [], []
        for axis, (i, o) in enumerate(zip(in_shape, out_shape)):
            if axis == 0 or i == o:
                continue
            step = max(1, round(i / o))
            if ceil(i / step) != o:
                step = 1
            starts.append(0), ends.append(i if step > 1 else o), axes.append(axis), steps.append(step)
        if not axes:
            raise UnsupportedKernelError("a Slice that keeps its shape is not executed")
        params = [b.const(np.array(v, np.int64), s) for v, s in ((starts, "starts"), (ends, "ends"), (axes, "axes"), (steps, "steps"))]
        return b.node("Slice", [INPUT, *params])
    if t == "Pad":
        diff = [o - i for i, o in zip(in_shape, out_shape)]
        if min(diff) < 0:
            raise UnsupportedKernelError("Pad with negative amounts (cropping) is not profiled")
        before = [d // 2 for d in diff]
        pads = b.const(np.array(before + [d - p for d, p in zip(diff, before)], np.int64), "pads")
        value = b.const(np.array(0.0, np.float32), "value")
        return b.node("Pad", [INPUT, pads, value], **attrs)
    if t == "Reshape":
        return b.node("Reshape", [INPUT, b.const(np.array(out_shape, np.int64), "shape")])
    if t in ("Squeeze", "Unsqueeze"):
        return b.node("Reshape", [INPUT, b.const(np.array(out_shape, np.int64), "shape")], name=f"{t}_as_reshape")
    if t == "Clip":
        return _activation(b, op, INPUT)
    if t == "Concat":
        parts = [kernel.input_shape[1], *(s[1] for s in kernel.other_shapes)]
        split = _split(c_out, parts)
        b.inputs[INPUT] = _with_channels(kernel.input_shape, split[0])
        names = [INPUT]
        for i, (s, c) in enumerate(zip(kernel.other_shapes, split[1:])):
            name = f"other{i}"
            b.inputs[name] = _with_channels(s, c)
            names.append(name)
        return b.node("Concat", names, **attrs)
    if t in ("MaxPool", "AveragePool", "LpPool") and "kernel_shape" not in attrs:
        if not op.kernel:
            raise UnsupportedKernelError(
                f"{t} {op.name}: the workload does not record its kernel_shape/strides, so it cannot be rebuilt"
            )
        attrs.update(kernel_shape=list(op.kernel), strides=list(op.strides or op.kernel))
    inputs = [INPUT]
    for i, s in enumerate(kernel.other_shapes):
        name = f"other{i}"
        b.inputs[name] = _with_channels(s, c_out) if len(s) > 1 and s[1] == kernel.output_shape[1] else s
        inputs.append(name)
    if t in ("Add", "Sub", "Mul", "Div") and len(inputs) == 1:
        inputs.append(b.const(np.array(1.0, np.float32), "operand"))  # a constant operand: a scalar stands in
    return b.node(t, inputs, **attrs)
