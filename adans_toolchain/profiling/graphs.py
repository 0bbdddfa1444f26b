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
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cost_models.kernels import Kernel

OPSET = 17
HELPER = "adans_helper"
INPUT, RESIDUAL, OUTPUT = "x", "residual", "y"


class UnsupportedKernelError(ValueError):
    """The profiler cannot build a graph for this kernel (the reason says why)."""


@dataclass(frozen=True)
class KernelGraph:
    model: onnx.ModelProto
    feeds: dict[str, tuple[int, ...]]  # graph input name -> shape
    output_shape: tuple[int, ...]


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

    def model(self, output: str, output_shape: tuple[int, ...]) -> KernelGraph:
        graph = helper.make_graph(
            self.nodes,
            "adans_kernel",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in self.inputs.items()],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, list(output_shape))],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = min(model.ir_version, 9)
        return KernelGraph(model, dict(self.inputs), output_shape)


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
    if t in ("Conv", "ConvTranspose"):
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
    return b.model(OUTPUT, out_shape)


def _activation(b: _Builder, op, x: str) -> str:
    attrs = _attrs(op)
    if op.op_type == "Clip":
        lo = b.const(np.array(0.0, np.float32), "clip_min")
        hi = b.const(np.array(6.0, np.float32), "clip_max")
        return b.node("Clip", [x, lo, hi])
    return b.node(op.op_type, [x], **attrs)


def _conv(b: _Builder, kernel: Kernel, c_in: int, c_out: int, in_shape, out_shape, variant: str | None) -> str:
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
        w = b.weight((c_out, c_in // groups, *a.kernel))
    else:
        w = b.weight((c_in, c_out // groups, *a.kernel))
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
