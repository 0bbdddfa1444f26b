"""Numerical validation: relative to the largest |logit|, with an absolute floor (issue 16).

A correct lowering of a model whose logits are all nearly zero passes (the
floor decides there); a real mismatch (a perturbed weight) is still refused.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

from adans_toolchain.errors import ValidationError
from adans_toolchain.frontend.export import export_onnx
from adans_toolchain.lowering.prune_channels import set_initializers
from adans_toolchain.lowering.validate import (
    ABSOLUTE_FLOOR, DEFAULT_TOLERANCE, FLOAT32_ERROR_FACTOR, compare_outputs, validate_lowered,
)
from tests.conftest import randomise_batchnorm
from tests.helpers import build

IMAGE_SHAPE = (3, 8, 8)


def near_zero_logits_model() -> nn.Module:
    """Activations of about 10 inside, logits of about 1e-4 out: the classifier's bias cancels the features' offset.

    ONNX Runtime and PyTorch sum the ~10-sized features in different orders,
    so their logits differ by ~1e-6: a large fraction of the logits
    themselves, and far below anything that could change a prediction.
    """
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )
    with torch.no_grad():
        model[0].bias.fill_(10.0)
        model[0].weight.mul_(1e-3)
        features = model[:-1](torch.zeros(1, *IMAGE_SHAPE))[0]
        model[-1].bias.copy_(-(model[-1].weight @ features))
    return model.eval()


def images(count: int = 16) -> torch.Tensor:
    return torch.randn(count, *IMAGE_SHAPE, generator=torch.Generator().manual_seed(0))


def perturbed(model, name: str, factor: float):
    """The ONNX model with one weight scaled: what a mis-sliced or mis-factorised weight looks like."""
    weight = next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == name)
    return set_initializers(model, {name: weight * factor})


def reference_logits(module: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return module(x).numpy()


def test_correct_lowering_of_near_zero_logits_passes():
    module = near_zero_logits_model()
    x = images()
    reference = reference_logits(module, x)
    result = validate_lowered(export_onnx(module, IMAGE_SHAPE), reference, x.numpy())
    # The logits are so small that only the absolute floor can accept fp32 noise on them.
    assert result.largest_logit < 1e-3
    assert result.output_scale == pytest.approx(ABSOLUTE_FLOOR / DEFAULT_TOLERANCE)
    assert result.passed and result.max_abs_diff <= ABSOLUTE_FLOOR


def test_perturbed_classifier_of_near_zero_logits_is_refused():
    module = near_zero_logits_model()
    x = images()
    wrong = perturbed(export_onnx(module, IMAGE_SHAPE), "6.weight", 1.01)
    with pytest.raises(ValidationError, match="lowering bug"):
        validate_lowered(wrong, reference_logits(module, x), x.numpy())


def test_perturbed_conv_weight_is_refused_at_ordinary_logit_scale():
    module = randomise_batchnorm(build("cifar_resnet20"))
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    reference = reference_logits(module, x)
    model = export_onnx(module, (3, 32, 32))
    assert validate_lowered(model, reference, x.numpy()).passed
    with pytest.raises(ValidationError, match=r"differs from the parameter-substituted PyTorch model by .* in a logit"):
        validate_lowered(perturbed(model, "layer2.1.conv1.weight", 1.01), reference, x.numpy())


def test_tolerance_is_relative_to_the_largest_logit_above_the_floor():
    reference = np.full((4, 10), 3.0, np.float32)
    reference[:, 0] = -5.0
    assert compare_outputs(reference + 4e-4, reference, DEFAULT_TOLERANCE, "ref").passed  # 0.8e-4 of 5
    refused = compare_outputs(reference + 6e-4, reference, DEFAULT_TOLERANCE, "ref")
    assert not refused.passed and refused.output_scale == 5.0


def test_the_efficientnet_case_of_issue_16_passes_and_nan_fails():
    # Logits of ~2.7e-8 differing by 3e-8 were refused as "1.12 of the output scale".
    reference = np.full((2, 10), 2.66e-8, np.float32)
    assert compare_outputs(reference + 2.98e-8, reference, DEFAULT_TOLERANCE, "ref").passed
    assert not compare_outputs(reference + 2 * ABSOLUTE_FLOOR, reference, DEFAULT_TOLERANCE, "ref").passed
    assert not compare_outputs(np.full_like(reference, np.nan), reference, DEFAULT_TOLERANCE, "ref").passed


# -- float32 conditioning (issue 16: DenseNet-121 with re-estimated BatchNorm) ------------------------------


def ill_conditioned_model(offset: float) -> nn.Module:
    """Features of about `offset` that a BatchNorm shifts back to about 1: float32 rounds them at offset's scale.

    PyTorch rounds the convolution's output (~offset) before the BatchNorm
    subtracts its mean; ONNX Runtime folds the BatchNorm into the weights and
    never forms it. The function is the same, the two float32 evaluations of
    it are not: the reference's own rounding error is many times the plain
    tolerance, as with BatchNorm statistics estimated on few values.
    """
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 64, 10))
    with torch.no_grad():
        model[0].bias.fill_(offset)
        model[1].running_mean.fill_(offset)
        model[1].running_var.fill_(0.05)
    return model.eval()


def float64_of(module: nn.Module, x: torch.Tensor):
    import copy

    def logits(n: int) -> np.ndarray:
        with torch.no_grad():
            return copy.deepcopy(module).double()(x[:n].double()).numpy()

    return logits


def test_correct_lowering_of_an_ill_conditioned_function_passes_on_its_measured_float32_error():
    module = ill_conditioned_model(1e3)
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    reference = reference_logits(module, x)
    model = export_onnx(module, (3, 8, 8))
    # The plain tolerance refuses it: two correct float32 evaluations differ by more than 1e-4 of the logits.
    with pytest.raises(ValidationError, match="lowering bug"):
        validate_lowered(model, reference, x.numpy())
    result = validate_lowered(model, reference, x.numpy(), float64_reference=float64_of(module, x))
    assert result.passed and result.float32_error is not None and result.float32_error_images == 8
    assert result.max_abs_diff > DEFAULT_TOLERANCE * result.largest_logit  # the case the plain tolerance cannot take
    assert result.allowed_diff == pytest.approx(FLOAT32_ERROR_FACTOR * result.float32_error)
    assert result.as_dict()["float32_error"] == result.float32_error


def test_a_wrong_lowering_of_an_ill_conditioned_function_still_fails():
    module = ill_conditioned_model(1e3)
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    reference = reference_logits(module, x)
    wrong = perturbed(export_onnx(module, (3, 8, 8)), "4.weight", 1.01)  # a 1 % error, as a mis-folded weight makes
    with pytest.raises(ValidationError, match=r"own float32 error .* this is a lowering bug"):
        validate_lowered(wrong, reference, x.numpy(), float64_reference=float64_of(module, x))


def test_a_reference_dominated_by_rounding_is_refused_as_ill_conditioned():
    module = ill_conditioned_model(1e4)  # float32 error ~3e-3 of the largest logit
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValidationError, match="numerically ill-conditioned"):
        validate_lowered(export_onnx(module, (3, 8, 8)), reference_logits(module, x), x.numpy(),
                         float64_reference=float64_of(module, x))


def test_the_float64_reference_is_asked_for_only_when_the_plain_tolerance_fails():
    module = randomise_batchnorm(build("cifar_resnet20"))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    asked = []
    result = validate_lowered(export_onnx(module, (3, 32, 32)), reference_logits(module, x), x.numpy(),
                              float64_reference=lambda n: asked.append(n))
    assert result.passed and result.float32_error is None and asked == []


def test_both_evaluators_give_a_float64_reference_of_the_substituted_model():
    from adans_toolchain.analysis.channels import analyse_channels
    from adans_toolchain.analysis.graph import Graph
    from adans_toolchain.evaluation.onnx_runtime import OnnxEvaluator
    from adans_toolchain.evaluation.substitution import SubstitutionEvaluator, original_weights
    from adans_toolchain.frontend.data import ImageSet
    from adans_toolchain.plan.space import CompressionSpace
    from adans_toolchain.transforms.plan_transform import PlanTransform

    module = randomise_batchnorm(build("cifar_resnet20"))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model = export_onnx(module, (3, 32, 32))
    analysis = analyse_channels(Graph.from_model(model, (3, 32, 32)))
    data = ImageSet(x, torch.zeros(4, dtype=torch.long), "random")
    space = CompressionSpace.from_priorities(analysis.prunable_groups, {g.id: np.arange(g.size, dtype=float) for g in analysis.prunable_groups})
    plan = space.decode(np.full(space.dim, 0.5))
    torch_side = SubstitutionEvaluator(module, data, PlanTransform(analysis, original_weights(module, analysis)), calibration=data)
    onnx_side = OnnxEvaluator(model, data, PlanTransform(analysis, dict(analysis.graph.initializers)), calibration=data)
    reference = torch_side.logits(plan, x)
    for evaluator in (torch_side, onnx_side):
        exact = evaluator.float64_logits(plan, x[:2])
        assert exact.dtype == np.float64 and exact.shape == (2, reference.shape[1])
        assert np.abs(exact - reference[:2]).max() <= 1e-5 * np.abs(reference).max()  # the same function
