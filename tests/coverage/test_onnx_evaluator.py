"""OnnxEvaluator computes what SubstitutionEvaluator computes, plan for plan.

Both get the same PlanTransform; the ONNX one substitutes initializers in
ONNX Runtime, the PyTorch one substitutes parameters. Channel pruning,
decomposition and unstructured pruning, with and without BatchNorm
re-estimation, must agree to float32 rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adans_toolchain.evaluation.substitution import SubstitutionEvaluator, original_weights
from adans_toolchain.frontend.data import ImageSet
from adans_toolchain.evaluation.onnx_runtime import OnnxEvaluator
from adans_toolchain.plan.sites import layer_sites
from adans_toolchain.plan.space import CompressionSpace
from adans_toolchain.transforms.plan_transform import PlanTransform
from tests.conftest import randomise_batchnorm
from tests.helpers import build, export_and_analyse


def _pair(name: str, shape, methods, *, calibration: int = 10, batch_size: int = 4):
    exported = export_and_analyse(randomise_batchnorm(build(name), seed=1), shape)
    analysis = exported.analysis
    g = torch.Generator().manual_seed(2)
    x = torch.randn(12, *shape, generator=g)
    classes = analysis.graph.shapes[analysis.graph.output_names[0]][-1]
    data = ImageSet(x, torch.randint(0, classes, (12,), generator=g), "val")
    cal = ImageSet(x[:calibration], torch.zeros(calibration, dtype=torch.long), "cal") if calibration else None
    transform = PlanTransform(analysis, original_weights(exported.module, analysis))
    torch_eval = SubstitutionEvaluator(exported.module, data, transform, batch_size=batch_size, calibration=cal)
    onnx_eval = OnnxEvaluator(exported.onnx_model, data, transform, batch_size=batch_size, calibration=cal)
    rng = np.random.default_rng(3)
    space = CompressionSpace.from_priorities(
        analysis.prunable_groups, {grp.id: rng.random(grp.size) for grp in analysis.prunable_groups},
        extra_sites=layer_sites(analysis, methods),
    )
    return exported, data, torch_eval, onnx_eval, space, rng


def _close(a: np.ndarray, b: np.ndarray, tol: float = 1e-4) -> bool:
    return float(np.abs(a - b).max()) <= tol * max(float(np.abs(a).max()), 1e-6)


@pytest.mark.parametrize("name,shape,methods", [
    ("cifar_resnet20", (3, 32, 32), ("ps", "svd", "tucker")),
    ("mobilenet_v3_small", (3, 64, 64), ("ps",)),
], ids=["cifar_resnet20", "mobilenet_v3_small"])
def test_logits_and_batchnorm_statistics_match_pytorch(name, shape, methods):
    exported, data, torch_eval, onnx_eval, space, rng = _pair(name, shape, methods)
    identity = space.decode(np.zeros(space.dim))
    assert not onnx_eval.recalibrates(identity) and onnx_eval.batchnorm_statistics(identity) == {}
    for k in range(3):
        plan = space.decode(rng.random(space.dim) * 0.8)
        assert onnx_eval.recalibrates(plan) == torch_eval.recalibrates(plan) is True
        ours, theirs = onnx_eval.batchnorm_statistics(plan), torch_eval.batchnorm_statistics(plan)
        assert set(ours) == set(theirs) and ours
        for key in ours:
            assert ours[key].shape == theirs[key].shape and _close(ours[key], theirs[key]), key
        assert _close(onnx_eval.logits(plan, data.x), torch_eval.logits(plan, data.x)), f"plan {k}"
        without_ours = onnx_eval.accuracy_on(plan, data, recalibrate=False)
        assert without_ours == torch_eval.accuracy_on(plan, data, recalibrate=False)
    plans = [space.decode(rng.random(space.dim) * 0.5) for _ in range(3)]
    assert np.array_equal(onnx_eval.accuracy(plans), torch_eval.accuracy(plans))
    assert onnx_eval.evaluations == 3


def test_unequal_batches_weigh_equally_as_in_pytorch():
    # 10 calibration images in batches of 4: split 4 + 3 + 3, every batch weighs one third.
    _, data, torch_eval, onnx_eval, space, rng = _pair("cifar_resnet20", (3, 32, 32), ("ps",), calibration=10, batch_size=4)
    plan = space.decode(rng.random(space.dim) * 0.6)
    ours, theirs = onnx_eval.batchnorm_statistics(plan), torch_eval.batchnorm_statistics(plan)
    assert all(_close(ours[k], theirs[k]) for k in ours)


def test_substitution_leaves_the_session_defaults_untouched():
    _, data, _, onnx_eval, space, rng = _pair("cifar_resnet20", (3, 32, 32), ("ps",), calibration=0)
    identity = space.decode(np.zeros(space.dim))
    before = onnx_eval.logits(identity, data.x)
    onnx_eval.logits(space.decode(rng.random(space.dim)), data.x)
    assert np.array_equal(onnx_eval.logits(identity, data.x), before)
    # Only what a plan changes is fed.
    plan = space.decode(rng.random(space.dim) * 0.5)
    fed = onnx_eval._feeds(plan)
    assert fed and set(fed) <= onnx_eval.substitutable


def test_priorities_are_l1_norms_with_a_note():
    exported, _, torch_eval, onnx_eval, _, _ = _pair("cifar_resnet20", (3, 32, 32), ("ps",), calibration=0)
    groups = exported.analysis.prunable_groups
    ours = onnx_eval.priorities(exported.analysis, groups, "taylor")
    assert any("L1 weight norm" in n and "no gradients" in n for n in onnx_eval.notes)
    theirs = torch_eval.priorities(exported.analysis, groups, "l1")
    assert set(ours) == {g.id for g in groups}
    assert all(np.allclose(ours[g], theirs[g]) for g in ours)
    with pytest.raises(ValueError, match="unknown priority"):
        onnx_eval.priorities(exported.analysis, groups, "random")


def test_no_batchnorm_means_nothing_to_reestimate():
    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4),
    )
    exported = export_and_analyse(module, (3, 16, 16))
    x = torch.randn(4, 3, 16, 16)
    data = ImageSet(x, torch.zeros(4, dtype=torch.long), "val")
    transform = PlanTransform(exported.analysis, original_weights(exported.module, exported.analysis))
    evaluator = OnnxEvaluator(exported.onnx_model, data, transform, calibration=data)
    space = CompressionSpace.from_priorities(exported.analysis.prunable_groups, {g.id: np.arange(g.size, dtype=float) for g in exported.analysis.prunable_groups})
    plan = space.decode(np.full(space.dim, 0.5))
    assert not plan.is_identity
    assert not evaluator.recalibrates(plan) and evaluator.batchnorm_statistics(plan) == {}
    assert any("no BatchNormalization" in n for n in evaluator.notes)
    torch_eval = SubstitutionEvaluator(module, data, transform)
    assert _close(evaluator.logits(plan, x), torch_eval.logits(plan, x))
