"""Numerical validation: the lowered ONNX model must reproduce the substituted PyTorch model.

Pruned channels cannot reach the output of the substituted model, and the
lowered model lacks them, so both compute the same function up to
floating-point summation order. A larger difference is a lowering bug
(a mis-sliced weight, a wrong pad), and it is an error, not a warning.

The allowed difference is relative to the output magnitude (the largest
|logit|) with an absolute floor. A relative tolerance alone fails models
whose logits are all nearly zero (torchvision's EfficientNet with random
weights: |logit| ~ 1e-13), where summation-order noise is a large fraction
of nothing. Logits are log-probabilities, so a difference below the floor
changes no class probability by more than about 1e-5 (exp(1e-5) ~ 1 + 1e-5):
it cannot matter to a user, whatever the logits' size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from adans_toolchain.errors import ValidationError
from adans_toolchain.runtime.sessions import run_onnx

# Relative to the largest |logit|: fp32 summation-order noise is ~1e-6 of it.
DEFAULT_TOLERANCE = 1e-4
# In logit units; see the module docstring.
ABSOLUTE_FLOOR = 1e-5


@dataclass(frozen=True)
class ValidationResult:
    max_abs_diff: float
    # What the tolerance is relative to: the largest |logit|, but at least
    # absolute_floor / tolerance, so that `relative_diff <= tolerance` is the
    # whole test (as consumers of report.json check it).
    output_scale: float
    relative_diff: float
    tolerance: float
    top1_agreement: float
    images: int
    reference: str = "parameter-substituted PyTorch model"
    largest_logit: float = 0.0
    absolute_floor: float = ABSOLUTE_FLOOR

    @property
    def allowed_diff(self) -> float:
        return self.tolerance * self.output_scale

    @property
    def passed(self) -> bool:
        return self.relative_diff <= self.tolerance  # False for NaN, as it must be

    def as_dict(self) -> dict:
        return dict(self.__dict__, runtime="ONNX Runtime CPU")


def compare_outputs(
    onnx_logits: np.ndarray, reference: np.ndarray, tolerance: float, what: str, *, absolute_floor: float = ABSOLUTE_FLOOR
) -> ValidationResult:
    diff = float(np.max(np.abs(onnx_logits - reference)))
    largest = float(np.max(np.abs(reference)))
    scale = max(largest, absolute_floor / tolerance)
    agreement = float(np.mean(onnx_logits.argmax(1) == reference.argmax(1)))
    return ValidationResult(diff, scale, diff / scale, tolerance, agreement, len(reference), what, largest, absolute_floor)


def validate_lowered(
    lowered: onnx.ModelProto,
    reference_logits: np.ndarray,
    x: np.ndarray,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    absolute_floor: float = ABSOLUTE_FLOOR,
    threads: int = 1,
    reference: str = "parameter-substituted PyTorch model",
) -> ValidationResult:
    result = compare_outputs(run_onnx(lowered, x, threads), reference_logits, tolerance, reference, absolute_floor=absolute_floor)
    if not result.passed:
        raise ValidationError(
            f"the lowered model differs from the {reference} by {result.max_abs_diff:.3g} in a logit "
            f"(allowed: {tolerance:.0e} of the largest |logit| {result.largest_logit:.3g}, at least {absolute_floor:.0e}); "
            "this is a lowering bug: please report it with --debug output"
        )
    return result
