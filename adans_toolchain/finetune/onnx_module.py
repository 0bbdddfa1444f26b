"""Run (and train) an ONNX graph as a PyTorch module.

The fine-tuned model must be the emitted one: physically smaller, with the
factorised layers and pruned channels of the lowered graph. Rather than
re-building that architecture in PyTorch for every model family (module
surgery breaks on functional code such as the CIFAR ResNet padding
shortcut), this module interprets the lowered ONNX graph with torch
operators. Float initializers become parameters (BatchNorm running
statistics become buffers), so autograd trains them, and the trained values
go back into the same initializer names.

It covers the operators our exported CNN graphs contain; any other operator
is an error naming it, never a silent approximation. The caller checks the
module against ONNX Runtime before training (`max_difference`).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import numpy_helper

from adans_toolchain.analysis.graph import attributes
from adans_toolchain.errors import LoweringError


def _key(name: str) -> str:
    # nn.Module attribute names may not contain dots; keep them unique and readable.
    return name.replace(".", "__").replace("/", "_s_").replace(":", "_c_")


class OnnxModule(nn.Module):
    def __init__(self, model: onnx.ModelProto, image_shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        from adans_toolchain.analysis.graph import Graph

        # Subgraphs that do not depend on the input (shape arithmetic the
        # exporter left unfolded) are evaluated once, by the shape probe.
        probe = Graph.from_model(model, image_shape)
        self.nodes = [n for n in model.graph.node if any(o in probe.activations for o in n.output)]
        self.input_name = model.graph.input[0].name
        self.output_name = model.graph.output[0].name
        self.params = nn.ParameterDict()
        self.stats: dict[str, str] = {}  # onnx name -> buffer key
        self.consts: dict[str, torch.Tensor] = {
            name: torch.from_numpy(np.array(value)) for name, value in probe.values.items() if name not in probe.activations
        }
        statistics = {n.input[i] for n in model.graph.node if n.op_type == "BatchNormalization" for i in (3, 4)}
        for init in model.graph.initializer:
            value = torch.from_numpy(numpy_helper.to_array(init).copy())
            if value.dtype.is_floating_point and init.name in statistics:
                self.register_buffer(_key(init.name), value.float())
                self.stats[init.name] = _key(init.name)
            elif value.dtype.is_floating_point:
                self.params[_key(init.name)] = nn.Parameter(value.float())
            else:
                self.consts[init.name] = value
        self.param_names = {name: _key(name) for name in (i.name for i in model.graph.initializer) if _key(name) in self.params}
        unknown = sorted({n.op_type for n in self.nodes if n.op_type not in _OPS})
        if unknown:
            raise LoweringError(f"fine-tuning cannot run operator(s) {', '.join(unknown)}; run without --finetune-epochs")

    def _value(self, env: dict, name: str):
        if name in env:
            return env[name]
        if name in self.param_names:
            return self.params[self.param_names[name]]
        if name in self.stats:
            return getattr(self, self.stats[name])
        if name in self.consts:
            return self.consts[name]
        raise KeyError(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, object] = {self.input_name: x}
        for node in self.nodes:
            inputs = [self._value(env, i) if i else None for i in node.input]
            store_outputs(env, node, _OPS[node.op_type](self, node, inputs, attributes(node)))
        return env[self.output_name]

    def trained_initializers(self) -> dict[str, np.ndarray]:
        """Current values by ONNX initializer name (parameters and BatchNorm statistics)."""
        values = {name: self.params[key].detach().cpu().numpy() for name, key in self.param_names.items()}
        values.update({name: getattr(self, key).detach().cpu().numpy() for name, key in self.stats.items()})
        return values


def _ints(value) -> list[int]:
    return [int(v) for v in (value.tolist() if torch.is_tensor(value) else value)]


def _conv(mod, node, x, a):
    w, b = x[1], x[2] if len(x) > 2 else None
    kernel = list(w.shape[2:])
    strides = a.get("strides", [1] * len(kernel))
    dilations = a.get("dilations", [1] * len(kernel))
    pads = a.get("pads", [0] * 2 * len(kernel))
    auto_pad = a.get("auto_pad", b"NOTSET")
    if auto_pad not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise LoweringError(f"Conv '{node.name}': auto_pad {auto_pad!r} is not supported for fine-tuning")
    n = len(kernel)
    begin, end = pads[:n], pads[n:]
    inp = x[0]
    if begin != end:
        inp = F.pad(inp, [p for i in reversed(range(n)) for p in (begin[i], end[i])])
        padding = 0
    else:
        padding = begin
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    return conv(inp, w, b, strides, padding, dilations, a.get("group", 1))


def _batchnorm(mod, node, x, a):
    inp, scale, bias, mean, var = x[:5]
    return F.batch_norm(inp, mean, var, scale, bias, training=mod.training, momentum=1.0 - a.get("momentum", 0.9), eps=a.get("epsilon", 1e-5))


def _gemm(mod, node, x, a):
    A, B = x[0], x[1]
    if a.get("transA", 0):
        A = A.t()
    if a.get("transB", 0):
        B = B.t()
    y = a.get("alpha", 1.0) * (A @ B)
    if len(x) > 2 and x[2] is not None:
        y = y + a.get("beta", 1.0) * x[2]
    return y


def _pool(kind):
    def run(mod, node, x, a):
        kernel = a["kernel_shape"]
        n = len(kernel)
        pads = a.get("pads", [0] * 2 * n)
        strides = a.get("strides", [1] * n)
        inp = x[0]
        begin, end = pads[:n], pads[n:]
        ceil = bool(a.get("ceil_mode", 0))
        if kind == "max":
            if begin != end:
                inp = F.pad(inp, [p for i in reversed(range(n)) for p in (begin[i], end[i])], value=-math.inf)
                begin = [0] * n
            return F.max_pool2d(inp, kernel, strides, begin, a.get("dilations", [1] * n), ceil_mode=ceil)
        include_pad = bool(a.get("count_include_pad", 0))
        if begin != end:
            raise LoweringError(f"AveragePool '{node.name}': asymmetric padding is not supported for fine-tuning")
        return F.avg_pool2d(inp, kernel, strides, begin, ceil_mode=ceil, count_include_pad=include_pad)

    return run


def _pad(mod, node, x, a):
    pads = _ints(x[1]) if len(x) > 1 and x[1] is not None else list(a["pads"])
    value = float(x[2]) if len(x) > 2 and x[2] is not None and x[2].numel() else 0.0
    rank = x[0].dim()
    axes = _ints(x[3]) if len(x) > 3 and x[3] is not None else list(range(rank))
    n = len(axes)
    full = [0] * (2 * rank)
    for i, axis in enumerate(axes):
        axis = axis % rank
        full[axis], full[rank + axis] = pads[i], pads[n + i]
    torch_pads = [p for axis in reversed(range(rank)) for p in (full[axis], full[rank + axis])]
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    return F.pad(x[0], torch_pads, mode={"constant": "constant", "reflect": "reflect", "edge": "replicate"}[mode], value=value)


def _slice(mod, node, x, a):
    data = x[0]
    starts, ends = _ints(x[1]), _ints(x[2])
    axes = _ints(x[3]) if len(x) > 3 and x[3] is not None else list(range(len(starts)))
    steps = _ints(x[4]) if len(x) > 4 and x[4] is not None else [1] * len(starts)
    index = [slice(None)] * data.dim()
    for s, e, axis, step in zip(starts, ends, axes, steps):
        size = data.shape[axis]
        s = max(min(s + size if s < 0 else s, size), 0)
        e = max(min(e + size if e < 0 else e, size), 0)
        if step < 0:
            raise LoweringError(f"Slice '{node.name}': negative steps are not supported for fine-tuning")
        index[axis % data.dim()] = slice(s, e, step)
    return data[tuple(index)]


def _reshape(mod, node, x, a):
    shape = _ints(x[1])
    shape = [x[0].shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x[0].reshape(shape)


def _reduce_mean(mod, node, x, a):
    axes = a.get("axes") or (_ints(x[1]) if len(x) > 1 and x[1] is not None else list(range(x[0].dim())))
    return x[0].mean(dim=axes, keepdim=bool(a.get("keepdims", 1)))


def _clip(mod, node, x, a):
    lo = x[1] if len(x) > 1 and x[1] is not None else a.get("min")
    hi = x[2] if len(x) > 2 and x[2] is not None else a.get("max")
    return torch.clamp(x[0], None if lo is None else float(lo), None if hi is None else float(hi))


def _constant(mod, node, x, a):
    return torch.from_numpy(numpy_helper.to_array(a["value"]).copy()) if "value" in a else torch.tensor(a.get("value_float", a.get("value_int")))


def _squeeze_like(fn):
    def run(mod, node, x, a):
        axes = a.get("axes") or (_ints(x[1]) if len(x) > 1 and x[1] is not None else None)
        return fn(x[0], axes)

    return run


def _unsqueeze(t, axes):
    for axis in sorted(axes):
        t = t.unsqueeze(axis)
    return t


def _squeeze(t, axes):
    if axes is None:
        return t.squeeze()
    for axis in sorted((a % t.dim() for a in axes), reverse=True):
        t = t.squeeze(axis)
    return t


_OPS = {
    "Conv": _conv,
    "BatchNormalization": _batchnorm,
    "Gemm": _gemm,
    "MatMul": lambda m, n, x, a: x[0] @ x[1],
    "Relu": lambda m, n, x, a: F.relu(x[0]),
    "LeakyRelu": lambda m, n, x, a: F.leaky_relu(x[0], a.get("alpha", 0.01)),
    "Clip": _clip,
    "Sigmoid": lambda m, n, x, a: torch.sigmoid(x[0]),
    "HardSigmoid": lambda m, n, x, a: torch.clamp(a.get("alpha", 0.2) * x[0] + a.get("beta", 0.5), 0, 1),
    "HardSwish": lambda m, n, x, a: F.hardswish(x[0]),
    "Tanh": lambda m, n, x, a: torch.tanh(x[0]),
    "Add": lambda m, n, x, a: x[0] + x[1],
    "Sub": lambda m, n, x, a: x[0] - x[1],
    "Mul": lambda m, n, x, a: x[0] * x[1],
    "Div": lambda m, n, x, a: x[0] / x[1],
    "GlobalAveragePool": lambda m, n, x, a: x[0].mean(dim=tuple(range(2, x[0].dim())), keepdim=True),
    "GlobalMaxPool": lambda m, n, x, a: x[0].amax(dim=tuple(range(2, x[0].dim())), keepdim=True),
    "MaxPool": _pool("max"),
    "AveragePool": _pool("avg"),
    "Flatten": lambda m, n, x, a: x[0].flatten(a.get("axis", 1)) if a.get("axis", 1) > 0 else x[0].reshape(1, -1),
    "Reshape": _reshape,
    "Concat": lambda m, n, x, a: torch.cat(x, dim=a["axis"]),
    "Pad": _pad,
    "Slice": _slice,
    "Identity": lambda m, n, x, a: x[0],
    "Dropout": lambda m, n, x, a: F.dropout(x[0], p=float(x[1]) if len(x) > 1 and x[1] is not None else a.get("ratio", 0.5), training=m.training),
    "Constant": _constant,
    "Shape": lambda m, n, x, a: torch.tensor(x[0].shape, dtype=torch.int64),
    "Gather": lambda m, n, x, a: torch.index_select(x[0], a.get("axis", 0), x[1].reshape(-1)).reshape(
        list(x[0].shape[: a.get("axis", 0)]) + list(x[1].shape) + list(x[0].shape[a.get("axis", 0) + 1 :])
    ),
    "Unsqueeze": _squeeze_like(_unsqueeze),
    "Squeeze": _squeeze_like(_squeeze),
    "ReduceMean": _reduce_mean,
    "Transpose": lambda m, n, x, a: x[0].permute(*(a.get("perm") or reversed(range(x[0].dim())))),
    "Softmax": lambda m, n, x, a: F.softmax(x[0], dim=a.get("axis", -1)),
    "Cast": lambda m, n, x, a: x[0].to({1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool}[a["to"]]),
}


def store_outputs(env: dict, node, outputs) -> None:
    """Bind a node's outputs (one value or a tuple) to its output names; an empty name is an unused output."""
    if not isinstance(outputs, tuple):
        outputs = (outputs,)
    for name, value in zip(node.output, outputs):
        if name:
            env[name] = value
