"""Joint fine-tuning of a nested family of pruned models: one set of weights, the sandwich rule.

A `--budgets` family (pipeline/family.py) is nested: every member keeps a
subset of the next larger member's channels, so every member's weights are
slices of the largest member's. Fine-tuning each member on its own would
break that; this module trains them together, as slimmable networks do
(Yu & Huang, "Universally Slimmable Networks", 2019):

- *One set of weights* (`SharedWeights`): the largest member's float
  initializers, BatchNorm running statistics excepted. Member k runs its own
  lowered graph (`FamilyMember.graph`: its node list, constants and channel
  counts) with every weight taken, at each forward, as `index_select` of the
  shared tensor along the axes `FamilyMember.slices` gives, so its gradients
  land in the shared tensors.
- *The sandwich rule*: each step accumulates the gradients of the largest
  member, the smallest and `random_members` others drawn from the family
  (without replacement, from (seed, epoch) alone), then takes one optimizer
  step. Random *members*, not random intermediate widths as US-Nets draws:
  only the members are ever deployed, and between two non-uniform members
  there is no one "width" to interpolate, so a step spent on a subnet nobody
  runs would only take capacity from the ones that are.
- *Distillation* (`--distill`): every member learns from the original
  model's logits, as a member fine-tuned on its own does, rather than from
  the largest member (US-Nets' in-place distillation): the original is the
  better teacher while the largest member is itself being changed, one
  teacher forward per step serves every member, and the two ways of
  fine-tuning a family (joint and separate) then differ only in what this
  module is about.
- *BatchNorm*: during training every member normalises with its batch's
  statistics; afterwards each member's running statistics are re-estimated
  on `statistics_images` training images (no augmentation, the mean of the
  batch means and unbiased batch variances), as slimmable networks do. They
  are the only per-member values: `member_initializers` is the slice of the
  shared weights plus the member's own statistics.

A checkpoint is written after each epoch (the shared weights, optimizer,
schedule and log); every random choice is drawn from (seed, epoch), so a
killed run resumes from its last finished epoch and ends where an
uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

from adans_toolchain.analysis.graph import attributes
from adans_toolchain.errors import DataError, LoweringError, SearchStateError
from adans_toolchain.fileio import atomic_write_bytes
from adans_toolchain.finetune.onnx_module import _OPS, OnnxModule, _key, store_outputs
from adans_toolchain.finetune.train import (
    EpochBatches, FinetuneConfig, _loader, _loss, _training_layout, batch_with_teacher, loader_workers,
)
from adans_toolchain.frontend.data import ImageSet
from adans_toolchain.frontend.training_data import TrainingSet
from adans_toolchain.lowering.emit import VALIDATION_IMAGES, Emitted, simplify
from adans_toolchain.lowering.prune_channels import set_initializers
from adans_toolchain.lowering.validate import validate_lowered

# US-Nets draw two random widths per step besides the largest and the smallest (four forward passes in all).
RANDOM_MEMBERS = 2
# Images each member's BatchNorm statistics are re-estimated on: US-Nets report that about 2,000 suffice.
STATISTICS_IMAGES = 2000
_DRAWS = 7_919  # offsets the member draws' seed from EpochBatches' (seed, epoch) stream


@dataclass(frozen=True)
class FamilyMember:
    """One member: its lowered graph (BatchNorm separate) and, per initializer sliced from the shared weights,
    the indices it keeps along each sliced axis, in the shared (largest member's) tensor's numbering. The first
    member of a family is the largest: its graph holds the shared weights and it slices nothing."""

    name: str
    graph: onnx.ModelProto
    slices: Mapping[str, Mapping[int, Sequence[int]]]


def shared_slices(kept: Mapping[str, Mapping], largest_kept: Mapping[str, Mapping],
                  shapes: Mapping[str, Sequence[int]]) -> dict[str, dict[int, list[int]]]:
    """A member's kept indices per initializer and axis, given in the original model's numbering (family.json's
    `parameters`; axes as ints or strings), in the shared tensors' numbering: their positions among the largest
    member's kept indices (all of the original's where the largest keeps the whole axis). Axes the member keeps
    whole in the shared numbering are left out. An index the largest member lacks: the family is not nested."""
    out: dict[str, dict[int, list[int]]] = {}
    for name, axes in kept.items():
        outer_axes = {int(a): v for a, v in largest_kept.get(name, {}).items()}
        for axis, indices in axes.items():
            axis = int(axis)
            outer = outer_axes.get(axis)
            outer = range(shapes[name][axis]) if outer is None else outer
            position = {int(v): i for i, v in enumerate(outer)}
            missing = [int(i) for i in indices if int(i) not in position]
            if missing:
                raise LoweringError(f"'{name}' keeps channels {missing[:3]} along axis {axis} that the largest member "
                                    "does not: the family is not nested")
            positions = [position[int(i)] for i in indices]
            if positions != list(range(len(position))):
                out.setdefault(name, {})[axis] = positions
    return out


class SharedWeights(nn.Module):
    """The one set of weights: the largest member's float initializers but its BatchNorm statistics, by name."""

    def __init__(self, largest: onnx.ModelProto, image_shape: tuple[int, ...]) -> None:
        super().__init__()
        module = OnnxModule(largest, image_shape)
        self.params = module.params
        self.keys = dict(module.param_names)  # ONNX initializer name -> key in `params`

    def __contains__(self, name: str) -> bool:
        return name in self.keys

    def __getitem__(self, name: str) -> nn.Parameter:
        return self.params[self.keys[name]]

    def values(self) -> dict[str, np.ndarray]:
        return {name: self[name].detach().cpu().numpy() for name in self.keys}


