"""The operators a graph executes, with shapes, for the cost models.

The same function prices a Plan (channel counts overridden from the
analysis) and an emitted ONNX file (its own shapes), so predicted and lowered
costs are computed by one piece of code.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Mapping

from cost_models import with_weight_bits
from cost_models.workload import OpWorkload, Workload

from adans_toolchain.plan.plan import LayerDecomposition, Plan
from adans_toolchain.analysis.factors import factor_name, origin_layer
from adans_toolchain.analysis.channels import ChannelAnalysis
from adans_toolchain.analysis.graph import PROBE_BATCH, Graph, attributes

# Operators that never cost anything at run time (metadata or folded away).
_FREE_OPS = frozenset({"Constant", "Shape", "Size", "Identity", "Dropout", "ConstantOfShape", "Range"})


def channel_counts(analysis: ChannelAnalysis, plan: Plan | None) -> dict[str, int]:
    """Channel count of every activation tensor once the plan's units are removed."""
    counts = dict(analysis.channel_tensors)
    if plan is None:
        return counts
    groups = {g.id: g for g in analysis.groups}
    removed: dict[str, int] = defaultdict(int)
    for p in plan.pruning:
        for u in p.removed:
            for tensor, channels in groups[p.group].units[u].items():
                removed[tensor] += len(channels)
    for tensor, n in removed.items():
        counts[tensor] -= n
    return counts


def _with_channels(shape: tuple[int, ...], channels: int | None, batch: int, axis: int = 1) -> tuple[int, ...]:
    """`shape` at batch size `batch`, with `channels` on its channel axis (1, or where a Transpose moved it)."""
    if not shape:
        return shape
    # Axis 0 holds the probe's batch, or a multiple of it where a Reshape merged the batch with other axes
    # (onnxsim's Reshape -> Gemm -> Reshape for a Linear on a channels-last tensor: [N*H*W, C]).
    first = shape[0] // PROBE_BATCH * batch if len(shape) > 1 and shape[0] % PROBE_BATCH == 0 else batch
    shape = (first, *shape[1:])
    if channels is not None and len(shape) > axis:
        shape = (*shape[:axis], channels, *shape[axis + 1 :])
    return shape


