"""Joint (sandwich-rule) fine-tuning of a nested family: one set of weights, every member a slice of it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import numpy_helper

from adans_toolchain.errors import LoweringError, SearchStateError
from adans_toolchain.evaluation.substitution import SubstitutionEvaluator, original_weights
from adans_toolchain.finetune.sandwich import (
    FamilyMember, SandwichFamily, emit_member, estimate_statistics, finetune_family, interpreter_check, sandwich_draw,
    shared_slices,
)
from adans_toolchain.finetune.train import FinetuneConfig
from adans_toolchain.frontend.data import Preprocessing, load_image_set
from adans_toolchain.frontend.loading import load_model
from adans_toolchain.lowering.emit import lower_plan
from adans_toolchain.plan.space import CompressionSpace
from adans_toolchain.runtime.sessions import run_onnx
from adans_toolchain.transforms.channel_pruning import kept_channels
from adans_toolchain.transforms.plan_transform import PlanTransform
from tests.helpers import export_and_analyse

SHAPE = (3, 32, 32)
CONFIG = FinetuneConfig(epochs=2, lr=0.02, batch_size=64, seed=3)


def _kept_by_parameter(analysis, plan) -> dict[str, dict[int, list[int]]]:
    """What family.json's `parameters` gives: per initializer, the original indices kept along each channel axis."""
    tensors = kept_channels(analysis, plan)
    out: dict[str, dict[int, list[int]]] = {}
    for b in analysis.bindings:
        if b.tensor in tensors:
            out.setdefault(b.param, {})[b.axis] = [int(i) for i in tensors[b.tensor]]
    return out


@pytest.fixture(scope="module")
def nested(example_paths):
    """ResNet-20 and three nested plans (every coordinate cut further in the smaller ones), lowered; 128 images."""
    torch.manual_seed(0)
    loaded = load_model(example_paths["model"], "cifar_resnet20")
    data = load_image_set(example_paths["val"], Preprocessing(), limit=128)
    exported = export_and_analyse(loaded.module, SHAPE)
    analysis = exported.analysis
    transform = PlanTransform(analysis, original_weights(loaded.module, analysis))
    evaluator = SubstitutionEvaluator(loaded.module, data, transform, batch_size=128)
    space = CompressionSpace.from_priorities(analysis.prunable_groups,
                                             evaluator.priorities(analysis, analysis.prunable_groups, "l1"))
    plans = [space.decode(np.full(space.dim, level)) for level in (0.2, 0.4, 0.6)]
    graphs = [lower_plan(exported.onnx_model, analysis, p, transform, evaluator, data.x, threads=1).pre_simplify
              for p in plans]
    kept = [_kept_by_parameter(analysis, p) for p in plans]
    shapes = {i.name: list(i.dims) for i in exported.onnx_model.graph.initializer}
    members = [FamilyMember(name, g, shared_slices(k, kept[0], shapes))
               for name, g, k in zip(("large", "middle", "small"), graphs, kept)]
    return loaded, data, members


def test_the_sandwich_draws_the_largest_the_smallest_and_random_others_from_the_seed():
    draws = torch.Generator().manual_seed(0)
    picks = [sandwich_draw(6, 2, draws) for _ in range(50)]
    assert all(p[0] == 0 and p[-1] == 5 and len(p) == 4 and len(set(p)) == 4 for p in picks)
    assert len({tuple(p) for p in picks}) > 1  # the middle two vary
    again = torch.Generator().manual_seed(0)
    assert [sandwich_draw(6, 2, again) for _ in range(50)] == picks
    assert sandwich_draw(3, 2, draws) == [0, 1, 2] and sandwich_draw(1, 2, draws) == [0]