class SlicedMember(nn.Module):
    """Member k's graph run with its weights sliced from the shared ones, and its own BatchNorm statistics."""

    def __init__(self, member: FamilyMember, shared: SharedWeights, image_shape: tuple[int, ...]) -> None:
        super().__init__()
        graph = OnnxModule(member.graph, image_shape)  # the member's nodes, constants and statistics
        self.name = member.name
        self.input_name, self.output_name = graph.input_name, graph.output_name
        self.nodes = graph.nodes
        self.node_attributes = [attributes(n) for n in graph.nodes]
        self.consts = graph.consts
        self.statistics = {name: key for name, key in graph.stats.items()}
        for name, key in self.statistics.items():
            self.register_buffer(key, getattr(graph, key).clone())
        self.slices: dict[str, list[tuple[int, str]]] = {}  # initializer -> [(axis, buffer key of its indices)]
        for name, key in graph.param_names.items():
            own = graph.params[key].detach()
            self.slices[name] = self._slicing(name, own, member.slices.get(name, {}), shared)
        # Slices of BatchNorm statistics are allowed and unused: every member's statistics are its own.
        unknown = sorted(set(member.slices) - set(graph.param_names) - set(self.statistics))
        if unknown:
            raise LoweringError(f"member {member.name}: slices given for {unknown[:3]}, which its graph does not train")
        self._estimates: dict[str, list[torch.Tensor]] | None = None

    def _slicing(self, name: str, own: torch.Tensor, axes: Mapping[int, Sequence[int]], shared: SharedWeights):
        """Register the index tensors that cut `name` out of the shared weights, and check that they give exactly
        the member's own initializer: the nesting the family claims, checked on the values before training."""
        if name not in shared:
            raise LoweringError(f"member {self.name}: initializer '{name}' is not among the shared (largest member's) "
                                "weights; joint fine-tuning needs every member's weights to be slices of the largest's")
        value, steps = shared[name].detach(), []
        for axis, kept in sorted((int(a), k) for a, k in axes.items()):
            index = torch.as_tensor(list(kept), dtype=torch.long)
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= value.shape[axis]
                                  or not bool((index[1:] > index[:-1]).all())):
                raise LoweringError(f"member {self.name}: indices along axis {axis} of '{name}' are not increasing "
                                    f"indices of its {value.shape[axis]} shared channels")
            key = _key(f"slice.{name}.{axis}")
            self.register_buffer(key, index, persistent=False)
            steps.append((axis, key))
            value = value.index_select(axis, index)
        if value.shape != own.shape or not torch.equal(value, own):
            raise LoweringError(f"member {self.name}: initializer '{name}' is not the slice of the shared weights its "
                                f"indices give (shape {tuple(own.shape)}, sliced {tuple(value.shape)})")
        return steps

    def weights(self, shared: SharedWeights) -> dict[str, torch.Tensor]:
        """The member's weights, cut from the shared ones (differentiable: gradients flow into `shared`)."""
        out = {}
        for name, steps in self.slices.items():
            value = shared[name]
            for axis, key in steps:
                value = value.index_select(axis, getattr(self, key))
            out[name] = value
        return out

    def forward(self, x: torch.Tensor, shared: SharedWeights) -> torch.Tensor:
        weights = self.weights(shared)
        env: dict[str, object] = {self.input_name: x}
        for node, a in zip(self.nodes, self.node_attributes):
            inputs = [self._value(env, weights, i) if i else None for i in node.input]
            if node.op_type == "BatchNormalization":
                outputs = self._batchnorm(node, inputs, a)
            else:
                outputs = _OPS[node.op_type](self, node, inputs, a)
            store_outputs(env, node, outputs)
        return env[self.output_name]

    def _value(self, env: dict, weights: dict, name: str):
        if name in env:
            return env[name]
        if name in weights:
            return weights[name]
        if name in self.statistics:
            return getattr(self, self.statistics[name])
        if name in self.consts:
            return self.consts[name]
        raise KeyError(name)

    def _batchnorm(self, node, inputs, a):
        """Training: the batch's statistics (running ones untouched: each member's are re-estimated afterwards).
        Estimating: the same, and the batch's per-channel mean and unbiased variance recorded. Else: the member's
        own running statistics."""
        x, scale, bias, mean, var = inputs[:5]
        eps = a.get("epsilon", 1e-5)
        if self._estimates is None and not self.training:
            return F.batch_norm(x, mean, var, scale, bias, training=False, eps=eps)
        if self._estimates is not None:
            dims = [0, *range(2, x.dim())]
            weight = float(x.shape[0])
            var, mean = torch.var_mean(x, dims, unbiased=True)
            for name, value in ((node.input[3], mean), (node.input[4], var)):
                total = self._estimates.setdefault(name, [torch.zeros_like(value), 0.0])
                total[0] += value * weight
                total[1] += weight
        return F.batch_norm(x, None, None, scale, bias, training=True, eps=eps)

    def start_estimating(self) -> None:
        self._estimates = {}

    def finish_estimating(self) -> None:
        """Set the running statistics to the estimates of the batches seen since `start_estimating`."""
        estimates, self._estimates = self._estimates, None
        missing = sorted(set(self.statistics) - set(estimates or {}))
        if missing:
            raise LoweringError(f"member {self.name}: no batch reached the BatchNorm statistics {missing[:3]}")
        for name, (total, weight) in estimates.items():
            getattr(self, self.statistics[name]).copy_(total / weight)


