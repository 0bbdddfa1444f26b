"""Numerical validation: the lowered ONNX model must reproduce the substituted PyTorch model.

Pruned channels cannot reach the output of the substituted model, and the
lowered model lacks them, so both compute the same function up to
floating-point summation order. A larger difference is a lowering bug
(a mis-sliced weight, a wrong pad), and it is an error, not a warning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from adans_toolchain.errors import ValidationError
from adans_toolchain.runtime.sessions import run_onnx

# Relative to the largest |logit|: fp32 summation-order noise is ~1e-6.
DEFAULT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ValidationResult:
    max_abs_diff: float
    output_scale: float
    relative_diff: float
    tolerance: float
    top1_agreement: float
    images: int
    reference: str = "parameter-substituted PyTorch model"

    def as_dict(self) -> dict:
        return dict(self.__dict__, runtime="ONNX Runtime CPU")


def compare_outputs(onnx_logits: np.ndarray, reference: np.ndarray, tolerance: float, what: str) -> ValidationResult:
    diff = float(np.max(np.abs(onnx_logits - reference)))
    scale = float(max(np.max(np.abs(reference)), 1e-12))
    agreement = float(np.mean(onnx_logits.argmax(1) == reference.argmax(1)))
    return ValidationResult(diff, scale, diff / scale, tolerance, agreement, len(reference), what)


def validate_lowered(
    lowered: onnx.ModelProto,
    reference_logits: np.ndarray,
    x: np.ndarray,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    threads: int = 1,
    reference: str = "parameter-substituted PyTorch model",
) -> ValidationResult:
    result = compare_outputs(run_onnx(lowered, x, threads), reference_logits, tolerance, reference)
    if not result.relative_diff <= tolerance:
        raise ValidationError(
            f"the lowered model differs from the {reference} by {result.max_abs_diff:.3g} "
            f"({result.relative_diff:.2e} of the output scale, tolerance {tolerance:.0e}); "
            "this is a lowering bug: please report it with --debug output"
        )
    return result