def graph_workload(
    graph: Graph,
    counts: Mapping[str, int] | None = None,
    *,
    batch: int = 1,
    decompositions: Mapping[str, LayerDecomposition] | None = None,
    sparsity: Mapping[str, float] | None = None,
    channel_axes: Mapping[str, int] | None = None,
) -> Workload:
    """One OpWorkload per costly node.

    `counts` overrides activation channel counts (structured pruning), on
    axis 1 or the tensor's axis in `channel_axes` (channels-last tensors);
    `decompositions` (by weight name) replaces a layer by its factors;
    `sparsity` (by weight name) is the fraction of zero weights.
    """
    counts = counts or {}
    decompositions = decompositions or {}
    sparsity = sparsity or {}
    channel_axes = channel_axes or {}

    def shape_of(name: str) -> tuple[int, ...]:
        return _with_channels(graph.shapes.get(name, ()), counts.get(name), batch, channel_axes.get(name, 1))

    ops = []
    for node in graph.nodes:
        if node.op_type in _FREE_OPS or not node.input or not node.output:
            continue
        data_in = node.input[0]
        if data_in not in graph.activations:
            continue  # constant computation, folded before run time
        out = node.output[0]
        in_shape, out_shape = shape_of(data_in), shape_of(out)
        attrs = attributes(node)
        weight_shape: tuple[int, ...] = ()
        kernel = strides = dilations = ()
        groups = 1
        has_bias = len(node.input) > 2 and bool(node.input[2])
        if node.op_type in ("Conv", "ConvTranspose"):
            w = graph.shapes[node.input[1]]
            kernel = tuple(w[2:])
            strides = tuple(attrs.get("strides", [1] * len(kernel)))
            dilations = tuple(attrs.get("dilations", [1] * len(kernel)))
            groups = int(attrs.get("group", 1))
            c_in_orig = graph.shapes[data_in][1]
            c_in, c_out = in_shape[1], out_shape[1]
            if groups > 1 and groups == c_in_orig:
                groups = c_in  # depthwise stays depthwise
            if node.op_type == "Conv":
                weight_shape = (c_out, c_in // groups, *kernel)
            else:
                weight_shape = (c_in, c_out // groups, *kernel)
        elif node.op_type == "Gemm":
            k, f = in_shape[-1], out_shape[-1]
            weight_shape = (f, k) if attrs.get("transB", 0) else (k, f)
        elif node.op_type == "MatMul" and graph.is_constant(node.input[1]):
            # A stored weight, or Transpose of one (a Linear on a channels-last tensor).
            weight_shape = (in_shape[-1], out_shape[-1])
        elif node.op_type == "BatchNormalization":
            weight_shape, has_bias = (out_shape[1],), True
        elif node.op_type == "LayerNormalization" and len(node.input) > 1 and node.input[1] in graph.shapes:
            # Scale (and bias) over the normalised axes, which hold no pruned channels (the analysis freezes those).
            weight_shape = tuple(graph.shapes[node.input[1]])
        # Other *activation* inputs only (Add/Mul/Concat operands): constant
        # inputs are weights, whose pruned shape is `weight_shape`.
        extra = tuple(
            shape_of(i) for i in node.input[1:] if i in graph.activations
        )
        op = OpWorkload(
            op_type=node.op_type,
            name=node.name or out,
            input_shape=in_shape,
            output_shape=out_shape,
            weight_shape=weight_shape,
            kernel=kernel,
            strides=strides,
            dilations=dilations,
            groups=groups,
            has_bias=has_bias,
            extra_input_shapes=extra,
            input_names=tuple(node.input),
            output_names=tuple(node.output),
            attributes=tuple(sorted((k, _hashable(v)) for k, v in attrs.items() if k not in ("kernel_shape", "strides", "dilations", "group"))),
            weight_sparsity=sparsity.get(node.input[1], 0.0) if len(node.input) > 1 else 0.0,
        )
        d = decompositions.get(node.input[1]) if len(node.input) > 1 else None
        ops.extend(_factorised(op, d) if d is not None and not d.is_identity else [op])
    return tuple(ops)


def _factorised(op: OpWorkload, d: LayerDecomposition) -> list[OpWorkload]:
    """The operators a decomposed layer lowers to (see lowering/decompose.py)."""
    n, c_in = op.input_shape[0], op.input_shape[1]
    c_out = op.output_shape[1]
    out_name = op.output_names[0]
    if op.op_type == "Conv" and d.method == "tucker":
        r1, r2 = d.ranks
        in_factor, out_factor = r1 < d.full[0], r2 < d.full[1]
        mid_in = r1 if in_factor else c_in
        mid_out = r2 if out_factor else c_out
        spatial_in, spatial_out = op.input_shape[2:], op.output_shape[2:]
        ops = []
        x = op.input_names[0]
        if in_factor:
            ops.append(replace(op, name=factor_name(op.name, "tucker_in"), output_shape=(n, r1, *spatial_in), weight_shape=(r1, c_in, 1, 1),
                               kernel=(1, 1), strides=(1, 1), dilations=(1, 1), has_bias=False,
                               input_names=(x,), output_names=(factor_name(out_name, "tucker_in"),), attributes=(("pads", (0, 0, 0, 0)),)))
            x = factor_name(out_name, "tucker_in")
        core_out = factor_name(out_name, "tucker_core") if out_factor else out_name
        ops.append(replace(op, name=factor_name(op.name, "tucker_core"), input_shape=(n, mid_in, *spatial_in), output_shape=(n, mid_out, *spatial_out),
                           weight_shape=(mid_out, mid_in, *op.kernel), has_bias=op.has_bias and not out_factor,
                           input_names=(x,), output_names=(core_out,)))
        if out_factor:
            ops.append(replace(op, name=factor_name(op.name, "tucker_out"), input_shape=(n, r2, *spatial_out), weight_shape=(c_out, r2, 1, 1),
                               kernel=(1, 1), strides=(1, 1), dilations=(1, 1), input_names=(core_out,),
                               attributes=(("pads", (0, 0, 0, 0)),)))
        return ops
    r = d.ranks[0]
    mid = factor_name(out_name, "svd")
    if op.op_type == "Conv":
        first = replace(op, name=factor_name(op.name, "svd_in"), output_shape=(n, r, *op.output_shape[2:]), weight_shape=(r, c_in, 1, 1),
                        has_bias=False, output_names=(mid,))
        second = replace(op, name=factor_name(op.name, "svd_out"), input_shape=(n, r, *op.output_shape[2:]), weight_shape=(c_out, r, 1, 1),
                         strides=(1, 1), input_names=(mid,), attributes=(("pads", (0, 0, 0, 0)),))
        return [first, second]
    trans = dict(op.attributes).get("transB", 0) if op.op_type == "Gemm" else 0
    w1, w2 = ((r, c_in), (c_out, r)) if trans else ((c_in, r), (r, c_out))
    first = replace(op, name=factor_name(op.name, "svd_in"), output_shape=(n, r), weight_shape=w1, has_bias=False, output_names=(mid,))
    second = replace(op, name=factor_name(op.name, "svd_out"), input_shape=(n, r), weight_shape=w2, input_names=(mid,))
    return [first, second]


def _hashable(value):
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, (int, float, str)):
        return value
    return str(type(value).__name__)


def plan_workload(analysis: ChannelAnalysis, plan: Plan | None, *, batch: int = 1) -> Workload:
    """What the model executes once `plan` is lowered; its int8 layers (and their factors) at 8-bit weights."""
    if plan is None:
        return graph_workload(analysis.graph, batch=batch)
    decompositions = {d.layer: d for d in plan.active_decompositions}
    sparsity = {s.layer: s.removed / s.size for s in plan.active_sparsity}
    workload = graph_workload(
        analysis.graph, channel_counts(analysis, plan), batch=batch, decompositions=decompositions, sparsity=sparsity,
        channel_axes=analysis.channel_axes,
    )
    if not plan.int8_layers:
        return workload
    return with_weight_bits(workload, int8_operators(analysis, plan, workload), 8)


def int8_operators(analysis: ChannelAnalysis, plan: Plan, workload: Workload) -> list[str]:
    """Names of the operators of `workload` (of `plan`) that run in int8: the plan's int8 layers and their factors."""
    int8_weights = set(plan.int8_layers)
    nodes = {n.name for n in analysis.graph.nodes if len(n.input) > 1 and n.input[1] in int8_weights}
    found = {n.input[1] for n in analysis.graph.nodes if n.name in nodes}
    if found != int8_weights:
        raise ValueError(f"the plan's int8 layer(s) {sorted(int8_weights - found)[:3]} are no weighted layer of the model")
    return [op.name for op in workload if origin_layer(op.name) in nodes and op.weight_shape]


def plan_workloads(analysis: ChannelAnalysis, plans, *, batch: int = 1) -> list[Workload]:
    return [plan_workload(analysis, p, batch=batch) for p in plans]