class SandwichFamily(nn.Module):
    """The shared weights and every member (the largest first) that slices them."""

    def __init__(self, members: Sequence[FamilyMember], image_shape: tuple[int, ...]) -> None:
        super().__init__()
        if not members:
            raise ValueError("a family has at least one member")
        if any(members[0].slices.values()):
            raise LoweringError(f"the largest member ({members[0].name}) holds the shared weights and slices nothing")
        self.shared = SharedWeights(members[0].graph, image_shape)
        self.members = nn.ModuleList(SlicedMember(m, self.shared, image_shape) for m in members)
        self.graphs = [m.graph for m in members]
        self.identity = _identity(members)

    def __len__(self) -> int:
        return len(self.members)

    def forward(self, x: torch.Tensor, k: int) -> torch.Tensor:
        return self.members[k](x, self.shared)

    def member_initializers(self, k: int) -> dict[str, np.ndarray]:
        """Member k's initializers by ONNX name: the slices of the shared weights and its own BatchNorm statistics."""
        member = self.members[k]
        with torch.no_grad():
            values = {name: v.detach().cpu().numpy() for name, v in member.weights(self.shared).items()}
        values.update({name: getattr(member, key).detach().cpu().numpy() for name, key in member.statistics.items()})
        return values


def _identity(members: Sequence[FamilyMember]) -> str:
    """What the checkpoint must belong to: the members' names, slices and initializer shapes."""
    record = [{"name": m.name, "slices": {n: {str(a): list(map(int, k)) for a, k in axes.items()} for n, axes in sorted(m.slices.items())},
               "shapes": sorted((i.name, list(i.dims)) for i in m.graph.graph.initializer)} for m in members]
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def sandwich_draw(count: int, random_members: int, generator: torch.Generator) -> list[int]:
    """The members one step trains: the largest (0), `random_members` of the others drawn without replacement, and
    the smallest (count - 1); every member when there are no more than that."""
    middle = torch.randperm(max(count - 2, 0), generator=generator)[:random_members]  # drawn even when empty
    return sorted({0, count - 1, *(1 + int(i) for i in middle)})


