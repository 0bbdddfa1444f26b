"""Candidates evaluated physically smaller: pruned channels sliced out of the live PyTorch module.

Substitution zeroes the weights that read a pruned channel: exact, but every
candidate costs what the original model costs. Here, for the duration of one
candidate, the module's parameters and buffers are swapped for tensors that
hold only the kept channels (what lowering does to the ONNX graph), so a
candidate costs about what it keeps. The original tensors are never written:
they are put back by reference when the candidate is done.

Only a group whose channel count lives in parameters alone can be sliced so.
PyTorch code that spells a count (the CIFAR ResNet shortcut's F.pad by
planes // 4, a view to a fixed shape, torch.split with fixed sizes) would
break or compute something else. A group is therefore sliced only if

1. every operator on its tensors takes its channel count from its input
   (checked on the ONNX graph), every parameter bound to it is a tensor of the
   module, and
2. on a few images, the module with the group sliced gives the logits that
   substitution gives (checked once, when the slicer is built).

Every other group is zeroed, as substitution does, inside the sliced module.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn as nn

from adans_toolchain.analysis.channels import ELEMENTWISE, SPATIAL_CHANNELWISE, ChannelAnalysis, ChannelGroup
from adans_toolchain.analysis.graph import attributes
from adans_toolchain.plan import GroupPruning, Plan
from adans_toolchain.transforms.channel_pruning import kept_channels

# Operators whose output follows their input's channel count with nothing
# spelled in the graph (Reshape/Pad/Split/Concat with constant sizes are not here).
_COUNT_FOLLOWING = ELEMENTWISE | SPATIAL_CHANNELWISE | {
    "Conv", "BatchNormalization", "Gemm", "MatMul", "Flatten", "GlobalAveragePool", "ReduceMean", "Softmax",
}
# Logits of the sliced module must match substitution's to this fraction of their scale (plus an absolute floor).
_RELATIVE_TOLERANCE, _ABSOLUTE_TOLERANCE = 1e-4, 1e-6
_CHECK_IMAGES = 8


class ChannelSlicer:
    """Swaps a module's tensors for their kept-channel slices, one candidate at a time.

    Attributes:
        sliced_groups  ids of the groups sliced physically.
        zeroed_groups  id -> why the group stays zeroed (substitution) instead.
    """

    def __init__(self, module: nn.Module, analysis: ChannelAnalysis) -> None:
        self.module = module
        self.analysis = analysis
        self._owners = _tensor_owners(module)
        self._bindings_by_tensor = defaultdict(list)
        for b in analysis.bindings:
            self._bindings_by_tensor[b.tensor].append(b)
        # Depthwise convolutions by input tensor: a candidate that slices the input sets their `groups`.
        self._depthwise = [(node.input[0], conv) for node in analysis.graph.nodes
                           if node.op_type == "Conv" and attributes(node).get("group", 1) > 1
                           and (conv := self._depthwise_module(node)) is not None]
        self.zeroed_groups: dict[str, str] = {}
        candidates = []
        for group in analysis.prunable_groups:
            reason = self._structural_reason(group)
            if reason:
                self.zeroed_groups[group.id] = reason
            else:
                candidates.append(group.id)
        self.sliced_groups: frozenset[str] = frozenset(candidates)

    # -- what can be sliced ----------------------------------------------------
    def _structural_reason(self, group: ChannelGroup) -> str | None:
        graph = self.analysis.graph
        tensors = set(group.tensors)
        for tensor in tensors:
            for node in [graph.producer.get(tensor), *graph.consumers.get(tensor, [])]:
                if node is None:
                    continue
                if node.op_type not in _COUNT_FOLLOWING:
                    return f"{node.op_type} '{node.name}' may spell its channel count"
                if node.op_type == "Conv" and attributes(node).get("group", 1) > 1 and node.input[0] in tensors:
                    if self._depthwise_module(node) is None:
                        return f"grouped Conv '{node.name}' is not a depthwise nn.Conv module"
        for tensor in tensors:
            for b in self._bindings_by_tensor[tensor]:
                if b.param not in self._owners:
                    return f"'{b.param}' is not a tensor of the PyTorch module"
        return None

    def _depthwise_module(self, node) -> nn.Module | None:
        owner = self._owners.get(node.input[1])
        module = None if owner is None else owner[0]
        return module if isinstance(module, nn.modules.conv._ConvNd) and module.groups == module.in_channels else None

    def verify(self, reference: Callable[[Plan, torch.Tensor], torch.Tensor], values: Callable[[Plan], dict],
               images: torch.Tensor) -> None:
        """Keep sliced only the groups whose slicing reproduces `reference`'s logits on `images`.

        `reference(plan, x)`: substitution's logits; `values(plan)`: the full-size
        tensors (name -> tensor) substitution would write for `plan`.
        """
        if not self.sliced_groups:
            return
        images = images[:_CHECK_IMAGES]
        if self._matches(self._half_plan(self.sliced_groups), reference, values, images):
            return
        kept = [gid for gid in sorted(self.sliced_groups)
                if self._matches(self._half_plan({gid}), reference, values, images)]
        for gid in self.sliced_groups - set(kept):
            self.zeroed_groups[gid] = "slicing it changed the logits (PyTorch code spells its channel count)"
        self.sliced_groups = frozenset(kept)
        if kept and not self._matches(self._half_plan(self.sliced_groups), reference, values, images):
            for gid in kept:
                self.zeroed_groups[gid] = "slicing the groups together changed the logits"
            self.sliced_groups = frozenset()

    def _half_plan(self, group_ids) -> Plan:
        sizes = {g.id: g.size for g in self.analysis.groups}
        # Every other unit kept (at least one): each sliced axis shrinks, none vanishes.
        return Plan(tuple(GroupPruning(gid, sizes[gid], tuple(range(1, sizes[gid], 2)) or (0,)) for gid in sorted(group_ids)))

    def _matches(self, plan: Plan, reference, values, images: torch.Tensor) -> bool:
        try:
            with torch.no_grad():
                expected = reference(plan, images).float()
                with self.sliced(plan, values(plan)):
                    got = self.module(images).float()
        except RuntimeError:
            return False  # a shape mismatch: the code spells a channel count
        if got.shape != expected.shape:
            return False
        scale = float(expected.abs().max())
        return float((got - expected).abs().max()) <= _RELATIVE_TOLERANCE * scale + _ABSOLUTE_TOLERANCE

    # -- one candidate -----------------------------------------------------------
    def slices(self, plan: Plan) -> bool:
        """Whether `plan` removes any channel this slicer removes physically."""
        return any(p.removed and p.group in self.sliced_groups for p in plan.pruning)

    @contextmanager
    def sliced(self, plan: Plan, values: dict[str, torch.Tensor]) -> Iterator[None]:
        """Inside the block the module holds `values` (full-size, by name), cut to the plan's kept channels.

        Names the plan does not slice are swapped in whole; every swapped
        tensor and attribute is put back on exit.
        """
        kept = kept_channels(self.analysis, plan, only=self.sliced_groups)
        cut = dict(values)
        for (param, axis), channels in self._axes_to_cut(kept).items():
            tensor = cut.get(param)
            if tensor is None:
                tensor = self._current(param)
            cut[param] = tensor.index_select(axis, torch.as_tensor(channels, device=tensor.device))
        restore: list[Callable[[], None]] = []
        try:
            for name, tensor in cut.items():
                restore.append(self._swap(name, tensor))
            for module, count in self._depthwise_counts(kept):
                restore.append(_set_attribute(module, "groups", count))
            yield
        finally:
            for undo in reversed(restore):
                undo()

    def _axes_to_cut(self, kept: dict[str, np.ndarray]) -> dict[tuple[str, int], np.ndarray]:
        axes: dict[tuple[str, int], np.ndarray] = {}
        for tensor, channels in kept.items():
            for b in self._bindings_by_tensor[tensor]:
                axes.setdefault((b.param, b.axis), channels)
        return axes

    def _depthwise_counts(self, kept: dict[str, np.ndarray]) -> list[tuple[nn.Module, int]]:
        # A grouped, non-depthwise convolution never reads a sliced tensor: `_structural_reason` keeps its group zeroed.
        return [(module, len(kept[tensor])) for tensor, module in self._depthwise if tensor in kept]

    def _current(self, name: str) -> torch.Tensor:
        module, attr, kind = self._owners[name]
        return getattr(module, kind)[attr]

    def _swap(self, name: str, tensor: torch.Tensor) -> Callable[[], None]:
        module, attr, kind = self._owners[name]
        slots = getattr(module, kind)  # module._parameters or module._buffers
        original = slots[attr]
        if original.dim() == 4 and original.is_contiguous(memory_format=torch.channels_last):
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        # A plain tensor in a parameter slot: forward reads it like the Parameter it replaces.
        slots[attr] = tensor.detach()

        def undo() -> None:
            slots[attr] = original

        return undo


def _tensor_owners(module: nn.Module) -> dict[str, tuple[nn.Module, str, str]]:
    """state_dict name -> (owning module, attribute, '_parameters' or '_buffers'); empty for TorchScript."""
    if isinstance(module, torch.jit.ScriptModule):
        return {}
    owners = {}
    for prefix, sub in module.named_modules():
        for kind in ("_parameters", "_buffers"):
            for attr, tensor in getattr(sub, kind).items():
                if tensor is not None:
                    owners[f"{prefix}.{attr}" if prefix else attr] = (sub, attr, kind)
    return owners


def _set_attribute(module: nn.Module, name: str, value) -> Callable[[], None]:
    original = getattr(module, name)
    setattr(module, name, value)
    return lambda: setattr(module, name, original)
