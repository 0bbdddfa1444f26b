"""An emitted (pre-fold) ONNX graph as a PyTorch module that the search can evaluate like the user's own module.

`--rounds` (pipeline/rounds.py) searches again from the previous round's
fine-tuned model: the lowered ONNX graph with BatchNorm still separate
(`Emitted.pre_simplify`), physically smaller, with the pruned channel counts
written into its weights and into the `Pad` and `Reshape` constants lowering
rewrote. `OnnxModule` runs such a graph for training; this module runs it for
evaluation, with the surface `evaluation.SubstitutionEvaluator` relies on:

- `state_dict()` names are the graph's initializer names (the submodule tree
  follows their dots: `layer1.0.conv1.weight` is the `weight` of submodule
  `layer1.0.conv1`), so parameter substitution, slicing and lowering address
  the same names, as they do for an exported PyTorch model;
- a Conv, BatchNormalization or Gemm node whose initializers are named like a
  PyTorch layer's (`<p>.weight`, `<p>.bias`, `<p>.running_mean`, ...) runs
  as a real `nn.Conv*d`, `nn.BatchNorm*d` or `nn.Linear` at path `<p>`:
  BatchNorm re-estimation, first-order Taylor priorities (hooks on the
  consumer layers) and physical slicing of candidates (depthwise `groups`
  included) work on it unchanged;
- every other node is interpreted by `OnnxModule`'s operator table.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import numpy_helper

from adans_toolchain.analysis.graph import Graph, attributes
from adans_toolchain.errors import LoweringError
from adans_toolchain.finetune.onnx_module import _OPS, store_outputs

_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BATCHNORMS = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


class NamedOnnxModule(nn.Module):
    """Runs `model` (an ONNX graph of torch-exportable operators) with its initializers as named parameters."""

    def __init__(self, model: onnx.ModelProto, image_shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        probe = Graph.from_model(model, image_shape)
        self.input_name = model.graph.input[0].name
        self.output_name = model.graph.output[0].name
        values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        floats = {name for name, v in values.items() if np.issubdtype(v.dtype, np.floating)}
        nodes = [n for n in model.graph.node if any(o in probe.activations for o in n.output)]
        unknown = sorted({n.op_type for n in nodes if n.op_type not in _OPS})
        if unknown:
            raise LoweringError(f"the emitted graph has operator(s) {', '.join(unknown)} that cannot run as a PyTorch module")
        # Constants: shape arithmetic evaluated by the probe, and non-float initializers.
        self._consts: dict[str, torch.Tensor] = {
            name: torch.from_numpy(np.array(v)) for name, v in probe.values.items()
            if name not in probe.activations and name not in floats
        }
        self._consts.update({name: torch.from_numpy(v.copy()) for name, v in values.items() if name not in floats})
        self._owners: dict[str, tuple[nn.Module, str]] = {}  # initializer name -> (owning module, attribute)
        self._steps: list[tuple[onnx.NodeProto, dict, nn.Module | None, list[int] | None]] = []
        statistics = {n.input[i] for n in nodes if n.op_type == "BatchNormalization" for i in (3, 4) if len(n.input) > i}
        for node in nodes:
            a = attributes(node)
            layer = _layer(node, a, values, floats, probe)
            if layer is not None and self._free(layer[0], layer[2]):
                path, module, names, prepad = layer
                self._place(path, module)
                for name, attr in names.items():
                    self._owners[name] = (module, attr)
                self._steps.append((node, a, module, prepad))
                continue
            self._steps.append((node, a, None, None))
            for name in node.input:
                if name in floats and name not in self._owners:
                    value = torch.from_numpy(values[name].copy()).float()
                    owner, attr = self._container(name)
                    if name in statistics:
                        owner.register_buffer(attr, value)
                    else:
                        owner.register_parameter(attr, nn.Parameter(value))
                    self._owners[name] = (owner, attr)

    # -- building the module tree ------------------------------------------------
    def _free(self, path: str, names: dict[str, str]) -> bool:
        """Whether a layer module can sit at `path` holding `names` (nothing placed there yet)."""
        if any(name in self._owners for name in names):
            return False
        try:
            parent, attr = self._parent(path)
        except LoweringError:
            return False  # a name in the way: the node runs functionally, its initializers as plain parameters
        return not hasattr(parent, attr)

    def _place(self, path: str, module: nn.Module) -> None:
        parent, attr = self._parent(path)
        parent.add_module(attr, module)

    def _container(self, name: str) -> tuple[nn.Module, str]:
        """(module, attribute) where the parameter called `name` lives: its dotted prefix as nested containers."""
        parent, attr = self._parent(name)
        if hasattr(parent, attr):
            raise LoweringError(f"initializer '{name}' clashes with another name of the graph; it cannot be a PyTorch parameter")
        return parent, attr

    def _parent(self, dotted: str) -> tuple[nn.Module, str]:
        *parts, attr = dotted.split(".")
        if not attr or any(not p for p in parts):
            raise LoweringError(f"initializer name '{dotted}' cannot be a PyTorch parameter name")
        module: nn.Module = self
        for part in parts:
            child = module._modules.get(part)
            if child is None:
                if hasattr(module, part):
                    raise LoweringError(f"initializer '{dotted}' clashes with another name of the graph")
                child = nn.Module()
                module.add_module(part, child)
            module = child
        return module, attr

    # -- running it -----------------------------------------------------------------
    def _value(self, env: dict, name: str):
        if name in env:
            return env[name]
        owner = self._owners.get(name)
        if owner is not None:
            return getattr(owner[0], owner[1])  # read live: the slicer swaps tensors in place
        return env["__consts__"][name]

    def _consts_on(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The constants on `device` (indices must be where the activations are), copied there once."""
        cache = self.__dict__.setdefault("_consts_by_device", {})
        if device not in cache:
            cache[device] = {name: t.to(device) for name, t in self._consts.items()}
        return cache[device]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, object] = {self.input_name: x, "__consts__": self._consts_on(x.device)}
        for node, a, module, prepad in self._steps:
            if module is not None:
                inp = self._value(env, node.input[0])
                if prepad:
                    inp = F.pad(inp, prepad)
                outputs = module(inp)
            else:
                inputs = [self._value(env, i) if i else None for i in node.input]
                outputs = _OPS[node.op_type](self, node, inputs, a)
            store_outputs(env, node, outputs)
        return env[self.output_name]