@dataclass
class SandwichLog:
    """Per epoch and member (by name): the mean loss and training top-1 over the steps that trained it."""

    epochs_done: int = 0
    train_loss: dict[str, list[float]] = field(default_factory=dict)
    train_top1: dict[str, list[float]] = field(default_factory=dict)
    steps: dict[str, list[int]] = field(default_factory=dict)
    resumed_from_epoch: int = 0


def finetune_family(
    family: SandwichFamily,
    data: ImageSet | TrainingSet,
    cfg: FinetuneConfig,
    *,
    random_members: int = RANDOM_MEMBERS,
    teacher: nn.Module | None = None,
    checkpoint: Path | None = None,
    device: str = "cpu",
    workers: int | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> SandwichLog:
    """Train the family's shared weights on `data` for cfg.epochs by the sandwich rule, resuming from `checkpoint`
    if it holds finished epochs. on_epoch(epoch, {member: mean loss}) after each epoch."""
    if random_members < 0:
        raise ValueError("random_members is a number of members (>= 0)")
    if isinstance(data, ImageSet):
        data = TrainingSet.from_images(data)
    device_t = torch.device(device)
    layout = _training_layout(device_t)
    family.to(device_t, memory_format=layout)
    optimizer = torch.optim.SGD(family.shared.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, nesterov=True)
    batches = EpochBatches(len(data), cfg.batch_size, cfg.seed, data.image_shape[1:], cfg.augment)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs * len(batches), 1))
    record = {"config": asdict(cfg), "random_members": random_members, "images": len(data), "data": data.identity(),
              "family": family.identity}
    log = SandwichLog()
    if checkpoint is not None and checkpoint.is_file():
        log = _resume(checkpoint, family, optimizer, scheduler, record, device_t)
    if teacher is not None:
        teacher.to(device_t).eval()
    loader = _loader(data, batches, loader_workers(data, device) if workers is None else workers, device_t)
    names = [m.name for m in family.members]
    for epoch in range(log.epochs_done, cfg.epochs):
        batches.epoch = epoch  # before iter(loader): workers prefetch as soon as it starts
        draws = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch + _DRAWS)
        family.train()
        totals = {name: [0.0, 0, 0, 0] for name in names}  # loss x images, correct, images, steps
        for batch in loader:
            x, y, teacher_logits = batch_with_teacher(batch, device_t, layout, teacher, cfg)
            optimizer.zero_grad(set_to_none=True)
            for k in sandwich_draw(len(family), random_members, draws):
                logits = family(x, k).float()
                loss = _loss(logits, y, teacher_logits, cfg)
                loss.backward()  # accumulates into the shared weights: one optimizer step for all drawn members
                t = totals[names[k]]
                t[0] += float(loss.detach()) * len(y)
                t[1] += int((logits.argmax(1) == y).sum())
                t[2] += len(y)
                t[3] += 1
            optimizer.step()
            scheduler.step()
        family.eval()
        log.epochs_done = epoch + 1
        for name, (loss_sum, correct, seen, steps) in totals.items():
            log.train_loss.setdefault(name, []).append(loss_sum / seen if seen else float("nan"))
            log.train_top1.setdefault(name, []).append(100.0 * correct / seen if seen else float("nan"))
            log.steps.setdefault(name, []).append(steps)
        if checkpoint is not None:
            _save(checkpoint, family, optimizer, scheduler, record, log)
        if on_epoch is not None:
            on_epoch(epoch + 1, {name: log.train_loss[name][-1] for name in names})
    family.to(memory_format=torch.contiguous_format).eval()  # whoever reads the weights next expects NCHW
    return log


