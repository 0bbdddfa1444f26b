"""Remove pruned channels from the ONNX graph.

Every initializer axis that the analysis bound to an activation's channels is
sliced to that activation's kept channels: producers lose output rows,
consumers lose input columns (a grouped convolution's in-group columns),
BatchNorm/depthwise/per-channel constants lose entries. Attributes and shape
constants that spell out a channel count are rewritten: depthwise `group`
(a grouped convolution keeps its `group`: every conv group loses the same
channels), channel `pads`, stored Reshape targets (flatten, channel shuffle),
channel Slice bounds and Split sizes.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

from adans_toolchain.analysis.channels import ChannelAnalysis, ChannelSlice, channel_slice, channel_split_sizes, is_stored
from adans_toolchain.analysis.graph import Graph, attributes
from adans_toolchain.errors import LoweringError
from adans_toolchain.plan import Plan
from adans_toolchain.transforms.channel_pruning import kept_channels
from adans_toolchain.lowering.base import TYPE_CHECKS, Condition, LoweringPass, PassResult


class PruneChannelsPass(LoweringPass):
    name = "prune-channels"

    def __init__(self, analysis: ChannelAnalysis, plan: Plan) -> None:
        self.analysis = analysis
        self.plan = plan

    def requires(self) -> list[Condition]:
        return [Condition("the plan prunes only prunable groups of this analysis, at their size", self._plan_fits)]

    def ensures(self, source: onnx.ModelProto) -> list[Condition]:
        return [Condition("every initializer axis bound to a pruned tensor has the kept channel count", self._sliced), TYPE_CHECKS]

    def _plan_fits(self, model: onnx.ModelProto) -> str | None:
        groups = {g.id: g for g in self.analysis.groups}
        for p in self.plan.pruning:
            group = groups.get(p.group)
            if p.removed and (group is None or group.size != p.size or not group.prunable):
                return f"group '{p.group}' is missing, frozen or not of size {p.size}"
        return None

    def _sliced(self, model: onnx.ModelProto) -> str | None:
        kept = kept_channels(self.analysis, self.plan)
        dims = {i.name: list(i.dims) for i in model.graph.initializer}
        for b in self.analysis.bindings:
            if b.tensor not in kept:
                continue
            if b.param not in dims:
                return f"initializer '{b.param}' is gone"
            if dims[b.param][b.axis] != len(kept[b.tensor]):
                return f"'{b.param}' axis {b.axis} has {dims[b.param][b.axis]} channels, the plan keeps {len(kept[b.tensor])} of '{b.tensor}'"
        return None

    def check(self, model: onnx.ModelProto) -> str | None:
        # Values may differ (re-estimated BatchNorm statistics); structure may not.
        if structure_fingerprint(model) != structure_fingerprint(self.analysis.graph.model):
            return "the model's graph is not the one the channel analysis was made on"
        return None

    def apply(self, model: onnx.ModelProto) -> PassResult:
        kept = kept_channels(self.analysis, self.plan)
        if not kept:
            return PassResult(model, False)
        graph = self.analysis.graph
        out = onnx.ModelProto()
        out.CopyFrom(model)
        values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        new_values = self._slice_initializers(values, kept)
        replacements: dict[str, np.ndarray] = {}
        for node in out.graph.node:
            self._rewrite_node(graph, node, kept, replacements)
        for init in out.graph.initializer:
            if init.name in new_values:
                init.CopyFrom(numpy_helper.from_array(new_values[init.name], init.name))
        for name, value in replacements.items():
            out.graph.initializer.append(numpy_helper.from_array(value, name))
        del out.graph.value_info[:]  # shapes changed; re-inferred downstream
        return PassResult(out, True)

    def _slice_initializers(self, values: dict[str, np.ndarray], kept: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        axis_source: dict[tuple[str, int], str] = {}
        for b in self.analysis.bindings:
            if b.tensor not in kept:
                continue
            other = axis_source.setdefault((b.param, b.axis), b.tensor)
            if other != b.tensor and not np.array_equal(kept[other], kept[b.tensor]):
                raise LoweringError(
                    f"initializer '{b.param}' is shared by '{other}' and '{b.tensor}', which keep different channels"
                )
        result = {}
        by_param: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for (param, axis), tensor in axis_source.items():
            by_param[param].append((axis, tensor))
        for param, axes in by_param.items():
            value = values[param]
            for axis, tensor in axes:
                value = np.take(value, kept[tensor], axis=axis)
            result[param] = np.ascontiguousarray(value)
        return result

    def _rewrite_node(self, graph: Graph, node: onnx.NodeProto, kept: dict[str, np.ndarray], replacements: dict) -> None:
        if node.op_type == "Conv":
            x = node.input[0]
            group = attributes(node).get("group", 1)
            if group > 1 and group == graph.shapes[x][1] and x in kept:
                # Depthwise stays depthwise; a grouped convolution keeps its groups (each lost the same channels).
                _set_int_attribute(node, "group", len(kept[x]))
        elif node.op_type == "Pad":
            self._rewrite_pad(graph, node, kept, replacements)
        elif node.op_type == "Reshape":
            self._rewrite_reshape(graph, node, kept, replacements)
        elif node.op_type == "Slice":
            self._rewrite_slice(graph, node, kept, replacements)
        elif node.op_type == "Split":
            self._rewrite_split(graph, node, kept, replacements)

    def _rewrite_pad(self, graph: Graph, node: onnx.NodeProto, kept, replacements) -> None:
        x, y = node.input[0], node.output[0]
        if y not in kept:
            return
        pads = graph.constant(node.input[1])
        if pads is None:
            raise LoweringError(f"Pad node '{node.name}': pads are not a constant")
        pads = np.array(pads, dtype=np.int64)
        rank = len(graph.shapes[x])
        axes = list(range(rank))
        if len(node.input) > 3 and node.input[3]:
            axes = [int(a) + rank if a < 0 else int(a) for a in graph.constant(node.input[3])]
        if 1 not in axes:
            return
        i, n = axes.index(1), len(axes)
        lead, c_in = int(pads[i]), graph.shapes[x][1]
        y_kept = kept[y]
        pads[i] = int(np.sum(y_kept < lead))
        pads[n + i] = int(np.sum(y_kept >= lead + c_in))
        name = f"{node.name or y}__pads_pruned"
        replacements[name] = pads
        node.input[1] = name

    def _rewrite_reshape(self, graph: Graph, node: onnx.NodeProto, kept, replacements) -> None:
        x, y = node.input[0], node.output[0]
        stored = is_stored(graph, node.input[1])
        target = graph.constant(node.input[1])
        if target is None:
            return
        target = np.array(target, dtype=np.int64)
        shuffle_in = {s.split: s for s in self.analysis.shuffles}
        shuffle_out = {s.target: s for s in self.analysis.shuffles}
        if y in shuffle_in or y in shuffle_out:
            if not stored:
                return  # computed from Shape at run time (ShuffleNet's C // groups): follows by itself
            if y in shuffle_in and x in kept:  # [N, C, ...] -> [N, A, B, ...]: B shrinks
                target[1], target[2] = shuffle_in[y].groups, len(kept[x]) // shuffle_in[y].groups
            elif y in shuffle_out and y in kept:  # [N, B, A, ...] -> [N, C, ...]
                target[1] = len(kept[y])
            else:
                return
        elif x in kept and len(target) >= 2 and target[1] not in (-1, 0):
            in_shape, out_shape = graph.shapes[x], graph.shapes[y]
            spatial = int(np.prod(in_shape[2:]))
            new_c = len(kept[x])
            target[1] = new_c if out_shape[1] == in_shape[1] else new_c * spatial
            if not stored:
                if attributes(node).get("allowzero", 0):
                    raise LoweringError(
                        f"Reshape node '{node.name}': a computed target with allowzero=1 spells the channel count"
                    )
                target[0] = 0  # computed (view(n, c * h * w)): the batch is copied from the input, the rest is stored
        else:
            return  # untouched, or the channel-bearing dimension is inferred
        name = f"{node.name or y}__shape_pruned"
        replacements[name] = target
        node.input[1] = name

    def _rewrite_slice(self, graph: Graph, node: onnx.NodeProto, kept, replacements) -> None:
        """Channel bounds move to the number of kept channels below them (stored, whatever computed them)."""
        x = node.input[0]
        taken = channel_slice(graph, node) if x in kept else None
        if not isinstance(taken, ChannelSlice):
            return
        for position, bound in ((1, taken.start), (2, taken.stop)):
            values = np.array(graph.constant(node.input[position])).astype(np.int64).ravel()
            values[taken.index] = int(np.sum(kept[x] < bound))
            name = f"{node.name or node.output[0]}__{'starts' if position == 1 else 'ends'}_pruned"
            replacements[name] = values
            node.input[position] = name

    def _rewrite_split(self, graph: Graph, node: onnx.NodeProto, kept, replacements) -> None:
        x = node.input[0]
        sizes = channel_split_sizes(graph, node) if x in kept else None
        if sizes is None:
            return
        offsets = np.cumsum([0, *sizes])
        new_sizes = np.array([np.sum((kept[x] >= a) & (kept[x] < b)) for a, b in zip(offsets[:-1], offsets[1:])], np.int64)
        if any(a.name == "split" for a in node.attribute):  # opset < 13
            for a in node.attribute:
                if a.name == "split":
                    a.ints[:] = [int(v) for v in new_sizes]
            return
        for a in list(node.attribute):
            if a.name == "num_outputs":  # opset 18: sizes and num_outputs are exclusive
                node.attribute.remove(a)
        name = f"{node.name or node.output[0]}__split_pruned"
        replacements[name] = new_sizes
        if len(node.input) > 1:
            node.input[1] = name
        else:
            node.input.append(name)


def structure_fingerprint(model: onnx.ModelProto) -> str:
    """Hash of the nodes and the initializers' names and shapes (not their values)."""
    import hashlib

    h = hashlib.sha256()
    for node in model.graph.node:
        h.update(node.SerializeToString())
    for init in model.graph.initializer:
        h.update(init.name.encode())
        h.update(str(list(init.dims)).encode())
    return h.hexdigest()[:16]


def set_initializers(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` with the named initializers replaced (same shapes)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    remaining = dict(values)
    for init in out.graph.initializer:
        if init.name in remaining:
            value = np.asarray(remaining.pop(init.name), dtype=numpy_helper.to_array(init).dtype)
            if tuple(value.shape) != tuple(init.dims):
                raise LoweringError(f"new value of '{init.name}' has shape {value.shape}, expected {tuple(init.dims)}")
            init.CopyFrom(numpy_helper.from_array(value, init.name))
    if remaining:
        raise LoweringError(f"the model has no initializers named {sorted(remaining)[:3]}")
    return out


def _set_int_attribute(node: onnx.NodeProto, name: str, value: int) -> None:
    for a in node.attribute:
        if a.name == name:
            a.i = value
            return
    node.attribute.append(onnx.helper.make_attribute(name, value))
