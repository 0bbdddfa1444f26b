"""Per-layer and per-channel-group tables of what a plan does, from the analysis (nothing is run).

Rows are plain dicts: they go into report.json as they are.
"""

from __future__ import annotations

from math import prod

from cost_models import op_macs

from adans_toolchain.analysis.channels import ChannelAnalysis
from adans_toolchain.analysis.factors import origin_layer
from adans_toolchain.plan.plan import Plan
from adans_toolchain.plan.workload import plan_workload

_WEIGHTED = ("Conv", "Gemm", "MatMul", "ConvTranspose")


def plan_layer_table(analysis: ChannelAnalysis, plan: Plan) -> list[dict]:
    """Per weighted layer: what the plan does to it, channels, MACs and parameters before and after."""
    before = [op for op in plan_workload(analysis, None) if op.op_type in _WEIGHTED]
    after: dict[str, list] = {}
    for op in plan_workload(analysis, plan):
        if op.op_type in _WEIGHTED:
            after.setdefault(origin_layer(op.name), []).append(op)
    nodes = {n.name: n for n in analysis.graph.nodes}
    rows = []
    for b in before:
        node = nodes.get(b.name)
        weight = node.input[1] if node is not None and len(node.input) > 1 else b.name
        ops = after.get(b.name, [b])
        d, sp = plan.decomposition_for(weight), plan.sparsity_for(weight)
        edits = []
        if d is not None and not d.is_identity:
            edits.append(f"{d.method} rank {d.ranks[0]}" if d.method == "svd" else f"tucker ranks ({d.ranks[0]}, {d.ranks[1]})")
        if sp is not None and sp.removed:
            edits.append(f"{sp.removed / sp.size:.0%} zero weights")
        if ops[0].input_shape[1] != b.input_shape[1] or ops[-1].output_shape[1] != b.output_shape[1]:
            edits.insert(0, "channels pruned")
        rows.append(
            {
                "layer": weight.removesuffix(".weight"),
                "node": b.name,
                "op": b.op_type + (" (depthwise)" if b.groups > 1 and b.groups == b.input_shape[1] else ""),
                "edit": ", ".join(edits) or "—",
                # The arithmetic the layer (every factor of it) runs in: "int8" or "float" (plan.LayerPrecision).
                "precision": plan.precision_for(weight),
                "in_channels": [b.input_shape[1], ops[0].input_shape[1]],
                "out_channels": [b.output_shape[1], ops[-1].output_shape[1]],
                "macs": [op_macs(b), sum(op_macs(o) for o in ops)],
                "params": [_params(b), sum(_params(o) for o in ops)],
                **({"decomposition": {"method": d.method, "ranks": list(d.ranks), "full": list(d.full)}} if d and not d.is_identity else {}),
                **({"sparsity": sp.removed / sp.size} if sp and sp.removed else {}),
            }
        )
    return rows


def plan_group_table(analysis: ChannelAnalysis, plan: Plan) -> list[dict]:
    """Per channel group: its size, the channels the plan keeps, and the layers whose outputs it couples.

    A group is named after its first producer, but one group can couple
    channels across several layers (a residual addition, an option-A
    shortcut), so its size need not be that layer's output channels;
    `members` lists every producing layer.
    """
    nodes = {n.name: n for n in analysis.graph.nodes}
    kept = {p.group: len(p.keep) for p in plan.pruning}
    rows = []
    for g in analysis.groups:
        rows.append(
            {
                "id": g.id,
                "channels": g.size,
                "kept": kept.get(g.id, g.size),
                "tensors": len(g.tensors),
                "producers": len(g.producers),
                "members": [_layer_name(nodes, p) for p in g.producers],
                "prunable": g.prunable,
                **({"reason": g.frozen_reason} if not g.prunable else {}),
            }
        )
    return rows


def _layer_name(nodes: dict, producer: str) -> str:
    """A producer node by its weight's name (as groups and layers are named), else the node's own."""
    node = nodes.get(producer)
    weight = node.input[1] if node is not None and len(node.input) > 1 else ""
    return weight.removesuffix(".weight") if weight.endswith(".weight") else producer


def _params(op) -> int:
    return prod(op.weight_shape) + (op.output_shape[1] if op.has_bias else 0)
