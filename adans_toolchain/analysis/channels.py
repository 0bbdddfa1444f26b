"""Coupled channel groups of an ONNX graph.

Every channel of every activation tensor is an *element*. Operators that act
channel by channel (BatchNormalization, Relu, Add, Mul, pooling, depthwise
Conv, Concat, Pad, Flatten, ...) tie an input element to an output element;
the connected components of these ties are the *units* that must be removed
together (one unit is one channel of a convolution's output plus everything
that channel flows into until a weighted operator reads it). Operators that
mix channels through weights (Conv, Gemm, MatMul) *consume* elements on
their input side and *produce* new, independent elements on the output side.

Units that appear in exactly the same tensors form a *group*: one search
dimension, pruned by one ratio. Concatenated branches and the zero-padded
channels of a CIFAR ResNet shortcut therefore form separate groups, as they
should: their channels have different producers.

Operators that move channels tie them where they land, and add the ties
that keep the lowered graph valid:

- Concat, Slice and Split along channels: each input (output) slice is tied
  to its offset in the output (input); lowering rewrites the bounds.
- Grouped convolution (1 < group < input channels): every conv group must
  keep the same number of channels, so a unit is one channel in *each* group
  at the same in-group position (G channels; Torch-Pruning does the same),
  on the input side and on the output side. The weight's input axis is
  indexed by the in-group position, a *virtual* tensor of the analysis that
  the consumer binding names; `group` stays as it is.
- Channel shuffle (Reshape [N, A*B, ...] -> [N, A, B, ...], swap A and B,
  Reshape back): channel a*B + b lands on b*A + a; the A channels at one
  in-group position b are tied, so the shuffle stays a shuffle of what is
  kept.
- A Transpose that moves the channel axis (ConvNeXt's Permute to
  channels-last) carries it along: elementwise operators, LayerNormalization
  over other axes and MatMul contracting it follow channels on any axis;
  every other operator freezes channels that are not on axis 1. A MatMul's
  weight may be a stored initializer or Transpose(initializer) (a Linear's
  [out, in] weight, as frontend.export names ConvNeXt's MLP weights): the
  MLP's hidden channels (Linear(d, 4d) -> GELU -> Linear(4d, d)) are then a
  group like any other.

An element that reaches the model input or output, or an operator the
analysis does not understand, freezes its unit, and the group is reported
with that reason instead of being pruned.

Exactness does not depend on zero surviving the path: search-time
evaluation zeroes the *consumer* weights that read a pruned unit, so the
unit's values, whatever they are, cannot reach the output; the lowered graph
removes the same columns together with everything upstream of them. An
operator whose output channels depend on other channels of its input without
weights (LayerNormalization over the channel axis, LRN) cannot be made exact
that way and freezes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from adans_toolchain.analysis.graph import PROBE_BATCH, Graph, attributes

PRODUCER, CONSUMER, CHANNELWISE = "producer", "consumer", "channelwise"


@dataclass(frozen=True)
class ParamBinding:
    """Axis `axis` of initializer `param` is indexed by the channels of activation `tensor`."""

    param: str
    axis: int
    tensor: str
    role: str  # PRODUCER (makes the channel), CONSUMER (reads it), CHANNELWISE (per-channel op parameter)
    node: str


@dataclass(frozen=True)
class ChannelGroup:
    """Units that live in the same tensors: one search dimension."""

    id: str
    units: tuple[dict[str, np.ndarray], ...]  # per unit: tensor -> channel indices in that tensor
    tensors: tuple[str, ...]
    producers: tuple[str, ...]  # node names whose weights make these channels
    consumers: tuple[str, ...]  # node names whose weights read them
    frozen_reason: str | None

    @property
    def size(self) -> int:
        return len(self.units)

    @property
    def prunable(self) -> bool:
        return self.frozen_reason is None

    def channels_in(self, tensor: str, unit_indices) -> np.ndarray:
        parts = [self.units[u][tensor] for u in unit_indices if tensor in self.units[u]]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


@dataclass
class ChannelAnalysis:
    graph: Graph
    groups: list[ChannelGroup]
    bindings: list[ParamBinding]
    channel_tensors: dict[str, int]  # activation tensor (or virtual in-group tensor) -> channel count
    shuffles: tuple["ChannelShuffle", ...] = ()  # channel shuffles the analysis followed; lowering rewrites their shapes
    channel_axes: dict[str, int] = field(default_factory=dict)  # activation tensor -> its channel axis, where not 1

    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    @property
    def frozen_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if not g.prunable]


@dataclass(frozen=True)
class ChannelShuffle:
    """Reshape x [N, A*B, ...] to [N, A, B, ...], swap A and B, reshape back to z [N, A*B, ...].

    Channel a*B + b of x lands on channel b*A + a of z. The two intermediate
    tensors have no channel axis of their own; the analysis skips them.
    """

    source: str  # x
    split: str  # output of the first Reshape, [N, A, B, ...]
    swapped: str  # output of the Transpose, [N, B, A, ...]
    target: str  # z
    groups: int  # A
    per_group: int  # B

    def source_of_target(self) -> np.ndarray:
        """For every channel of z, the channel of x it holds."""
        return np.arange(self.groups * self.per_group).reshape(self.groups, self.per_group).T.ravel()


# ---------------------------------------------------------------------------
# Operator classes
# ---------------------------------------------------------------------------

# Each output channel depends only on the same channel of the inputs (after
# broadcasting); per-channel constant operands are parameters of the group.
ELEMENTWISE = frozenset(
    {
        "Relu", "LeakyRelu", "PRelu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "Tanh",
        "Identity", "Dropout", "Elu", "Selu", "Celu", "Gelu", "Erf", "Softplus", "Softsign", "Mish",
        "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Cast",
        "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Sin", "Cos",
        "ThresholdedRelu", "Shrink", "Swish",
    }
)
# Each output channel is a function of the same input channel over space.
SPATIAL_CHANNELWISE = frozenset(
    {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool", "InstanceNormalization"}
)
# Read only the shape of their input, never its values.
SHAPE_ONLY = frozenset({"Shape", "Size"})
# Operators whose rules follow channels on any axis (after a Transpose moved them);
# every other rule assumes axis 1.
_ANY_CHANNEL_AXIS = ELEMENTWISE | {"Transpose", "MatMul", "LayerNormalization"}
# Initializers the PyTorch exporter creates itself (a Linear weight folded into its transpose
# for a MatMul on a 4-D input is one): no parameter of the PyTorch module carries that name.
_EXPORTER_CONSTANT = "onnx::"


def _normalise_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _is_batched(graph: Graph, name: str) -> bool:
    shape = graph.shapes.get(name)
    return shape is not None and len(shape) >= 2 and shape[0] == PROBE_BATCH


def find_channel_shuffles(graph: Graph) -> list[ChannelShuffle]:
    """Every Reshape -> Transpose -> Reshape chain that shuffles the channel axis (ShuffleNet's channel_shuffle)."""
    shuffles = []
    outputs = set(graph.output_names)
    for node in graph.nodes:
        if node.op_type != "Reshape" or not _is_batched(graph, node.input[0]):
            continue
        x, split = node.input[0], node.output[0]
        xs, ss = graph.shapes[x], graph.shapes.get(split, ())
        if len(ss) != len(xs) + 1 or ss[0] != xs[0] or tuple(ss[3:]) != tuple(xs[2:]) or ss[1] * ss[2] != xs[1]:
            continue
        if min(ss[1], ss[2]) < 2:
            continue
        transpose = _sole_reader(graph, split, "Transpose")
        if transpose is None or split in outputs:
            continue
        perm = list(attributes(transpose).get("perm", ()))
        if perm != [0, 2, 1, *range(3, len(ss))]:
            continue
        swapped = transpose.output[0]
        back = _sole_reader(graph, swapped, "Reshape")
        if back is None or swapped in outputs or tuple(graph.shapes.get(back.output[0], ())) != tuple(xs):
            continue
        shuffles.append(ChannelShuffle(x, split, swapped, back.output[0], int(ss[1]), int(ss[2])))
    return shuffles


def _sole_reader(graph: Graph, tensor: str, op_type: str) -> onnx.NodeProto | None:
    readers = [n for n in graph.consumers.get(tensor, []) if n.op_type not in SHAPE_ONLY]
    return readers[0] if len(readers) == 1 and readers[0].op_type == op_type else None


def _channel_axes(graph: Graph, skipped: set[str]) -> dict[str, int]:
    """The channel axis of every batched float activation: 1, unless a Transpose moved it.

    Followed through the operators whose rules understand any channel axis;
    everywhere else the channel axis is taken to be 1 (and those rules freeze
    a tensor whose channels a Transpose moved).
    """
    axes = {name: 1 for name in graph.activations if _is_batched(graph, name) and name not in skipped}
    for node in graph.nodes:
        out = node.output[0] if node.output else ""
        inputs = [i for i in node.input if i in axes]
        if out not in axes or not inputs:
            continue
        rank = len(graph.shapes[out])
        if node.op_type == "Transpose":
            perm = list(attributes(node).get("perm", reversed(range(rank))))
            if perm and perm[0] == 0 and axes[inputs[0]] in perm:
                axes[out] = perm.index(axes[inputs[0]])
        elif node.op_type in _ANY_CHANNEL_AXIS:
            same_rank = [i for i in inputs if len(graph.shapes[i]) == rank]
            if same_rank and (node.op_type != "MatMul" or axes[same_rank[0]] == rank - 1):
                axes[out] = axes[same_rank[0]]
    return axes


class _Builder:
    """Collects ties between elements, frozen elements and parameter bindings."""

    def __init__(self, graph: Graph, skipped: set[str] = frozenset()) -> None:
        self.graph = graph
        self.axis = _channel_axes(graph, set(skipped))
        self.offset: dict[str, int] = {}
        self.count: dict[str, int] = {}
        total = 0
        for name in sorted(self.axis, key=self._order_key):
            if not self._is_float(name):
                continue
            self.offset[name], self.count[name] = total, graph.shapes[name][self.axis[name]]
            total += self.count[name]
        self.n = total
        self.edges_a: list[np.ndarray] = []
        self.edges_b: list[np.ndarray] = []
        self.frozen = np.full(total, -1, dtype=np.int64)
        self.reasons: list[str] = []
        self.bindings: list[ParamBinding] = []

    def _order_key(self, name: str) -> tuple[int, str]:
        node = self.graph.producer.get(name)
        index = self._node_index.get(node.name if node is not None else "", -1)
        return (index, name)

    @property
    def _node_index(self) -> dict[str, int]:
        if not hasattr(self, "_node_index_cache"):
            self._node_index_cache = {n.name: i for i, n in enumerate(self.graph.nodes)}
        return self._node_index_cache

    def _is_float(self, name: str) -> bool:
        value = self.graph.values.get(name)
        if value is not None:
            return value.dtype.kind == "f"
        return True  # large activations are only kept as shapes; the probe only exposes typed outputs

    # -- element helpers ---------------------------------------------------
    def has(self, tensor: str) -> bool:
        return tensor in self.offset

    def elements(self, tensor: str) -> np.ndarray:
        return np.arange(self.offset[tensor], self.offset[tensor] + self.count[tensor])

    def add_virtual(self, name: str, count: int) -> np.ndarray:
        """Elements of a tensor that exists only in the analysis (a weight axis indexed by in-group position)."""
        self.offset[name], self.count[name] = self.n, count
        self.n += count
        self.frozen = np.concatenate([self.frozen, np.full(count, -1, dtype=np.int64)])
        return self.elements(name)

    def tie(self, a: np.ndarray, b: np.ndarray) -> None:
        if len(a):
            self.edges_a.append(np.asarray(a))
            self.edges_b.append(np.asarray(b))

    def tie_tensors(self, a: str, b: str) -> None:
        self.tie(self.elements(a), self.elements(b))

    def freeze(self, tensors, reason: str) -> None:
        index = len(self.reasons)
        self.reasons.append(reason)
        for t in tensors:
            if self.has(t):
                e = self.elements(t)
                unset = self.frozen[e] < 0
                self.frozen[e[unset]] = index

    def bind(self, param: str, axis: int, tensor: str, role: str, node: onnx.NodeProto) -> None:
        self.bindings.append(ParamBinding(param, axis, tensor, role, node.name))


def _node_tensors(b: _Builder, node: onnx.NodeProto) -> list[str]:
    return [t for t in list(node.input) + list(node.output) if t and b.has(t)]


def _freeze_node(b: _Builder, node: onnx.NodeProto, why: str) -> None:
    b.freeze(_node_tensors(b, node), f"{node.op_type} node '{node.name}': {why}")


# ---------------------------------------------------------------------------
# Rules: one function per operator family
# ---------------------------------------------------------------------------


def _rule_elementwise(b: _Builder, node: onnx.NodeProto) -> None:
    out = node.output[0]
    if not b.has(out):
        _freeze_node(b, node, "output has no channel axis")
        return
    if any(o and o in b.graph.consumers for o in node.output[1:]):
        _freeze_node(b, node, "a secondary output is used")
        return
    out_shape = b.graph.shapes[out]
    rank, axis = len(out_shape), b.axis[out]
    channels = out_shape[axis]
    for name in node.input:
        if not name:
            continue
        shape = b.graph.shapes.get(name)
        if shape is None:
            continue
        aligned = axis - (rank - len(shape))  # numpy broadcasting aligns trailing axes
        dim = shape[aligned] if 0 <= aligned < len(shape) else 1
        if b.has(name):
            if dim == channels and aligned == b.axis[name]:
                b.tie_tensors(name, out)
            else:
                _freeze_node(b, node, f"input '{name}' is broadcast across channels")
        elif dim == channels and channels > 1:
            if name in b.graph.initializers:
                b.bind(name, aligned, out, CHANNELWISE, node)
            else:
                _freeze_node(b, node, f"per-channel operand '{name}' is computed, not stored")
        elif dim not in (1, channels):
            _freeze_node(b, node, f"operand '{name}' has an unexpected shape {shape}")


def _rule_spatial_channelwise(b: _Builder, node: onnx.NodeProto) -> None:
    if len(node.output) > 1 and node.output[1] and node.output[1] in b.graph.consumers:
        _freeze_node(b, node, "pooling indices are used")
        return
    x, y = node.input[0], node.output[0]
    if not (b.has(x) and b.has(y)) or b.count[x] != b.count[y]:
        _freeze_node(b, node, "channel counts of input and output differ")
        return
    b.tie_tensors(x, y)
    if node.op_type == "InstanceNormalization":
        for param in node.input[1:3]:
            b.bind(param, 0, y, CHANNELWISE, node)


def _rule_batchnorm(b: _Builder, node: onnx.NodeProto) -> None:
    x, y = node.input[0], node.output[0]
    if not (b.has(x) and b.has(y)) or any(p not in b.graph.initializers for p in node.input[1:5]):
        _freeze_node(b, node, "statistics are not stored parameters")
        return
    b.tie_tensors(x, y)
    for param in node.input[1:5]:
        b.bind(param, 0, y, CHANNELWISE, node)


def _rule_conv(b: _Builder, node: onnx.NodeProto) -> None:
    x, w, y = node.input[0], node.input[1], node.output[0]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if not (b.has(x) and b.has(y)):
        _freeze_node(b, node, "input or output has no channel axis")
        return
    if w not in b.graph.initializers or (bias and bias not in b.graph.initializers):
        _freeze_node(b, node, "its weights are computed at run time")
        return
    group = attributes(node).get("group", 1)
    c_in, c_out = b.count[x], b.count[y]
    if group == 1:
        b.bind(w, 1, x, CONSUMER, node)
        b.bind(w, 0, y, PRODUCER, node)
        if bias:
            b.bind(bias, 0, y, PRODUCER, node)
    elif group == c_in and c_out % c_in == 0:
        # Depthwise (with channel multiplier m): output channel c*m + j reads input c only.
        m = c_out // c_in
        b.tie(np.repeat(b.elements(x), m), b.elements(y))
        b.bind(w, 0, y, CHANNELWISE, node)
        if bias:
            b.bind(bias, 0, y, CHANNELWISE, node)
    else:
        _tie_grouped_conv(b, node, group)


def _tie_grouped_conv(b: _Builder, node: onnx.NodeProto, group: int) -> None:
    """Grouped convolution: equal numbers of channels go from every conv group, at the same in-group positions.

    Input channel g*a + i (a per group) is read by weight column i of group
    g's rows, so the G input channels at position i form one unit, read by
    column i: a virtual tensor of a elements (the in-group positions) carries
    the consumer binding of the weight's axis 1. Output channel g*b + j is
    row g*b + j; the G rows at position j form one unit. What is kept stays
    a valid grouped convolution with the same `group` (Torch-Pruning prunes
    grouped convolutions the same way). Whole groups would be the other
    choice; equal counts keep `group`, and with it the channel shuffle that
    often follows (ShuffleNet v1), valid.
    """
    x, w, y = node.input[0], node.input[1], node.output[0]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    x_by_group = b.elements(x).reshape(group, b.count[x] // group)
    b.tie(x_by_group[:-1].ravel(), x_by_group[1:].ravel())
    positions = grouped_conv_positions(node)
    b.tie(x_by_group[0], b.add_virtual(positions, x_by_group.shape[1]))
    b.bind(w, 1, positions, CONSUMER, node)
    y_by_group = b.elements(y).reshape(group, b.count[y] // group)
    b.tie(y_by_group[:-1].ravel(), y_by_group[1:].ravel())
    b.bind(w, 0, y, PRODUCER, node)
    if bias:
        b.bind(bias, 0, y, PRODUCER, node)


def grouped_conv_positions(node: onnx.NodeProto) -> str:
    """Name of the virtual tensor whose channels are the in-group input positions of a grouped Conv."""
    return f"{node.input[0]} [in-group channels of {node.name or node.output[0]}]"


def _rule_conv_transpose(b: _Builder, node: onnx.NodeProto) -> None:
    x, w, y = node.input[0], node.input[1], node.output[0]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if attributes(node).get("group", 1) != 1 or w not in b.graph.initializers or not (b.has(x) and b.has(y)):
        _freeze_node(b, node, "only ungrouped ConvTranspose with stored weights is supported")
        return
    b.bind(w, 0, x, CONSUMER, node)
    b.bind(w, 1, y, PRODUCER, node)
    if bias:
        b.bind(bias, 0, y, PRODUCER, node)


def _rule_gemm(b: _Builder, node: onnx.NodeProto) -> None:
    a, w, y = node.input[0], node.input[1], node.output[0]
    attrs = attributes(node)
    if not (b.has(a) and b.has(y)) or attrs.get("transA", 0) or w not in b.graph.initializers:
        _freeze_node(b, node, "only activation x stored-weight products (transA=0) are supported")
        return
    trans_b = attrs.get("transB", 0)
    b.bind(w, 1 if trans_b else 0, a, CONSUMER, node)
    b.bind(w, 0 if trans_b else 1, y, PRODUCER, node)
    if len(node.input) > 2 and node.input[2]:
        c = node.input[2]
        shape = b.graph.shapes.get(c, ())
        if c in b.graph.initializers and shape and shape[-1] == b.count[y] and np.prod(shape) == b.count[y]:
            b.bind(c, len(shape) - 1, y, PRODUCER, node)
        elif c in b.graph.initializers and int(np.prod(shape)) == 1:
            pass  # a scalar bias does not depend on the channel
        else:
            _freeze_node(b, node, "its bias is not a stored per-feature vector")


def matmul_weight(graph: Graph, name: str) -> tuple[str, bool] | None:
    """The stored initializer a MatMul's weight input is, and whether it is read transposed.

    Either the initializer itself ([in, out]), or Transpose(perm [1, 0]) of a
    2-D initializer ([out, in], a Linear's own layout: frontend.export stores
    ConvNeXt's channels-last Linear weights that way, under their parameter
    names). None for anything else (a weight computed at run time).
    """
    if name in graph.initializers:
        return name, False
    node = graph.producer.get(name)
    if (
        node is not None and node.op_type == "Transpose" and node.input[0] in graph.initializers
        and graph.initializers[node.input[0]].ndim == 2 and list(attributes(node).get("perm", [1, 0])) == [1, 0]
    ):
        return node.input[0], True
    return None


def _rule_matmul(b: _Builder, node: onnx.NodeProto) -> None:
    a, y = node.input[0], node.output[0]
    weight = matmul_weight(b.graph, node.input[1])
    if not (b.has(a) and b.has(y)) or weight is None:
        _freeze_node(b, node, "only activation x stored-weight products are supported")
        return
    w, transposed = weight
    rank = len(b.graph.shapes[a])
    if len(b.graph.shapes[w]) != 2 or b.axis[a] != rank - 1 or b.axis[y] != rank - 1:
        _freeze_node(b, node, "the channel axis is not the contracted axis")
        return
    if rank > 2 and w.startswith(_EXPORTER_CONSTANT):
        # A Linear on a channels-last tensor whose folded weight.T frontend.export could not trace back to
        # one parameter: substitution on the PyTorch module cannot reach it by name.
        _freeze_node(
            b, node, f"its weight '{w}' is a constant the exporter derived from a parameter (a folded transpose), "
            "which no parameter of the PyTorch model is named after"
        )
        return
    b.bind(w, 1 if transposed else 0, a, CONSUMER, node)
    b.bind(w, 0 if transposed else 1, y, PRODUCER, node)


def _rule_layer_norm(b: _Builder, node: onnx.NodeProto) -> None:
    """Channelwise if it normalises over axes after the channel axis; otherwise its statistics mix channels."""
    x, y = node.input[0], node.output[0]
    if not (b.has(x) and b.has(y)):
        _freeze_node(b, node, "input or output has no channel axis")
        return
    if any(o and o in b.graph.consumers for o in node.output[1:]):
        _freeze_node(b, node, "its mean or inverse deviation output is used")
        return
    first = _normalise_axis(int(attributes(node).get("axis", -1)), len(b.graph.shapes[x]))
    if b.axis[x] >= first:
        _freeze_node(
            b, node, "its statistics span the channel axis: removing a channel changes how every other channel is "
            "normalised, which neither zeroing its readers nor slicing reproduces"
        )
        return
    b.tie_tensors(x, y)  # scale and bias span the normalised axes only, never the channels


def _rule_concat(b: _Builder, node: onnx.NodeProto) -> None:
    y = node.output[0]
    if not b.has(y) or not all(b.has(i) for i in node.input if i):
        _freeze_node(b, node, "an input has no channel axis")
        return
    axis = _normalise_axis(attributes(node)["axis"], len(b.graph.shapes[y]))
    out = b.elements(y)
    start = 0
    for name in node.input:
        if axis == 1:
            b.tie(b.elements(name), out[start : start + b.count[name]])
            start += b.count[name]
        elif b.count[name] == b.count[y]:
            b.tie_tensors(name, y)
        else:
            _freeze_node(b, node, "inputs disagree on the channel count")


def _ints(b: _Builder, node: onnx.NodeProto, input_index: int, attr: str | None = None) -> list[int] | None:
    return node_ints(b.graph, node, input_index, attr)


def node_ints(graph: Graph, node: onnx.NodeProto, input_index: int, attr: str | None = None) -> list[int] | None:
    """An integer operand of `node`: attribute `attr` if present, else input `input_index` as probed (None if unknown)."""
    if attr is not None and attr in attributes(node):
        return list(attributes(node)[attr])
    if len(node.input) > input_index and node.input[input_index]:
        value = graph.constant(node.input[input_index])
        return None if value is None else [int(v) for v in np.ravel(value)]
    return None


def _rule_pad(b: _Builder, node: onnx.NodeProto) -> None:
    x, y = node.input[0], node.output[0]
    pads = _ints(b, node, 1, "pads")
    if not (b.has(x) and b.has(y)) or pads is None:
        _freeze_node(b, node, "its pads are not known before run time")
        return
    rank = len(b.graph.shapes[x])
    axes = _ints(b, node, 3) or list(range(rank))
    axes = [_normalise_axis(a, rank) for a in axes]
    before = dict(zip(axes, pads[: len(axes)]))
    after = dict(zip(axes, pads[len(axes) :]))
    if before.get(0, 0) or after.get(0, 0):
        _freeze_node(b, node, "it pads the batch axis")
        return
    lead, trail = before.get(1, 0), after.get(1, 0)
    if lead < 0 or trail < 0:
        _freeze_node(b, node, "it crops channels")
        return
    if (lead or trail) and attributes(node).get("mode", b"constant") not in (b"constant", "constant"):
        _freeze_node(b, node, "it pads channels by reflection or edge copy")
        return
    # Channels padded in are new elements of the output with no producer;
    # pruning them only shortens the pad.
    b.tie(b.elements(x), b.elements(y)[lead : lead + b.count[x]])


@dataclass(frozen=True)
class ChannelSlice:
    """A Slice along the channel axis: entry `index` of its starts/ends, channels start..stop-1 (step 1)."""

    index: int
    start: int
    stop: int


def channel_slice(graph: Graph, node: onnx.NodeProto) -> ChannelSlice | str | None:
    """What a Slice takes from the channel axis: None if it keeps every channel, else the bounds or why they do not fit."""
    x = node.input[0]
    starts, ends = node_ints(graph, node, 1), node_ints(graph, node, 2)
    if starts is None or ends is None:
        return "its bounds are not known before run time"
    rank = len(graph.shapes[x])
    axes = [_normalise_axis(a, rank) for a in (node_ints(graph, node, 3) or list(range(len(starts))))]
    if 1 not in axes:
        return None
    i = axes.index(1)
    step = (node_ints(graph, node, 4) or [1] * len(axes))[i]
    if step != 1:
        return f"it takes every {step}th channel"
    channels = graph.shapes[x][1]
    start, stop, _ = slice(starts[i], ends[i]).indices(channels)
    if (start, stop) == (0, channels):
        return None
    if len(axes) > 1 and not all(is_stored(graph, name) for name in node.input[1:3]):
        # Lowering stores the bounds it rewrites; a run-time bound of another axis would freeze at its probed value.
        return "it slices channels and another axis with bounds computed at run time"
    return ChannelSlice(i, start, stop)


def _rule_slice(b: _Builder, node: onnx.NodeProto) -> None:
    x, y = node.input[0], node.output[0]
    if not (b.has(x) and b.has(y)):
        _freeze_node(b, node, "input or output has no channel axis")
        return
    if b.graph.shapes[x][0] != b.graph.shapes[y][0]:
        _freeze_node(b, node, "it slices the batch axis")
        return
    taken = channel_slice(b.graph, node)
    if isinstance(taken, str):
        _freeze_node(b, node, taken)
    elif taken is None:
        b.tie_tensors(x, y)
    elif taken.stop - taken.start != b.count[y]:
        _freeze_node(b, node, f"channels {taken.start}..{taken.stop - 1} of its input do not make its output")
    else:
        # Channel start + j becomes channel j; lowering moves the bounds to what is kept below them.
        b.tie(b.elements(x)[taken.start : taken.stop], b.elements(y))


def _rule_flatten_reshape(b: _Builder, node: onnx.NodeProto) -> None:
    x, y = node.input[0], node.output[0]
    if not (b.has(x) and b.has(y)):
        _freeze_node(b, node, "it moves the batch or channel axis")
        return
    xs, ys = b.graph.shapes[x], b.graph.shapes[y]
    spatial = int(np.prod(xs[2:]))
    if ys[1] == xs[1] and int(np.prod(ys[2:])) == spatial:
        b.tie_tensors(x, y)  # channel axis untouched (e.g. N,C,1,1 -> N,C)
    elif len(ys) == 2 and ys[1] == xs[1] * spatial:
        # Channel-major flatten: channel c becomes features c*S .. c*S + S - 1.
        b.tie(np.repeat(b.elements(x), spatial), b.elements(y))
    else:
        _freeze_node(b, node, f"it reshapes {list(xs)} to {list(ys)}, mixing the channel axis")


def _rule_axes_op(b: _Builder, node: onnx.NodeProto) -> None:
    """Squeeze/Unsqueeze/Transpose/Reduce*/Softmax: fine while axes 0 and 1 stay put."""
    x, y = node.input[0], node.output[0]
    if not (b.has(x) and b.has(y)):
        _freeze_node(b, node, "it moves the batch or channel axis")
        return
    attrs = attributes(node)
    rank_x, rank_y = len(b.graph.shapes[x]), len(b.graph.shapes[y])
    op = node.op_type
    if op == "Transpose":
        perm = list(attrs.get("perm", reversed(range(rank_x))))
        if perm[0] != 0 or b.axis[y] != perm.index(b.axis[x]) or b.count[x] != b.count[y]:
            _freeze_node(b, node, "it moves the batch axis, or the channel axis where the analysis loses it")
        else:
            b.tie_tensors(x, y)  # the channel axis moves (ConvNeXt's Permute); its channels stay
        return
    if op in ("Softmax", "LogSoftmax", "Hardmax"):
        touched = {_normalise_axis(attrs.get("axis", -1), rank_x)}
    else:
        axes = _ints(b, node, 1, "axes")
        rank = rank_y if op == "Unsqueeze" else rank_x
        if axes is None:
            axes = [] if op == "Squeeze" else list(range(rank))
            if op == "Squeeze":
                axes = [i for i, d in enumerate(b.graph.shapes[x]) if d == 1]
        touched = {_normalise_axis(a, rank) for a in axes}
    if touched & {0, 1} or b.count[x] != b.count[y]:
        _freeze_node(b, node, "it acts on the batch or channel axis")
        return
    b.tie_tensors(x, y)


def is_stored(graph: Graph, name: str) -> bool:
    """A constant in the file (not computed from the input's shape at run time)."""
    return bool(name) and name not in graph.activations and graph.is_constant(name)


def _rule_resize(b: _Builder, node: onnx.NodeProto) -> None:
    """Resize/Upsample interpolate each channel over space on its own, while batch and channel axes keep their size."""
    x, y = node.input[0], node.output[0]
    if not (b.has(x) and b.has(y)):
        _freeze_node(b, node, "input or output has no channel axis")
        return
    xs, ys = b.graph.shapes[x], b.graph.shapes[y]
    if xs[0] != ys[0] or b.count[x] != b.count[y]:
        _freeze_node(b, node, f"it rescales the batch or channel axis ({list(xs)} to {list(ys)})")
        return
    if attributes(node).get("coordinate_transformation_mode") in (b"tf_crop_and_resize", "tf_crop_and_resize"):
        _freeze_node(b, node, "it crops a region of interest (tf_crop_and_resize), which may cut the channel axis")
        return
    sizes = node.input[3] if node.op_type == "Resize" and len(node.input) > 3 else ""
    if is_stored(b.graph, sizes) and len(b.graph.constant(sizes)) == len(xs):
        # The file spells out the full output shape, channel count included;
        # lowering does not rewrite it. (Sizes computed from Shape at run time,
        # as PyTorch exports them, follow the new channel count by themselves.)
        _freeze_node(b, node, "its 'sizes' are a stored constant that spells out the channel count")
        return
    b.tie_tensors(x, y)


def channel_split_sizes(graph: Graph, node: onnx.NodeProto) -> list[int] | None:
    """The channel count of each output of a Split along the channel axis (None if it splits another axis)."""
    x = node.input[0]
    axis = _normalise_axis(int(attributes(node).get("axis", 0)), len(graph.shapes[x]))
    if axis != 1:
        return None
    return [graph.shapes[o][1] for o in node.output]


def _rule_split(b: _Builder, node: onnx.NodeProto) -> None:
    x = node.input[0]
    outs = [o for o in node.output if o]
    if not b.has(x) or not all(b.has(o) for o in outs) or len(outs) != len(node.output):
        _freeze_node(b, node, "an input or output has no channel axis")
        return
    axis = _normalise_axis(int(attributes(node).get("axis", 0)), len(b.graph.shapes[x]))
    if axis == 0:
        _freeze_node(b, node, "it splits the batch axis")
        return
    if axis == 1:
        # Each part ties to its offset in the input; lowering rewrites the split sizes.
        sizes = channel_split_sizes(b.graph, node)
        if sum(sizes) != b.count[x]:
            _freeze_node(b, node, f"its parts ({sizes}) do not add up to its {b.count[x]} input channels")
            return
        offsets = np.cumsum([0, *sizes])
        for o, start, stop in zip(outs, offsets[:-1], offsets[1:]):
            b.tie(b.elements(x)[start:stop], b.elements(o))
        return
    for o in outs:  # a split over space keeps every channel in every part
        b.tie_tensors(x, o)


def _rule_gather(b: _Builder, node: onnx.NodeProto) -> None:
    x, y = node.input[0], node.output[0]
    if not (b.has(x) and b.has(y)):
        _freeze_node(b, node, "input or output has no channel axis")
        return
    axis = _normalise_axis(int(attributes(node).get("axis", 0)), len(b.graph.shapes[x]))
    if axis < 2 or b.count[x] != b.count[y] or b.graph.shapes[x][0] != b.graph.shapes[y][0]:
        _freeze_node(b, node, "it selects along the batch or channel axis")
        return
    b.tie_tensors(x, y)


# Operators whose every output channel depends on other channels of their input:
# pruning any of those channels would change the survivors. Frozen, with the reason.
CHANNEL_MIXING = {
    "LRN": "it normalises each channel by its neighbouring channels, so removing one changes the others",
    "GroupNormalization": "its statistics are shared by all channels of a group",
    "MeanVarianceNormalization": "its statistics may span the channel axis",
    "LpNormalization": "it normalises across channels",
    "DepthToSpace": "it moves channels into space",
    "SpaceToDepth": "it moves space into channels",
    "Einsum": "it contracts axes the analysis does not track",
    "CumSum": "it accumulates along an axis the analysis does not track",
    "TopK": "it selects elements by value",
    "ArgMax": "it reduces by value", "ArgMin": "it reduces by value",
    "NonMaxSuppression": "it selects elements by value",
}


def _rule_channel_mixing(b: _Builder, node: onnx.NodeProto) -> None:
    _freeze_node(b, node, CHANNEL_MIXING[node.op_type])


_RULES: dict[str, Callable[[_Builder, onnx.NodeProto], None]] = {
    **{op: _rule_elementwise for op in ELEMENTWISE},
    **{op: _rule_spatial_channelwise for op in SPATIAL_CHANNELWISE},
    "BatchNormalization": _rule_batchnorm,
    "Conv": _rule_conv,
    "ConvTranspose": _rule_conv_transpose,
    "Gemm": _rule_gemm,
    "MatMul": _rule_matmul,
    "Concat": _rule_concat,
    "Pad": _rule_pad,
    "Slice": _rule_slice,
    "Flatten": _rule_flatten_reshape,
    "Reshape": _rule_flatten_reshape,
    "Resize": _rule_resize,
    "Upsample": _rule_resize,
    "Split": _rule_split,
    "Gather": _rule_gather,
    "LayerNormalization": _rule_layer_norm,
    **{op: _rule_channel_mixing for op in CHANNEL_MIXING},
    **{
        op: _rule_axes_op
        for op in (
            "Squeeze", "Unsqueeze", "Transpose", "Softmax", "LogSoftmax", "Hardmax", "ReduceMean",
            "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ReduceProd",
        )
    },
}


# ---------------------------------------------------------------------------
# Analysis
# ---------------------------------------------------------------------------


def analyse_channels(graph: Graph) -> ChannelAnalysis:
    shuffles = find_channel_shuffles(graph)
    b = _Builder(graph, skipped={t for s in shuffles for t in (s.split, s.swapped)})
    shuffle_at = {s.split: s for s in shuffles}
    inside_shuffle = {s.swapped for s in shuffles} | {s.target for s in shuffles}
    for node in graph.nodes:
        out = node.output[0] if node.output else ""
        if out in shuffle_at:
            _tie_shuffle(b, shuffle_at[out])
            continue
        if out in inside_shuffle and node.op_type in ("Transpose", "Reshape"):
            continue
        tensors = [t for t in list(node.input) + list(node.output) if t and b.has(t)]
        if not tensors or node.op_type in SHAPE_ONLY:
            continue
        moved = [t for t in tensors if b.axis[t] != 1]
        rule = _RULES.get(node.op_type)
        if moved and node.op_type not in _ANY_CHANNEL_AXIS:
            _freeze_node(
                b, node, f"the channels of '{moved[0]}' are on axis {b.axis[moved[0]]} (a Transpose moved them), and "
                "this operator is followed only with channels on axis 1"
            )
        elif rule is None:
            _freeze_node(b, node, "operator not understood by the channel analysis")
        else:
            rule(b, node)
    for name in (graph.input_name, *graph.output_names):
        b.freeze([name], f"'{name}' is a model {'input' if name == graph.input_name else 'output'}")
    units = _connected_units(b)
    groups = _group_units(b, units)
    moved = {t: axis for t, axis in b.axis.items() if axis != 1 and t in b.count}
    return ChannelAnalysis(graph, groups, b.bindings, dict(b.count), tuple(shuffles), moved)


def _tie_shuffle(b: _Builder, shuffle: ChannelShuffle) -> None:
    """Channel a*B + b of x is channel b*A + a of z; the A channels at in-group position b go together.

    Kept channels of x then have the same in-group positions in every one of
    the A groups, so the lowered Reshapes ([N, A, B', ...] and back) shuffle
    exactly the kept channels the way the original shuffled them.
    """
    x, z = shuffle.source, shuffle.target
    if not (b.has(x) and b.has(z)):
        b.freeze([x, z], f"channel shuffle of '{x}': input or output has no channel axis")
        return
    source = b.elements(x)
    b.tie(source[shuffle.source_of_target()], b.elements(z))
    by_group = source.reshape(shuffle.groups, shuffle.per_group)
    b.tie(by_group[:-1].ravel(), by_group[1:].ravel())


def _connected_units(b: _Builder) -> np.ndarray:
    """Component label of every element."""
    if b.edges_a:
        a = np.concatenate(b.edges_a)
        c = np.concatenate(b.edges_b)
    else:
        a = c = np.zeros(0, dtype=np.int64)
    adjacency = coo_matrix((np.ones(len(a), dtype=np.int8), (a, c)), shape=(b.n, b.n))
    _, labels = connected_components(adjacency, directed=False)
    return labels


def _group_units(b: _Builder, labels: np.ndarray) -> list[ChannelGroup]:
    tensor_of = np.empty(b.n, dtype=object)
    channel_of = np.empty(b.n, dtype=np.int64)
    for t, off in b.offset.items():
        tensor_of[off : off + b.count[t]] = t
        channel_of[off : off + b.count[t]] = np.arange(b.count[t])
    # Units in element order, each as tensor -> channel indices.
    order = np.argsort(labels, kind="stable")
    boundaries = np.flatnonzero(np.diff(labels[order])) + 1
    unit_members = np.split(order, boundaries)
    unit_members.sort(key=lambda m: int(m[0]))
    by_signature: dict[tuple[str, ...], list[np.ndarray]] = defaultdict(list)
    for members in unit_members:
        signature = tuple(sorted(set(tensor_of[members])))
        by_signature[signature].append(members)
    producers_of = defaultdict(set)
    consumers_of = defaultdict(set)
    for binding in b.bindings:
        if binding.role == PRODUCER:
            producers_of[binding.tensor].add(binding.node)
        elif binding.role == CONSUMER:
            consumers_of[binding.tensor].add(binding.node)
    node_order = {n.name: i for i, n in enumerate(b.graph.nodes)}
    groups = []
    for signature, members_list in by_signature.items():
        units = []
        for members in members_list:
            unit: dict[str, list[int]] = defaultdict(list)
            for e in members:
                unit[tensor_of[e]].append(int(channel_of[e]))
            units.append({t: np.array(sorted(c), dtype=np.int64) for t, c in unit.items()})
        all_members = np.concatenate(members_list)
        frozen = b.frozen[all_members]
        reason = b.reasons[int(frozen[frozen >= 0][0])] if (frozen >= 0).any() else None
        producers = sorted({p for t in signature for p in producers_of[t]}, key=node_order.get)
        consumers = sorted({c for t in signature for c in consumers_of[t]}, key=node_order.get)
        if reason is None and not consumers:
            reason = "no weighted operator reads these channels"
        if reason is None and len(units) < 2:
            reason = "a single unit (its channels can only go all together): nothing to prune"
        groups.append(
            ChannelGroup(
                id="",
                units=tuple(units),
                tensors=tuple(sorted(signature, key=lambda t: b.offset[t])),
                producers=tuple(producers),
                consumers=tuple(consumers),
                frozen_reason=reason,
            )
        )
    groups.sort(key=lambda g: b.offset[g.tensors[0]])
    return _name_groups(b.graph, groups)


def _name_groups(graph: Graph, groups: list[ChannelGroup]) -> list[ChannelGroup]:
    """Stable, readable ids: the first producer's weight name without '.weight'."""
    nodes = {n.name: n for n in graph.nodes}
    named, seen = [], defaultdict(int)
    for g in groups:
        if g.producers:
            weight = nodes[g.producers[0]].input[1]
            base = weight.removesuffix(".weight") if weight.endswith(".weight") else g.producers[0]
        else:
            base = g.tensors[0]
        seen[base] += 1
        gid = base if seen[base] == 1 else f"{base}#{seen[base]}"
        named.append(ChannelGroup(gid, g.units, g.tensors, g.producers, g.consumers, g.frozen_reason))
    return named
