"""Accuracy of candidate Plans by parameter substitution on the PyTorch model.

No graph is rebuilt per candidate: the Plan's zero slices are written into
the live parameters, the validation set is run, and the original values are
restored. Validation data is moved to the device once.
"""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager, contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from adans_toolchain.analysis.channels import CONSUMER, ChannelAnalysis, ChannelGroup
from adans_toolchain.evaluation.base import Evaluator
from adans_toolchain.evaluation.slicing import ChannelSlicer
from adans_toolchain.frontend.data import ImageSet
from adans_toolchain.plan import Plan
from adans_toolchain.transforms.channel_pruning import unit_l1_norms
from adans_toolchain.transforms.plan_transform import PlanTransform


def original_weights(module: nn.Module, analysis: ChannelAnalysis) -> dict[str, np.ndarray]:
    """Copies of the weighted layers' weights, as the transforms need them."""
    from adans_toolchain.analysis.layers import weighted_layers

    state = module.state_dict()
    return {layer.weight: state[layer.weight].detach().cpu().numpy().copy() for layer in weighted_layers(analysis.graph)}


class SubstitutionEvaluator(Evaluator):
    distributable = True  # executors.EvaluatorSpec rebuilds it in a worker

    def __init__(
        self,
        module: nn.Module,
        data: ImageSet,
        transform: PlanTransform,
        *,
        device: str = "cpu",
        batch_size: int = 250,
        calibration: ImageSet | None = None,
        precision: str = "fp32",
        slicing: bool = False,
    ) -> None:
        if precision not in ("fp32", "bf16", "auto"):
            raise ValueError(f"precision must be fp32, bf16 or auto, not {precision!r}")
        super().__init__(transform, batch_size=batch_size)
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.x = data.x.to(self.device)
        self.y = data.y.to(self.device)
        # Images whose statistics re-estimate BatchNorm for every compressed
        # candidate (None: keep the trained statistics).
        self.calibration = None if calibration is None else calibration.x.to(self.device)
        self.batchnorms = _batchnorm_modules(self.module)
        # state_dict(keep_vars=True) maps exactly the names the ONNX initializers carry.
        self.tensors: dict[str, torch.Tensor] = dict(self.module.state_dict(keep_vars=True))
        if self.calibration is not None and not self.batchnorms:
            self.notes.append("BatchNorm re-estimation requested, but the model has no BatchNorm layers")
        self.channels_last = False
        self.slicer: ChannelSlicer | None = None  # choose_precision evaluates the baseline before slicing is set up
        if precision == "bf16":
            self._use_bf16()
        elif precision == "auto" and self.device.type == "cuda":
            self.choose_precision()
        elif precision == "auto":
            # fp32 in channels-last: oneDNN's CPU convolutions ran 1.4x (ResNet-56) to 1.6x (MobileNetV2)
            # faster than in NCHW on the 2-core development machine (BENCHMARKS.md).
            self._use_channels_last()
            self.notes.append("evaluating candidates in fp32, channels-last")
        self.slicer = self._make_slicer() if slicing else None

    # -- precision -----------------------------------------------------------
    def _use_bf16(self) -> None:
        # channels-last is what cuDNN's fastest bf16 convolutions expect.
        self._use_channels_last()
        self.precision = "bf16"

    def _use_channels_last(self) -> None:
        if self.x.dim() != 4:
            return
        self.module.to(memory_format=torch.channels_last)
        self.x = self.x.contiguous(memory_format=torch.channels_last)
        if self.calibration is not None:
            self.calibration = self.calibration.contiguous(memory_format=torch.channels_last)
        self.channels_last = True

    def choose_precision(self, tolerance_points: float = 0.1) -> str:
        """Use bf16 + channels-last only if the baseline's top-1 stays within `tolerance_points` of fp32."""
        from adans_toolchain.plan import Plan

        fp32 = float(self.accuracy([Plan(())])[0])
        self._use_bf16()
        bf16 = float(self.accuracy([Plan(())])[0])
        self.evaluations -= 2
        self.images -= 2 * len(self.y)
        if abs(bf16 - fp32) > tolerance_points:
            self.precision = "fp32"
            self.notes.append(f"bf16 evaluation changed the baseline's top-1 by {bf16 - fp32:+.2f} points; evaluating in fp32")
        else:
            self.notes.append(f"evaluating candidates in bf16 autocast, channels-last (baseline top-1 {bf16:.2f} % vs {fp32:.2f} % fp32)")
        return self.precision

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        from contextlib import nullcontext

        return nullcontext()

    # -- physically smaller candidates (evaluation.slicing) ------------------------
    def _make_slicer(self) -> ChannelSlicer | None:
        if isinstance(self.module, torch.jit.ScriptModule):
            self.notes.append("candidates evaluated at full size: a TorchScript module's tensors cannot be swapped")
            return None
        slicer = ChannelSlicer(self.module, self.transform.analysis)
        slicer.verify(self._substituted_logits, self._full_values, self.x)
        total = len(slicer.sliced_groups) + len(slicer.zeroed_groups)
        if total:
            self.notes.append(
                f"candidates evaluated physically smaller: {len(slicer.sliced_groups)} of {total} prunable channel groups "
                "sliced out of the module (checked against substitution); the rest zeroed"
            )
        return slicer if slicer.sliced_groups else None

    def _substituted_logits(self, plan: Plan, x: torch.Tensor) -> torch.Tensor:
        with self.substituted(plan, recalibrate=False):
            return self.module(x)

    def _full_values(self, plan: Plan) -> dict[str, torch.Tensor]:
        """What `substituted` writes for `plan`, as new full-size tensors (the originals untouched)."""
        values = {name: torch.from_numpy(v).to(self.device) for name, v in self.transform.new_values(plan).items()}
        for zs in self.transform.zero_slices(plan):
            tensor = values.get(zs.param)
            if tensor is None:
                tensor = values[zs.param] = self.tensors[zs.param].detach().clone()
            tensor.index_fill_(zs.axis, torch.as_tensor(zs.indices, device=tensor.device), 0.0)
        return values

    def candidate(self, plan: Plan) -> AbstractContextManager[None]:
        """The search's view of `plan`: physically smaller where it prunes a sliceable group."""
        if self.slicer is None or not self.slicer.slices(plan):
            return self.substituted(plan)
        return self._sliced(plan)

    @contextmanager
    def _sliced(self, plan: Plan) -> Iterator[None]:
        values = self._full_values(plan)
        recalibrate = self.recalibrates(plan)
        if recalibrate:
            # Fresh statistics buffers, sliced with the rest: re-estimation writes only to these.
            for name, bn in self.batchnorms.items():
                for stat in ("running_mean", "running_var", "num_batches_tracked"):
                    values.setdefault(f"{name}.{stat}", getattr(bn, stat).detach().clone())
        with self.slicer.sliced(plan, values):
            if recalibrate:
                self._reestimate_batchnorm()
            yield

    @contextmanager
    def substituted(self, plan: Plan, *, recalibrate: bool | None = None) -> Iterator[None]:
        """The module computes `plan` inside the block; everything is restored on exit."""
        recalibrate = self._recalibrating(plan, recalibrate)
        saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        try:
            with torch.no_grad():
                for name, value in self.transform.new_values(plan).items():
                    tensor = self.tensors[name]
                    saved.append((tensor, tensor.detach().clone()))
                    tensor.data.copy_(torch.from_numpy(value))
                for zs in self.transform.zero_slices(plan):
                    tensor = self.tensors[zs.param]
                    saved.append((tensor, tensor.detach().clone()))
                    index = torch.as_tensor(zs.indices, device=tensor.device)
                    tensor.data.index_fill_(zs.axis, index, 0.0)
                if recalibrate:
                    for bn in self.batchnorms.values():
                        for buffer in (bn.running_mean, bn.running_var, bn.num_batches_tracked):
                            saved.append((buffer, buffer.detach().clone()))
                    self._reestimate_batchnorm()
            yield
        finally:
            with torch.no_grad():
                for tensor, original in reversed(saved):
                    tensor.data.copy_(original)

    @torch.no_grad()
    def _reestimate_batchnorm(self) -> None:
        """One pass over the calibration images with BatchNorm (only) in training mode.

        momentum=None makes the running statistics the plain average over
        the batches, independent of their order; no weight changes.
        """
        momenta = {name: bn.momentum for name, bn in self.batchnorms.items()}
        try:
            for bn in self.batchnorms.values():
                bn.reset_running_stats()
                bn.momentum = None
                bn.train()
            # momentum=None weighs every batch equally, so the batches must be
            # (nearly) equal in size: 256 images as 250 + 6 would give six
            # images the weight of 250.
            n_batches = -(-len(self.calibration) // self.batch_size)
            with self._autocast():
                for batch in torch.tensor_split(self.calibration, n_batches):
                    self.module(batch)
        finally:
            for name, bn in self.batchnorms.items():
                bn.momentum = momenta[name]
                bn.eval()

    def batchnorm_statistics(self, plan: Plan) -> dict[str, np.ndarray]:
        """The running statistics the emitted model must carry for `plan`, by initializer name."""
        if not self.recalibrates(plan):
            return {}
        with self.substituted(plan):
            return {
                f"{name}.{stat}": getattr(bn, stat).detach().cpu().numpy().copy()
                for name, bn in self.batchnorms.items()
                for stat in ("running_mean", "running_var")
            }

    @torch.no_grad()
    def _correct(self, x: torch.Tensor, y: torch.Tensor) -> int:
        correct = 0
        for start in range(0, len(y), self.batch_size):
            with self._autocast():
                logits = self.module(x[start : start + self.batch_size])
            correct += int((logits.argmax(dim=1) == y[start : start + self.batch_size]).sum())
        return correct

    def _arrays(self, data: ImageSet) -> tuple[torch.Tensor, torch.Tensor]:
        return data.x.to(self.device), data.y.to(self.device)

    def _index(self, order: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(order, dtype=torch.long, device=self.device)

    def _take(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.index_select(0, index)
        if self.channels_last:  # keep the layout the fast kernels expect
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.index_select(0, index)

    @torch.no_grad()
    def logits(self, plan: Plan, x: torch.Tensor) -> np.ndarray:
        """fp32 logits whatever the search precision: this is the validation reference."""
        with self.substituted(plan):
            return self.module(x.to(self.device)).float().cpu().numpy()

    @torch.no_grad()
    def float64_logits(self, plan: Plan, x: torch.Tensor) -> np.ndarray | None:
        """The substituted module (re-estimated statistics included) copied to float64, on `x` in float64."""
        with self.substituted(plan):
            try:
                module = copy.deepcopy(self.module)
            except Exception:  # noqa: BLE001 - a module that cannot be copied has no float64 reference
                return None
        module = module.double()
        return module(x.to(self.device, torch.float64)).cpu().numpy()

    # -- channel priority ----------------------------------------------------
    def priorities(self, analysis: ChannelAnalysis, groups: Sequence[ChannelGroup], method: str = "taylor") -> dict[str, np.ndarray]:
        if method == "l1":
            params = {k: v.detach().cpu().numpy() for k, v in self.tensors.items()}
            return {g.id: unit_l1_norms(analysis, g, params) for g in groups}
        if method != "taylor":
            raise ValueError(f"unknown priority method '{method}' (taylor or l1)")
        try:
            return self._taylor(analysis, groups)
        except _NoPerExampleHooks as e:
            # TorchScript or functional weights: no module to hook. Weight norms
            # are the paper's accepted cheaper criterion.
            self.notes.append(f"channel priority: L1 weight norm (no module to hook for {e.args[0]})")
            params = {k: v.detach().cpu().numpy() for k, v in self.tensors.items()}
            return {g.id: unit_l1_norms(analysis, g, params) for g in groups}

    def _taylor(self, analysis: ChannelAnalysis, groups: Sequence[ChannelGroup]) -> dict[str, np.ndarray]:
        """First-order Taylor importance (Molchanov et al.) of removing each unit.

        Removing a unit zeroes the consumer columns that read it, so per
        example the loss changes by about -sum(a * dL/da) over the unit's
        activations *as each consumer sees them*. We capture each consumer's
        input through a forward pre-hook (an identity view, so its gradient
        is that consumer's share only), take |.| per example and sum over the
        validation set.
        """
        consumers = [b for b in analysis.bindings if b.role == CONSUMER and any(b.tensor in g.tensors for g in groups)]
        unit_maps: dict[tuple[str, str, int], torch.Tensor] = {}
        for g in groups:
            for b in consumers:
                if b.tensor in g.tensors:
                    size = self.tensors[b.param].shape[b.axis]
                    unit_of = torch.full((size,), -1, dtype=torch.long)
                    for u, unit in enumerate(g.units):
                        if b.tensor in unit:
                            unit_of[torch.as_tensor(unit[b.tensor])] = u
                    unit_maps[(g.id, b.param, b.axis)] = unit_of
        modules = dict(self.module.named_modules()) if not isinstance(self.module, torch.jit.ScriptModule) else {}
        captured: dict[str, torch.Tensor] = {}
        linear_inputs: dict[str, bool] = {}
        handles = []
        for name in {b.param for b in consumers}:
            owner = modules.get(name.rsplit(".", 1)[0])
            if owner is None or not isinstance(owner, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                raise _NoPerExampleHooks(name)

            def hook(mod, args, _name=name):
                view = args[0].view_as(args[0])
                view.retain_grad()
                captured[_name] = view
                return (view, *args[1:])

            linear_inputs[name] = isinstance(owner, nn.Linear)
            handles.append(owner.register_forward_pre_hook(hook))
        scores = {g.id: torch.zeros(g.size, dtype=torch.float64) for g in groups}
        try:
            for start in range(0, len(self.y), self.batch_size):
                x = self.x[start : start + self.batch_size].clone().requires_grad_(True)
                logits = self.module(x)
                loss = F.cross_entropy(logits.float(), self.y[start : start + self.batch_size], reduction="sum")
                loss.backward()
                per_example = {g.id: torch.zeros(len(x), g.size, dtype=torch.float64) for g in groups}
                for (gid, name, axis), unit_of in unit_maps.items():
                    a = captured[name]
                    product = a.detach() * a.grad
                    if linear_inputs.get(name) and product.dim() > 2:
                        product = product.movedim(-1, 1)  # a Linear reads the last axis (ConvNeXt's channels-last MLP)
                    # Input channel axis of Conv is 1; sum over the rest per example.
                    contribution = product.reshape(a.shape[0], product.shape[1], -1).sum(-1)
                    if contribution.shape[1] != len(unit_of):
                        # Grouped conv: weight column i reads in-group position i of every group.
                        contribution = contribution.reshape(a.shape[0], -1, len(unit_of)).sum(1)
                    mask = unit_of >= 0
                    per_example[gid].index_add_(1, unit_of[mask], contribution.cpu().double()[:, mask])
                for gid in scores:
                    scores[gid] += per_example[gid].abs().sum(0)
                captured.clear()
        finally:
            for h in handles:
                h.remove()
            self.module.zero_grad(set_to_none=True)
        return {gid: s.numpy() for gid, s in scores.items()}


def _batchnorm_modules(module: nn.Module) -> dict[str, nn.Module]:
    """BatchNorm layers by module name (their buffers are named '<name>.running_mean', ...)."""
    return {
        name: m
        for name, m in module.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    }


class _NoPerExampleHooks(Exception):
    """A consumer is not an nn.Conv/nn.Linear module, so per-example hooks cannot reach it."""