def test_members_run_as_slices_of_the_largest_members_weights(nested):
    _, data, members = nested
    assert not members[0].slices and members[2].slices  # the largest slices nothing
    family = SandwichFamily(members, SHAPE)
    for k in range(3):  # before training, each member computes what its own lowered graph does in ONNX Runtime
        assert interpreter_check(family, k, data.x, threads=1) < 1e-4
    # Not nested: the smaller member's indices are not among the larger one's.
    with pytest.raises(LoweringError, match="the family is not nested"):
        shared_slices({"conv1.weight": {0: [0, 1, 2]}}, {"conv1.weight": {0: [1, 2, 3]}}, {"conv1.weight": [16, 3, 3, 3]})
    # A member whose weights are not the slices its indices name is refused before training.
    wrong = {name: {axis: list(reversed(idx)) for axis, idx in axes.items()} for name, axes in members[2].slices.items()}
    with pytest.raises(LoweringError, match="not increasing"):
        SandwichFamily([members[0], FamilyMember("small", members[2].graph, wrong)], SHAPE)


def test_joint_training_keeps_every_member_a_slice_and_each_emitted_member_validates(nested, tmp_path):
    loaded, data, members = nested
    family = SandwichFamily(members, SHAPE)
    before = {name: value.copy() for name, value in family.shared.values().items()}
    with torch.no_grad():
        smallest_before = float(torch.nn.functional.cross_entropy(family.eval()(data.x, 2), data.y))
    log = finetune_family(family, data, FinetuneConfig(epochs=1, lr=0.02, batch_size=64, augment=False),
                          teacher=loaded.module, checkpoint=tmp_path / "family.pt")
    assert log.epochs_done == 1 and log.steps == {"large": [2], "middle": [2], "small": [2]}  # three members: all, every step
    assert any(not np.array_equal(before[n], v) for n, v in family.shared.values().items())
    used = estimate_statistics(family, data, images=100, batch_size=64, seed=3)
    assert used == 100
    with torch.no_grad():
        smallest_after = float(torch.nn.functional.cross_entropy(family.eval()(data.x, 2), data.y))
    assert smallest_after < smallest_before
    shared = family.shared.values()
    for k, member in enumerate(members):
        emitted = emit_member(family, k, member.graph, data.x, threads=1, pass_log=[])
        assert emitted.validation.relative_diff <= emitted.validation.tolerance
        values = {i.name: i for i in emitted.pre_simplify.graph.initializer}
        sliced = [name for name in member.slices if name in shared]  # BatchNorm statistics: each member's own
        # Every member but the largest slices 19 convolutions, 19 BatchNorm scales and biases and the classifier.
        assert len(sliced) == (0 if k == 0 else 19 * 3 + 1), (k, len(sliced))
        for name in sliced:  # the emitted (unfolded) weights are slices of the shared ones
            axes = member.slices[name]
            expected = shared[name]
            for axis, index in sorted(axes.items()):
                expected = np.take(expected, index, axis=axis)
            assert np.array_equal(numpy_helper.to_array(values[name]), expected), (k, name)
        logits = run_onnx(emitted.model, data.x[:16].numpy())
        assert logits.shape == (16, 10)


def test_a_killed_joint_finetune_resumes_to_the_same_weights(nested, tmp_path):
    _, data, members = nested
    uninterrupted = SandwichFamily(members, SHAPE)
    finetune_family(uninterrupted, data, CONFIG, random_members=1, checkpoint=tmp_path / "a.pt")

    class Killed(Exception):
        pass

    def kill_after_first(epoch, losses):
        if epoch == 1:
            raise Killed  # the checkpoint of epoch 1 is already on disk

    with pytest.raises(Killed):
        finetune_family(SandwichFamily(members, SHAPE), data, CONFIG, random_members=1, checkpoint=tmp_path / "b.pt",
                        on_epoch=kill_after_first)
    resumed = SandwichFamily(members, SHAPE)
    log = finetune_family(resumed, data, CONFIG, random_members=1, checkpoint=tmp_path / "b.pt")
    assert log.resumed_from_epoch == 1 and log.epochs_done == 2
    for name, value in uninterrupted.shared.values().items():
        assert np.array_equal(value, resumed.shared.values()[name]), name
    # The checkpoint belongs to these members and settings: others are refused.
    with pytest.raises(SearchStateError, match="other members, settings or training data"):
        finetune_family(SandwichFamily(members[:2], SHAPE), data, CONFIG, random_members=1, checkpoint=tmp_path / "b.pt")
