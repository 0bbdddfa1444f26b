"""Issue 16: DenseNet-121 with BatchNorm re-estimated on 4 images at 32 pixels, lowered at about 1 % of the channels.

Its last dense block sees one value per image and channel, so the
re-estimated statistics make the plan's function ill-conditioned: on the
development machine the substituted PyTorch model differed from its own
float64 evaluation by 1.6e-4 of the largest |logit|, the lowered model
(ONNX Runtime, BatchNorm folded) from float64 by 3.5e-5, and the two from
each other by 1.9e-4, beyond the plain 1e-4 tolerance that used to refuse
it as a lowering bug. Validation now measures the reference's float32 error
and allows a multiple of it (lowering/validate.py); a real lowering bug on
the same plan must still fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import adans_toolchain.lowering.prune_channels as prune_channels
from adans_toolchain.errors import ValidationError
from adans_toolchain.evaluation.substitution import SubstitutionEvaluator, original_weights
from adans_toolchain.frontend.data import ImageSet
from adans_toolchain.lowering.emit import lower_plan
from adans_toolchain.lowering.validate import FLOAT32_ERROR_FACTOR
from adans_toolchain.plan.space import CompressionSpace
from adans_toolchain.transforms.plan_transform import PlanTransform
from tests.conftest import randomise_batchnorm
from tests.helpers import build, export_and_analyse


@pytest.fixture(scope="module")
def densenet_at_one_percent():
    torch.manual_seed(0)
    shape = (3, 32, 32)
    exported = export_and_analyse(randomise_batchnorm(build("densenet121"), seed=1), shape)
    analysis = exported.analysis
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(2))
    data = ImageSet(x, torch.zeros(4, dtype=torch.long), "random")
    transform = PlanTransform(analysis, original_weights(exported.module, analysis))
    evaluator = SubstitutionEvaluator(exported.module, data, transform, calibration=data)
    rng = np.random.default_rng(3)
    space = CompressionSpace.from_priorities(analysis.prunable_groups, {g.id: rng.random(g.size) for g in analysis.prunable_groups})
    plan = space.decode(np.full(space.dim, 0.99))
    return exported, transform, evaluator, plan, x


def test_the_extreme_densenet_plan_validates(densenet_at_one_percent):
    exported, transform, evaluator, plan, x = densenet_at_one_percent
    torch.set_num_threads(1)
    emitted = lower_plan(exported.onnx_model, exported.analysis, plan, transform, evaluator, x, threads=1)
    v = emitted.validation
    assert v.passed
    if v.float32_error is not None:  # the plain tolerance did not hold (it did not on the development machine)
        assert v.allowed_diff == pytest.approx(FLOAT32_ERROR_FACTOR * v.float32_error)
        assert v.float32_error < 1e-3 * v.largest_logit


def test_a_planted_lowering_bug_on_the_same_plan_still_fails(densenet_at_one_percent, monkeypatch):
    exported, transform, evaluator, plan, x = densenet_at_one_percent
    torch.set_num_threads(1)
    correct = prune_channels.kept_channels

    def off_by_one(analysis, plan, only=None):  # every pruned tensor keeps its neighbouring channels instead
        return {t: np.unique((k + 1) % analysis.channel_tensors[t]) for t, k in correct(analysis, plan, only).items()}

    monkeypatch.setattr(prune_channels, "kept_channels", off_by_one)
    with pytest.raises(ValidationError, match="this is a lowering bug"):
        lower_plan(exported.onnx_model, exported.analysis, plan, transform, evaluator, x, threads=1)