def _layer(node, a: dict, values: dict, floats: set, probe: Graph):
    """(path, module, {initializer: attribute}, pre-padding) when `node` can run as a PyTorch layer, else None."""
    if node.op_type == "Conv":
        return _conv_layer(node, a, values, floats)
    if node.op_type == "BatchNormalization":
        return _batchnorm_layer(node, a, values, floats, probe)
    if node.op_type == "Gemm":
        return _linear_layer(node, a, values, floats)
    return None


def _path(names: list[str], suffixes: tuple[str, ...]) -> str | None:
    """The common module path of `names` if each is '<path>.<suffix>' in order."""
    if len(names) != len(suffixes) or not names[0].endswith("." + suffixes[0]):
        return None
    path = names[0][: -len(suffixes[0]) - 1]
    return path if all(n == f"{path}.{s}" for n, s in zip(names, suffixes)) else None


def _param(value: np.ndarray) -> nn.Parameter:
    return nn.Parameter(torch.from_numpy(value.copy()).float())


def _own_weight_and_bias(layer: nn.Module, names: list[str], values: dict) -> dict[str, str]:
    """Give `layer` the initializers `names` (weight, and bias if there is one) as parameters: {initializer: attribute}."""
    layer.weight = _param(values[names[0]])
    owned = {names[0]: "weight"}
    if len(names) > 1:
        layer.bias = _param(values[names[1]])
        owned[names[1]] = "bias"
    return owned


def _conv_layer(node, a, values, floats):
    names = [n for n in node.input[1:] if n]
    if any(n not in floats for n in names):
        return None
    path = _path(names, ("weight", "bias")[: len(names)])
    w = values[names[0]] if path else None
    if w is None or w.ndim - 2 not in _CONVS or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    n = w.ndim - 2
    pads = list(a.get("pads", [0] * 2 * n))
    begin, end = pads[:n], pads[n:]
    prepad = None
    if begin != end:
        prepad = [p for i in reversed(range(n)) for p in (begin[i], end[i])]
        begin = [0] * n
    group = int(a.get("group", 1))
    conv = _CONVS[n](w.shape[1] * group, w.shape[0], tuple(w.shape[2:]), stride=tuple(a.get("strides", [1] * n)),
                     padding=tuple(begin), dilation=tuple(a.get("dilations", [1] * n)), groups=group, bias=len(names) > 1)
    return path, conv, _own_weight_and_bias(conv, names, values), prepad


def _batchnorm_layer(node, a, values, floats, probe):
    names = list(node.input[1:5])
    rank = len(probe.shapes.get(node.input[0], ()))
    path = _path(names, ("weight", "bias", "running_mean", "running_var"))
    if path is None or any(n not in floats for n in names) or rank not in _BATCHNORMS or a.get("training_mode", 0):
        return None
    bn = _BATCHNORMS[rank](len(values[names[0]]), eps=float(a.get("epsilon", 1e-5)), momentum=1.0 - float(a.get("momentum", 0.9)))
    bn.weight, bn.bias = _param(values[names[0]]), _param(values[names[1]])
    bn.running_mean = torch.from_numpy(values[names[2]].copy()).float()
    bn.running_var = torch.from_numpy(values[names[3]].copy()).float()
    bn.eval()
    return path, bn, dict(zip(names, ("weight", "bias", "running_mean", "running_var"))), None


def _linear_layer(node, a, values, floats):
    names = [n for n in node.input[1:] if n]
    if any(n not in floats for n in names) or a.get("transA", 0) or not a.get("transB", 0):
        return None
    if float(a.get("alpha", 1.0)) != 1.0 or float(a.get("beta", 1.0)) != 1.0:
        return None
    path = _path(names, ("weight", "bias")[: len(names)])
    if path is None or values[names[0]].ndim != 2 or (len(names) > 1 and values[names[1]].ndim != 1):
        return None
    w = values[names[0]]
    linear = nn.Linear(w.shape[1], w.shape[0], bias=len(names) > 1)
    return path, linear, _own_weight_and_bias(linear, names, values), None
