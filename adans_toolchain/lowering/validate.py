"""Numerical validation: the lowered ONNX model must reproduce the substituted PyTorch model.

Pruned channels cannot reach the output of the substituted model, and the
lowered model lacks them, so both compute the same function up to
floating-point rounding. A larger difference is a lowering bug (a
mis-sliced weight, a wrong pad), and it is an error, not a warning.

The allowed difference is relative to the output magnitude (the largest
|logit|) with an absolute floor. A relative tolerance alone fails models
whose logits are all nearly zero (torchvision's EfficientNet with random
weights: |logit| ~ 1e-13), where summation-order noise is a large fraction
of nothing. Logits are log-probabilities, so a difference below the floor
changes no class probability by more than about 1e-5 (exp(1e-5) ~ 1 + 1e-5):
it cannot matter to a user, whatever the logits' size.

How much rounding moves the logits depends on the function, not only on
float32 (issue 16). BatchNorm statistics estimated on few values (a few
images at a small input: DenseNet-121's last block at 32 pixels sees one
value per image and channel) can hold variances far below the spread of
their inputs' magnitudes; each such layer scales the relative rounding error
of its input up, and a deep stack of them compounds it. The
parameter-substituted model (the reference) then differs from its own
float64 evaluation by more than 1e-4 of the largest |logit|, and two correct
float32 implementations (PyTorch; ONNX Runtime with BatchNorm folded into
the weights) differ from each other by as much. So when the plain
tolerance is exceeded, the reference is evaluated again in float64 (the same
float32 parameters and statistics, exact arithmetic) on a few images: its
distance from that is the rounding error float32 makes on *this* function,
and the lowered model may differ from the reference by at most
FLOAT32_ERROR_FACTOR times it. A lowering bug changes the function, which
no precision removes, so it still fails: its difference is of the order of
the logits, not of rounding. A reference whose own float32 error exceeds
MAX_FLOAT32_ERROR of the largest |logit| validates nothing: that plan is
refused as numerically ill-conditioned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

from adans_toolchain.errors import ValidationError
from adans_toolchain.runtime.sessions import run_onnx

# Relative to the largest |logit|: fp32 summation-order noise is ~1e-6 of it.
DEFAULT_TOLERANCE = 1e-4
# In logit units; see the module docstring.
ABSOLUTE_FLOOR = 1e-5
# The lowered model may differ from the reference by this many times the reference's own float32 error.
# Two correct float32 evaluations of ill-conditioned DenseNet-121 plans differed by 0.3-3.3 times it.
FLOAT32_ERROR_FACTOR = 10.0
# A reference whose float32 error exceeds this share of the largest |logit| cannot validate anything.
MAX_FLOAT32_ERROR = 1e-3
# Images the reference is evaluated on in float64 (only when the plain tolerance is exceeded).
FLOAT64_IMAGES = 8


@dataclass(frozen=True)
class ValidationResult:
    max_abs_diff: float
    # What the tolerance is relative to: the largest |logit|, but at least
    # absolute_floor / tolerance and FLOAT32_ERROR_FACTOR * float32_error / tolerance (int8: the
    # allowance for ONNX Runtime's own rounding noise / tolerance), so that `relative_diff <= tolerance`
    # is the whole test (as consumers of report.json check it).
    output_scale: float
    relative_diff: float
    tolerance: float
    top1_agreement: float
    images: int
    reference: str = "parameter-substituted PyTorch model"
    largest_logit: float = 0.0
    absolute_floor: float = ABSOLUTE_FLOOR
    # Max |reference in float32 - the same reference in float64| over float32_error_images images: the
    # rounding error float32 makes on this function. None where not measured (the plain tolerance held).
    float32_error: float | None = None
    float32_error_images: int = 0
    float32_error_factor: float = FLOAT32_ERROR_FACTOR

    @property
    def allowed_diff(self) -> float:
        return self.tolerance * self.output_scale

    @property
    def passed(self) -> bool:
        return self.relative_diff <= self.tolerance  # False for NaN, as it must be

    def as_dict(self) -> dict:
        return dict(self.__dict__, runtime="ONNX Runtime CPU")


def compare_outputs(
    onnx_logits: np.ndarray,
    reference: np.ndarray,
    tolerance: float,
    what: str,
    *,
    absolute_floor: float = ABSOLUTE_FLOOR,
    float32_error: float | None = None,
    float32_error_images: int = 0,
    allowance: float = 0.0,
) -> ValidationResult:
    """`allowance`: a logit difference allowed whatever the tolerance says (int8: a multiple of ONNX Runtime's own
    rounding noise, quantization/validate.py); it widens output_scale, so `passed` stays the whole test."""
    diff = float(np.max(np.abs(onnx_logits - reference)))
    largest = float(np.max(np.abs(reference)))
    scale = max(largest, absolute_floor / tolerance)
    if float32_error is not None:
        scale = max(scale, FLOAT32_ERROR_FACTOR * float32_error / tolerance)
    if allowance > 0:
        scale = max(scale, allowance / tolerance)
    agreement = float(np.mean(onnx_logits.argmax(1) == reference.argmax(1)))
    return ValidationResult(
        diff, scale, diff / scale, tolerance, agreement, len(reference), what, largest, absolute_floor,
        float32_error, float32_error_images,
    )


def validate_lowered(
    lowered: onnx.ModelProto,
    reference_logits: np.ndarray,
    x: np.ndarray,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    absolute_floor: float = ABSOLUTE_FLOOR,
    threads: int = 1,
    reference: str = "parameter-substituted PyTorch model",
    float64_reference: Callable[[int], np.ndarray | None] | None = None,
) -> ValidationResult:
    """Compare the lowered model on `x` with `reference_logits`; raise ValidationError on a mismatch.

    `float64_reference(n)`, if given, returns the reference's logits on the
    first n images of `x` computed in float64 (or None where it cannot); it
    is called only when the plain tolerance is exceeded (module docstring).
    """
    logits = run_onnx(lowered, x, threads)
    result = compare_outputs(logits, reference_logits, tolerance, reference, absolute_floor=absolute_floor)
    measured = ""
    if not result.passed and float64_reference is not None:
        n = min(FLOAT64_IMAGES, len(x))
        exact = float64_reference(n)
        if exact is None:
            measured = f"; the {reference}'s own float32 error could not be measured (no float64 evaluation)"
        else:
            error = float(np.max(np.abs(np.asarray(reference_logits[:n], np.float64) - np.asarray(exact, np.float64))))
            largest = max(result.largest_logit, absolute_floor / tolerance)
            if not error <= MAX_FLOAT32_ERROR * largest:
                raise ValidationError(
                    f"the plan is numerically ill-conditioned: the {reference} itself differs by {error:.3g} in a "
                    f"logit from its own float64 evaluation (more than {MAX_FLOAT32_ERROR:.0e} of the largest |logit| "
                    f"{largest:.3g}), so its float32 outputs are rounding noise and no lowered model can be checked "
                    "against them; BatchNorm statistics re-estimated on few values (few --bn-recalibrate images at a "
                    "small input size) are the usual cause: re-estimate on more images"
                )
            result = compare_outputs(
                logits, reference_logits, tolerance, reference, absolute_floor=absolute_floor,
                float32_error=error, float32_error_images=n,
            )
            measured = (
                f", nor {FLOAT32_ERROR_FACTOR:g}x the {reference}'s own float32 error {error:.3g} "
                f"(measured against float64 on {n} images)"
            )
    if not result.passed:
        raise ValidationError(
            f"the lowered model differs from the {reference} by {result.max_abs_diff:.3g} in a logit "
            f"(allowed: {tolerance:.0e} of the largest |logit| {result.largest_logit:.3g}, at least {absolute_floor:.0e}"
            f"{measured}); this is a lowering bug: please report it with --debug output"
        )
    return result
