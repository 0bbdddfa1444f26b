"""Physically smaller candidates (evaluation.slicing) compute what substitution computes.

Substitution is the reference: the sliced module must give the same
predictions (logits within float rounding) and the same accuracies, leave the
module exactly as it was, and keep zeroed the groups whose channel count the
PyTorch code spells.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adans_toolchain.evaluation.rejection import EarlyRejection
from adans_toolchain.evaluation.substitution import SubstitutionEvaluator, original_weights
from adans_toolchain.frontend.data import ImageSet, Preprocessing, load_image_set
from adans_toolchain.frontend.loading import load_model
from adans_toolchain.plan.sites import layer_sites, parse_methods
from adans_toolchain.plan.space import CompressionSpace
from adans_toolchain.transforms.plan_transform import PlanTransform
from tests.conftest import randomise_batchnorm
from tests.helpers import build, export_and_analyse


def _evaluators(module, shape, data, calibration, methods="ps", seed=0):
    exported = export_and_analyse(module, shape)
    analysis = exported.analysis
    transform = PlanTransform(analysis, original_weights(module, analysis))
    common = dict(batch_size=16, calibration=calibration)
    sliced = SubstitutionEvaluator(module, data, transform, slicing=True, **common)
    reference = SubstitutionEvaluator(module, data, transform, **common)
    rng = np.random.default_rng(seed)
    groups = analysis.prunable_groups
    extra = layer_sites(analysis, parse_methods(methods)) if methods != "ps" else ()
    space = CompressionSpace.from_priorities(groups, {g.id: rng.random(g.size) for g in groups}, extra_sites=extra)
    return sliced, reference, space, rng


def _logits(evaluator: SubstitutionEvaluator, plan, x) -> torch.Tensor:
    with torch.no_grad(), evaluator.candidate(plan):
        return evaluator.module(x).float()


def _random_set(n: int, shape, seed: int) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g), "random")


CASES = [("cifar_resnet20", (3, 32, 32), "ps"), ("mobilenet_v2", (3, 48, 48), "ps"), ("cifar_resnet20", (3, 32, 32), "d,ps")]


@pytest.mark.parametrize("name,shape,methods", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_sliced_candidates_predict_what_substitution_predicts(name, shape, methods):
    module = randomise_batchnorm(build(name), seed=3)
    data, calibration = _random_set(24, shape, 1), _random_set(32, shape, 2)
    sliced, reference, space, rng = _evaluators(module, shape, data, calibration, methods)
    assert sliced.slicer is not None and sliced.slicer.sliced_groups
    for _ in range(3):
        plan = space.decode(rng.random(space.dim) * 0.7)
        assert sliced.slicer.slices(plan)
        if methods != "ps":
            assert plan.active_decompositions
        got, expected = _logits(sliced, plan, data.x), _logits(reference, plan, data.x)
        assert torch.equal(got.argmax(1), expected.argmax(1))
        assert float((got - expected).abs().max()) <= 1e-4 * float(expected.abs().max())
    plans = [space.decode(rng.random(space.dim) * 0.7) for _ in range(3)]
    assert np.array_equal(sliced.accuracy(plans), reference.accuracy(plans))


def test_mobilenet_depthwise_groups_are_sliced_and_the_module_is_restored():
    module = randomise_batchnorm(build("mobilenet_v2"), seed=4)
    shape = (3, 48, 48)
    data, calibration = _random_set(8, shape, 1), _random_set(16, shape, 2)
    sliced, _, space, rng = _evaluators(module, shape, data, calibration)
    assert not sliced.slicer.zeroed_groups  # every group of MobileNetV2, depthwise ones included
    before = {k: (v, v.clone()) for k, v in module.state_dict(keep_vars=True).items()}
    groups_before = {n: m.groups for n, m in module.named_modules() if isinstance(m, torch.nn.Conv2d)}
    plan = space.decode(np.full(space.dim, 0.5))
    with sliced.candidate(plan):
        shrunk = [n for n, m in module.named_modules() if isinstance(m, torch.nn.Conv2d) and m.groups != groups_before[n]]
        assert shrunk  # depthwise convolutions run with the kept channel count
        assert module.features[1].conv[0][0].weight.shape[0] < before["features.1.conv.0.0.weight"][1].shape[0]
        sliced._screened_pass(len(data.y), sliced._correct)  # the sliced module runs a whole pass
    after = module.state_dict(keep_vars=True)
    for k, (tensor, value) in before.items():
        assert after[k] is tensor and torch.equal(tensor, value), k  # the same objects, unchanged
    assert {n: m.groups for n, m in module.named_modules() if isinstance(m, torch.nn.Conv2d)} == groups_before


def test_groups_whose_channel_count_the_code_spells_stay_zeroed():
    """The CIFAR ResNet shortcut pads by planes // 4 channels: its stream groups are zeroed, with the reason."""
    module = randomise_batchnorm(build("cifar_resnet20"), seed=5)
    sliced, _, _, _ = _evaluators(module, (3, 32, 32), _random_set(8, (3, 32, 32), 1), None)
    zeroed = sliced.slicer.zeroed_groups
    assert zeroed and any("Pad" in why for why in zeroed.values())
    assert not set(zeroed) & sliced.slicer.sliced_groups
    assert len(zeroed) + len(sliced.slicer.sliced_groups) == len(sliced.transform.analysis.prunable_groups)
    assert any("physically smaller" in note for note in sliced.notes)


def test_a_group_whose_slicing_changes_the_logits_is_zeroed():
    """The check at construction catches what the graph cannot show: here a reference that disagrees."""
    module = randomise_batchnorm(build("cifar_resnet20"), seed=6)
    shape = (3, 32, 32)
    exported = export_and_analyse(module, shape)
    analysis = exported.analysis
    transform = PlanTransform(analysis, original_weights(module, analysis))
    evaluator = SubstitutionEvaluator(module, _random_set(8, shape, 1), transform)
    victim = "layer1.0.conv1"

    from adans_toolchain.evaluation.slicing import ChannelSlicer

    slicer = ChannelSlicer(module, analysis)
    assert victim in slicer.sliced_groups

    def disagreeing(plan, x):
        logits = evaluator._substituted_logits(plan, x)
        return logits + 1.0 if plan.pruning_for(victim) and plan.pruning_for(victim).removed else logits

    slicer.verify(disagreeing, evaluator._full_values, evaluator.x)
    assert victim not in slicer.sliced_groups and "changed the logits" in slicer.zeroed_groups[victim]
    assert slicer.sliced_groups  # the others still pass


def test_sliced_decisions_equal_substitution_on_the_bundled_resnet(example_paths):
    """Real weights and images, exact early rejection: every plan gets the same accuracy, images and verdict."""
    loaded = load_model(example_paths["model"], "cifar_resnet20")
    val = load_image_set(example_paths["val"], Preprocessing(), limit=120)
    calibration = load_image_set(example_paths["val"], Preprocessing(), limit=64)
    sliced, reference, space, rng = _evaluators(loaded.module, (3, 32, 32), val, calibration)
    for evaluator in (sliced, reference):
        evaluator.early_rejection = EarlyRejection(70.0)
    points = rng.random((10, space.dim)) * rng.uniform(0.0, 0.5, (10, 1))
    plans = space.decode_batch(points)
    assert np.array_equal(sliced.screen(plans), reference.screen(plans))
