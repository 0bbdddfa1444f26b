"""Structured pruning by parameter substitution.

A pruned unit is removed from the function by zeroing the weights of every
operator that *reads* it (the consumer's input columns). Whatever values the
unit still carries upstream can then no longer reach the output, so the
substituted model computes exactly what the lowered model (with those
channels physically removed) computes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Collection

import numpy as np

from adans_toolchain.analysis.channels import CONSUMER, PRODUCER, ChannelAnalysis, ChannelGroup
from adans_toolchain.plan import Plan


@dataclass(frozen=True)
class ZeroSlice:
    param: str
    axis: int
    indices: np.ndarray


class ChannelPruningTransform:
    def __init__(self, analysis: ChannelAnalysis) -> None:
        self.analysis = analysis
        self.groups = {g.id: g for g in analysis.groups}
        self._consumers_by_tensor: dict[str, list] = defaultdict(list)
        for b in analysis.bindings:
            if b.role == CONSUMER:
                self._consumers_by_tensor[b.tensor].append(b)

    def new_values(self, plan: Plan) -> dict[str, np.ndarray]:
        """Channel pruning replaces no whole tensors (see PlanTransform for the other methods)."""
        if plan.active_decompositions or plan.active_sparsity:
            raise ValueError("ChannelPruningTransform only applies channel pruning; use PlanTransform")
        return {}

    def zero_slices(self, plan: Plan) -> list[ZeroSlice]:
        """Parameter slices to zero so that the plan's pruned units have no effect."""
        per_param: dict[tuple[str, int], list[np.ndarray]] = defaultdict(list)
        for pruning in plan.pruning:
            removed = pruning.removed
            if not removed:
                continue
            group = self.groups[pruning.group]
            if not group.prunable:
                raise ValueError(f"group {group.id} is frozen: {group.frozen_reason}")
            for tensor in group.tensors:
                bindings = self._consumers_by_tensor.get(tensor)
                if not bindings:
                    continue
                channels = group.channels_in(tensor, removed)
                for b in bindings:
                    per_param[(b.param, b.axis)].append(channels)
        return [ZeroSlice(p, a, np.unique(np.concatenate(idx))) for (p, a), idx in per_param.items()]


def unit_l1_norms(analysis: ChannelAnalysis, group: ChannelGroup, params: dict[str, np.ndarray]) -> np.ndarray:
    """Mean |w| of the producer rows making each unit (Li et al.'s filter norm)."""
    scores = np.zeros(group.size)
    producers = [b for b in analysis.bindings if b.role == PRODUCER and b.tensor in group.tensors]
    for b in producers:
        w = np.moveaxis(np.abs(params[b.param]), b.axis, 0).reshape(params[b.param].shape[b.axis], -1)
        row_norm = w.mean(axis=1)
        for u, unit in enumerate(group.units):
            if b.tensor in unit:
                scores[u] += row_norm[unit[b.tensor]].sum()
    return scores


def kept_channels(analysis: ChannelAnalysis, plan: Plan, only: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """For every activation tensor the plan touches, the channel indices that stay (of groups in `only`, if given)."""
    groups = {g.id: g for g in analysis.groups}
    removed: dict[str, list[np.ndarray]] = defaultdict(list)
    for p in plan.pruning:
        if not p.removed or (only is not None and p.group not in only):
            continue
        group = groups.get(p.group)
        if group is None:
            raise ValueError(f"the plan names group '{p.group}', which this model does not have")
        if group.size != p.size:
            raise ValueError(f"group '{p.group}' has {group.size} units, the plan says {p.size}")
        if not group.prunable:
            raise ValueError(f"group '{p.group}' is frozen ({group.frozen_reason}) but the plan prunes it")
        for tensor in group.tensors:
            removed[tensor].append(group.channels_in(tensor, p.removed))
    kept = {}
    for tensor, parts in removed.items():
        drop = np.unique(np.concatenate(parts))
        kept[tensor] = np.setdiff1d(np.arange(analysis.channel_tensors[tensor]), drop)
    return kept
