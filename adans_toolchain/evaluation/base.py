"""The Evaluator contract: accuracy of candidate Plans, whatever runs the model.

Two evaluators implement it: `SubstitutionEvaluator` (the PyTorch module,
parameters substituted in place) and `OnnxEvaluator` (an ONNX model,
initializers fed to ONNX Runtime). A Plan's values come from the same
PlanTransform in both, so a plan scores the same on either.

What every evaluator shares lives here once: the accuracy loop over plans,
the count of evaluations, and the rule for when BatchNorm statistics are
re-estimated. A subclass supplies the hooks: `substituted` (the model
computes a plan inside the block), `_correct` (correct top-1 predictions on
arrays in its own form) and `_arrays` (an ImageSet in that form), plus the
plan-level queries `logits`, `batchnorm_statistics` and `priorities`.

Subclasses take (model, data, transform) positionally and every option by
keyword, with the defaults of `make_evaluator`.
"""

from __future__ import annotations

import abc
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Sequence, Sized

import numpy as np

from adans_toolchain.analysis.channels import ChannelAnalysis, ChannelGroup
from adans_toolchain.frontend.data import ImageSet
from adans_toolchain.plan import Plan
from adans_toolchain.transforms.plan_transform import PlanTransform


class Evaluator(abc.ABC):
    """Top-1 accuracy, logits and BatchNorm statistics of Plans on one model.

    Attributes every evaluator has:
        notes        what the report must say about how candidates were evaluated.
        evaluations  plans scored by `accuracy` (the search's cost).
        precision    the arithmetic of `accuracy`: "fp32" or "bf16".
        x, y         the validation set, in the evaluator's own array form.
        calibration  images for BatchNorm re-estimation, or None (keep trained statistics).
        batchnorms   the BatchNorm layers whose statistics can be re-estimated.
    """

    # Remote executors rebuild the evaluator in each worker from an
    # EvaluatorSpec; an evaluator says whether such a recipe exists for it.
    distributable: ClassVar[bool] = False

    x: Any
    y: Any
    calibration: Any | None
    batchnorms: Sized

    def __init__(self, transform: PlanTransform, *, batch_size: int) -> None:
        self.transform = transform
        self.batch_size = batch_size
        self.notes: list[str] = []
        self.evaluations = 0
        self.precision = "fp32"

    # -- shared ---------------------------------------------------------------
    def recalibrates(self, plan: Plan) -> bool:
        """Compressed candidates get re-estimated BatchNorm statistics; the baseline keeps its own."""
        return self.calibration is not None and bool(self.batchnorms) and not plan.is_identity

    def _recalibrating(self, plan: Plan, recalibrate: bool | None) -> bool:
        """`recalibrate` as asked (None: the default rule); never without BatchNorm layers."""
        return self.recalibrates(plan) if recalibrate is None else recalibrate and bool(self.batchnorms)

    def accuracy(self, plans: Sequence[Plan]) -> np.ndarray:
        """Top-1 accuracy in percent of each plan on the validation set."""
        result = np.empty(len(plans))
        for i, plan in enumerate(plans):
            result[i] = self._top1(plan, self.x, self.y, None)
            self.evaluations += 1
        return result

    def accuracy_on(self, plan: Plan, data: ImageSet, *, recalibrate: bool | None = None) -> float:
        """Top-1 in percent of `plan` on other images (not counted as a search evaluation)."""
        x, y = self._arrays(data)
        return self._top1(plan, x, y, recalibrate)

    def _top1(self, plan: Plan, x: Any, y: Any, recalibrate: bool | None) -> float:
        with self.substituted(plan, recalibrate=recalibrate):
            return 100.0 * self._correct(x, y) / len(y)

    # -- hooks ----------------------------------------------------------------
    @abc.abstractmethod
    def substituted(self, plan: Plan, *, recalibrate: bool | None = None) -> AbstractContextManager[None]:
        """A context inside which the model computes `plan`; the model is restored on exit."""

    @abc.abstractmethod
    def _correct(self, x: Any, y: Any) -> int:
        """Correct top-1 predictions of the model as currently substituted, in batches."""

    @abc.abstractmethod
    def _arrays(self, data: ImageSet) -> tuple[Any, Any]:
        """`data`'s images and labels in the form `_correct` takes."""

    @abc.abstractmethod
    def logits(self, plan: Plan, x) -> np.ndarray:
        """fp32 logits of `plan` on images `x`, whatever the search precision: the validation reference."""

    @abc.abstractmethod
    def batchnorm_statistics(self, plan: Plan) -> dict[str, np.ndarray]:
        """The running statistics the emitted model must carry for `plan`, by initializer name ({} if unchanged)."""

    @abc.abstractmethod
    def priorities(self, analysis: ChannelAnalysis, groups: Sequence[ChannelGroup], method: str = "taylor") -> dict[str, np.ndarray]:
        """Importance of each unit of each group, by group id ("taylor" or "l1"); a fallback is recorded in `notes`."""


def make_evaluator(
    module,
    data: ImageSet,
    transform: PlanTransform,
    *,
    device: str = "cpu",
    batch_size: int = 250,
    calibration: ImageSet | None = None,
    precision: str = "fp32",
) -> Evaluator:
    """The evaluator for `module`: ONNX Runtime for an ONNX model, PyTorch otherwise.

    `precision` applies to PyTorch only; ONNX models are evaluated as given (fp32).
    """
    import onnx

    from adans_toolchain.frontend.onnx_model import OnnxModel

    common = dict(device=device, batch_size=batch_size, calibration=calibration)
    if isinstance(module, (OnnxModel, onnx.ModelProto)):
        from adans_toolchain.evaluation.onnx_runtime import OnnxEvaluator

        return OnnxEvaluator(module, data, transform, **common)
    from adans_toolchain.evaluation.substitution import SubstitutionEvaluator

    return SubstitutionEvaluator(module, data, transform, precision=precision, **common)
