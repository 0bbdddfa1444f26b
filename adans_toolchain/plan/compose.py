"""Two channel-pruning plans applied one after the other, as one plan of the original model (`--rounds`).

Round k searches the model round k-1 emitted: its plan indexes the units of
that smaller model's channel groups. Lowering keeps every surviving channel
in its original order and keeps the names of tensors and nodes, so a
channel of the smaller model is the i-th kept channel of the same tensor of
the original. Composition is done channel by channel on each tensor and then
read back as units of the original's groups, so it does not depend on group
ids or unit numbering staying the same between the two analyses; a unit
that would be kept in one tensor and removed in another is an error.
"""

from __future__ import annotations

import numpy as np

from adans_toolchain.analysis.channels import ChannelAnalysis
from adans_toolchain.plan.plan import GroupPruning, Plan


def kept_by_tensor(analysis: ChannelAnalysis, plan: Plan) -> dict[str, np.ndarray]:
    """For every channel tensor of `analysis`, the indices of its channels `plan` keeps (all of them if untouched)."""
    groups = {g.id: g for g in analysis.groups}
    removed: dict[str, set[int]] = {}
    for p in plan.pruning:
        if not p.removed:
            continue
        group = groups.get(p.group)
        if group is None or group.size != p.size:
            raise ValueError(f"the plan prunes group '{p.group}' of {p.size} units, which the model does not have")
        for tensor in group.tensors:
            removed.setdefault(tensor, set()).update(int(c) for c in group.channels_in(tensor, p.removed))
    return {
        tensor: np.array([c for c in range(count) if c not in removed.get(tensor, ())], dtype=np.int64)
        for tensor, count in analysis.channel_tensors.items()
    }


def compose_pruning(original: ChannelAnalysis, first: Plan, pruned: ChannelAnalysis, second: Plan, *, fingerprint: str) -> Plan:
    """`first` (a plan of the model `original` analyses) then `second` (a plan of the model `first` lowered to,
    analysed as `pruned`), as one plan of the original model (whose graph `fingerprint` names). Only channel
    pruning composes."""
    for plan in (first, second):
        if plan.active_decompositions or plan.active_sparsity:
            raise ValueError("only channel-pruning plans compose (--rounds searches --methods ps)")
    outer = kept_by_tensor(original, first)
    inner = kept_by_tensor(pruned, second)
    survivors: dict[str, set[int]] = {}
    for tensor, kept in outer.items():
        if tensor not in inner:
            raise ValueError(f"tensor '{tensor}' of the original model is not in the pruned model")
        if len(kept) != pruned.channel_tensors[tensor]:
            raise ValueError(
                f"tensor '{tensor}': the first plan keeps {len(kept)} channels but the pruned model has "
                f"{pruned.channel_tensors[tensor]}; the second plan is not of the model the first one emitted"
            )
        survivors[tensor] = set(kept[inner[tensor]].tolist())
    pruning = []
    for group in original.prunable_groups:
        keep = []
        for u, unit in enumerate(group.units):
            states = {int(c) in survivors[tensor] for tensor, channels in unit.items() for c in np.atleast_1d(channels)}
            if len(states) > 1:
                raise ValueError(f"group '{group.id}' unit {u} is kept in some tensors and removed in others")
            if states == {True}:
                keep.append(u)
        pruning.append(GroupPruning(group.id, group.size, tuple(keep)))
    for group in original.frozen_groups:
        for tensor in group.tensors:
            if len(survivors[tensor]) != original.channel_tensors[tensor]:
                raise ValueError(f"frozen group '{group.id}' lost channels of '{tensor}'")
    return Plan(tuple(pruning), fingerprint)
