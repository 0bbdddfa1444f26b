"""One conformance suite over every Evaluator: PyTorch substitution and ONNX Runtime.

Both are built by `make_evaluator` from the same exported model and
PlanTransform, so they must agree with the model they evaluate and with
each other.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adans_toolchain.evaluation.base import Evaluator, make_evaluator
from adans_toolchain.evaluation.onnx_runtime import OnnxEvaluator
from adans_toolchain.evaluation.substitution import SubstitutionEvaluator, original_weights
from adans_toolchain.frontend.data import ImageSet
from adans_toolchain.frontend.onnx_model import OnnxModel
from adans_toolchain.plan import Plan
from adans_toolchain.plan.space import CompressionSpace
from adans_toolchain.runtime.sessions import run_onnx
from adans_toolchain.transforms.plan_transform import PlanTransform
from tests.conftest import randomise_batchnorm
from tests.helpers import build, export_and_analyse

KINDS = ["pytorch", "onnx"]


@pytest.fixture(scope="module")
def setup():
    exported = export_and_analyse(randomise_batchnorm(build("cifar_resnet20"), seed=1), (3, 32, 32))
    g = torch.Generator().manual_seed(5)
    x = torch.randn(24, 3, 32, 32, generator=g)
    with torch.no_grad():
        predicted = exported.module(x).argmax(1)
    # Half the labels agree with the model, so top-1 is neither 0 nor 100.
    y = torch.where(torch.arange(24) < 12, predicted, torch.randint(0, 10, (24,), generator=g))
    data = ImageSet(x, y, "val")
    cal = ImageSet(x[:16], torch.zeros(16, dtype=torch.long), "cal")
    analysis = exported.analysis
    transform = PlanTransform(analysis, original_weights(exported.module, analysis))
    models = {"pytorch": exported.module, "onnx": OnnxModel(exported.onnx_model)}
    evaluators = {
        kind: make_evaluator(models[kind], data, transform, batch_size=8, calibration=cal, precision="fp32")
        for kind in KINDS
    }
    space = CompressionSpace.from_priorities(
        analysis.prunable_groups, {grp.id: np.arange(grp.size, dtype=float) for grp in analysis.prunable_groups}
    )
    return exported, data, evaluators, space


def _model_top1(exported, kind: str, data: ImageSet) -> float:
    """Top-1 of the unmodified model, run directly (not through an evaluator)."""
    if kind == "pytorch":
        with torch.no_grad():
            logits = exported.module(data.x).numpy()
    else:
        logits = run_onnx(exported.onnx_model, data.x.numpy(), threads=1, batch_size=8)
    return float(100.0 * np.mean(logits.argmax(1) == data.y.numpy()))


def test_the_factory_picks_the_evaluator_for_the_model(setup):
    _, _, evaluators, _ = setup
    assert type(evaluators["pytorch"]) is SubstitutionEvaluator and evaluators["pytorch"].distributable
    assert type(evaluators["onnx"]) is OnnxEvaluator and not evaluators["onnx"].distributable
    assert all(isinstance(e, Evaluator) for e in evaluators.values())
    assert all(e.precision == "fp32" for e in evaluators.values())


@pytest.mark.parametrize("kind", KINDS)
def test_identity_plan_scores_what_the_model_scores(setup, kind):
    exported, data, evaluators, _ = setup
    evaluator = evaluators[kind]
    expected = _model_top1(exported, kind, data)
    assert 0 < expected < 100
    assert float(evaluator.accuracy([Plan(())])[0]) == expected
    assert evaluator.accuracy_on(Plan(()), data) == expected
    assert not evaluator.recalibrates(Plan(())) and evaluator.batchnorm_statistics(Plan(())) == {}


@pytest.mark.parametrize("kind", KINDS)
def test_evaluations_count_accuracy_calls_only(setup, kind):
    _, data, evaluators, space = setup
    evaluator = evaluators[kind]
    before = evaluator.evaluations
    plans = [space.decode(np.full(space.dim, f)) for f in (0.1, 0.3, 0.5)]
    assert evaluator.accuracy(plans).shape == (3,)
    assert evaluator.evaluations == before + 3
    evaluator.accuracy_on(plans[0], data)
    evaluator.logits(plans[0], data.x[:2])
    assert evaluator.evaluations == before + 3


@pytest.mark.parametrize("kind", KINDS)
def test_a_plan_leaves_the_model_as_it_was(setup, kind):
    _, data, evaluators, space = setup
    evaluator = evaluators[kind]
    before = evaluator.logits(Plan(()), data.x)
    pruned = space.decode(np.full(space.dim, 0.5))
    assert evaluator.recalibrates(pruned) and evaluator.batchnorm_statistics(pruned)
    changed = evaluator.logits(pruned, data.x)
    assert changed.dtype == np.float32 and changed.shape == before.shape
    assert not np.array_equal(changed, before)
    assert np.array_equal(evaluator.logits(Plan(()), data.x), before)


def test_pruned_plans_score_the_same_on_both_evaluators(setup):
    _, data, evaluators, space = setup
    plans = [space.decode(np.full(space.dim, f)) for f in (0.2, 0.4, 0.6)]
    ours, theirs = evaluators["onnx"].accuracy(plans), evaluators["pytorch"].accuracy(plans)
    one_image = 100.0 / len(data)
    assert np.abs(ours - theirs).max() <= one_image + 1e-9
    for recalibrate in (False, True):
        a = evaluators["onnx"].accuracy_on(plans[1], data, recalibrate=recalibrate)
        b = evaluators["pytorch"].accuracy_on(plans[1], data, recalibrate=recalibrate)
        assert abs(a - b) <= one_image + 1e-9


@pytest.mark.parametrize("kind", KINDS)
def test_l1_priorities_cover_every_group(setup, kind):
    exported, _, evaluators, _ = setup
    groups = exported.analysis.prunable_groups
    priorities = evaluators[kind].priorities(exported.analysis, groups, "l1")
    assert set(priorities) == {g.id for g in groups}
    assert all(priorities[g.id].shape == (g.size,) for g in groups)
    with pytest.raises(ValueError, match="unknown priority"):
        evaluators[kind].priorities(exported.analysis, groups, "random")


def test_an_evaluator_must_implement_the_hooks():
    class Partial(Evaluator):
        def logits(self, plan, x):
            return np.zeros(0)

    with pytest.raises(TypeError, match="abstract"):
        Partial(None, batch_size=1)
