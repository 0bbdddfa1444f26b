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
from adans_toolchain.lowering.validate import ABSOLUTE_FLOOR, DEFAULT_TOLERANCE, compare_outputs, validate_lowered
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