def estimate_statistics(family: SandwichFamily, data: ImageSet | TrainingSet, *, images: int = STATISTICS_IMAGES,
                        batch_size: int, seed: int, device: str = "cpu", workers: int | None = None) -> int:
    """Re-estimate every member's BatchNorm running statistics on the first `images` of a seeded order of the
    training images (no augmentation); returns how many images were used."""
    if isinstance(data, ImageSet):
        data = TrainingSet.from_images(data)
    device_t = torch.device(device)
    family.to(device_t).eval()
    batches = EpochBatches(len(data), batch_size, seed, data.image_shape[1:], augment=False)
    loader = _loader(data, batches, loader_workers(data, device) if workers is None else workers, device_t)
    for member in family.members:
        member.start_estimating()
    used = 0
    with torch.no_grad():
        for batch in loader:
            if isinstance(batch, str):
                raise DataError(batch)
            if used >= images:
                break
            x = batch[0][: images - used].to(device_t)
            if len(x) < 2:  # one image has no variance to estimate
                break
            for k in range(len(family)):
                family(x, k)
            used += len(x)
    for member in family.members:
        member.finish_estimating()
    family.cpu()
    return used


def interpreter_check(family: SandwichFamily, k: int, check_images: torch.Tensor, *, threads: int) -> float:
    """max |member k as interpreted here - ONNX Runtime on its own graph|, relative: before training, the sliced
    member must compute what its lowered graph computes."""
    x = check_images[:VALIDATION_IMAGES]
    family.cpu().eval()
    with torch.no_grad():
        interpreted = family(x, k).numpy()
    # SlicedMember checked that the sliced weights and the statistics are the graph's own.
    return validate_lowered(family.graphs[k], interpreted, x.numpy(), threads=threads,
                            reference="ONNX graph interpreted by PyTorch, weights sliced from the shared ones").relative_diff


def emit_member(family: SandwichFamily, k: int, pre_simplify: onnx.ModelProto, check_images: torch.Tensor, *,
                threads: int, pass_log: list[dict]) -> Emitted:
    """Member k's emitted model: `pre_simplify` (its lowered graph) with the member's initializers written in,
    simplified (BatchNorm folded), and validated against the member as trained here."""
    trained = set_initializers(pre_simplify, family.member_initializers(k))
    model = simplify(trained)
    x = check_images[:VALIDATION_IMAGES]
    family.cpu().eval()
    with torch.no_grad():
        reference = family(x, k).numpy()
    validation = validate_lowered(model, reference, x.numpy(), threads=threads,
                                  reference="jointly fine-tuned PyTorch member (weights sliced from the shared ones)")
    return Emitted(model, trained, validation, pass_log + [{"pass": "finetune (joint)", "modified": True, "checked": []}])


def _resume(checkpoint: Path, family: SandwichFamily, optimizer, scheduler, record: dict, device) -> SandwichLog:
    state = torch.load(checkpoint, map_location=device, weights_only=False)
    if any(state.get(k) != v for k, v in record.items()):
        raise SearchStateError(f"{checkpoint} belongs to a joint fine-tune of other members, settings or training data; "
                               "delete it or give the same ones")
    family.shared.load_state_dict(state["shared"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    log = SandwichLog(**state["log"])
    log.resumed_from_epoch = log.epochs_done
    return log


def _save(checkpoint: Path, family: SandwichFamily, optimizer, scheduler, record: dict, log: SandwichLog) -> None:
    buffer = io.BytesIO()
    torch.save({**record, "shared": family.shared.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "log": {k: v for k, v in asdict(log).items() if k != "resumed_from_epoch"}}, buffer)
    atomic_write_bytes(checkpoint, buffer.getvalue())


def shared_weights_model(family: SandwichFamily, largest: onnx.ModelProto) -> onnx.ModelProto:
    """The one weight file: the largest member's graph (BatchNorm separate) with the shared weights and the largest
    member's own statistics; every member's weights are slices of its initializers."""
    return set_initializers(largest, family.member_initializers(0))
