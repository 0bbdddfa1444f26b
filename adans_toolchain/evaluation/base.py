"""The Evaluator contract: accuracy of candidate Plans, whatever runs the model.

Two evaluators implement it: `SubstitutionEvaluator` (the PyTorch module,
parameters substituted in place) and `OnnxEvaluator` (an ONNX model,
initializers fed to ONNX Runtime). A Plan's values come from the same
PlanTransform in both, so a plan scores the same on either.

What every evaluator shares lives here once: the accuracy loop over plans
(with early rejection, `evaluation.rejection`, when a rule is set), the
count of evaluations, and the rule for when BatchNorm statistics are
re-estimated. A subclass supplies the hooks: `substituted` (the model
computes a plan inside the block), `_correct` (correct top-1 predictions on
arrays in its own form) and `_arrays` (an ImageSet in that form), plus the
plan-level queries `logits`, `batchnorm_statistics` and `priorities`.

Subclasses take (model, data, transform) positionally and every option by
keyword, with the defaults of `make_evaluator`.

A plan with int8 layers is scored by `int8`, an `Int8Candidates` the
pipeline attaches (quantization/searched.py: the plan lowered, quantized as
ONNX Runtime will quantize it, and simulated). This layer cannot build one
(quantization sits above it); without one such a plan is refused. Plans
without int8 layers never reach it: their evaluation is unchanged.
"""

from __future__ import annotations

import abc
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Callable, ClassVar, Iterator, Protocol, Sequence, Sized

import numpy as np

from adans_toolchain.analysis.channels import ChannelAnalysis, ChannelGroup
from adans_toolchain.evaluation.rejection import EarlyRejection
from adans_toolchain.frontend.data import ImageSet
from adans_toolchain.plan import Plan
from adans_toolchain.transforms.plan_transform import PlanTransform


# The columns of `Evaluator.screen`'s rows (and of every executor's `screen`).
SCREEN_COLUMNS = ("accuracy", "images", "rejected")
ACCURACY, IMAGES, REJECTED = range(3)


class Int8Candidates(Protocol):
    """Scores plans with int8 layers (quantization.searched.SearchedInt8 is the one)."""

    def simulated(self, evaluator: "Evaluator", plan: Plan) -> Callable[[np.ndarray], np.ndarray]:
        """A function from images (NCHW float32, numpy) to the logits ONNX Runtime's int8 model of `plan` computes."""


class Evaluator(abc.ABC):
    """Top-1 accuracy, logits and BatchNorm statistics of Plans on one model.

    Attributes every evaluator has:
        notes        what the report must say about how candidates were evaluated.
        evaluations  plans scored by `accuracy` or `screen` (the search's cost).
        images       validation images those plans were run on (fewer than
                     evaluations x len(VAL) when candidates were rejected early).
        early_rejection  the EarlyRejection rule `accuracy` and `screen` apply, or None
                     (every plan on all of VAL); `accuracy_on` never applies it.
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
        self.images = 0
        self.precision = "fp32"
        self._rule: EarlyRejection | None = None
        self._rule_note: str | None = None
        self._orders: dict[tuple[int, int], Any] = {}
        self.int8: Int8Candidates | None = None  # set by the pipeline when precision is searched

    @property
    def early_rejection(self) -> EarlyRejection | None:
        return self._rule

    @early_rejection.setter
    def early_rejection(self, rule: EarlyRejection | None) -> None:
        """Set (or clear) the rule; the notes say how candidates were evaluated."""
        if self._rule_note in self.notes:
            self.notes.remove(self._rule_note)
        self._rule, self._rule_note = rule, None if rule is None else rule.describe()
        if self._rule_note:
            self.notes.append(self._rule_note)

    # -- shared ---------------------------------------------------------------
    def recalibrates(self, plan: Plan) -> bool:
        """Compressed candidates get re-estimated BatchNorm statistics; the baseline keeps its own."""
        return self.calibration is not None and bool(self.batchnorms) and not plan.keeps_float_weights

    def _recalibrating(self, plan: Plan, recalibrate: bool | None) -> bool:
        """`recalibrate` as asked (None: the default rule); never without BatchNorm layers."""
        return self.recalibrates(plan) if recalibrate is None else recalibrate and bool(self.batchnorms)

    def accuracy(self, plans: Sequence[Plan]) -> np.ndarray:
        """Top-1 accuracy in percent of each plan on the validation set (a partial estimate if rejected early)."""
        return self.screen(plans)[:, ACCURACY]

    def screen(self, plans: Sequence[Plan]) -> np.ndarray:
        """Each plan's row [accuracy %, images seen, rejected (1.0 or 0.0)]: see SCREEN_COLUMNS.

        Without an early-rejection rule every plan sees all of VAL in its stored
        order, exactly as `accuracy` always did. With one, VAL is run in the
        rule's fixed random order, slice by slice up to each checkpoint, and a
        plan stops as soon as the rule rejects it; its accuracy is then the
        estimate on the images seen. BatchNorm is re-estimated once per plan,
        before its pass over VAL.
        """
        total = len(self.y)
        result = np.zeros((len(plans), len(SCREEN_COLUMNS)))
        for i, plan in enumerate(plans):
            with self._scoring(plan, self.candidate) as count_correct:
                correct, seen = self._screened_pass(total, count_correct)
            result[i] = (100.0 * correct / seen, seen, float(seen < total))
            self.evaluations += 1
            self.images += seen
        return result

    @contextmanager
    def _scoring(self, plan: Plan, context: Callable[[Plan], AbstractContextManager[None]]
                 ) -> Iterator[Callable[[Any, Any], int]]:
        """Inside: the function counting `plan`'s correct predictions on (x, y) in this evaluator's array form.

        A float plan is computed by the model inside `context(plan)` (the
        fast paths, unchanged); a plan with int8 layers by `self.int8`.
        """
        if not plan.int8_layers:
            with context(plan):
                yield self._correct
            return
        if self.int8 is None:
            raise ValueError(f"the plan runs {len(plan.int8_layers)} layer(s) in int8, but this evaluator has no int8 "
                             "simulation attached (Evaluator.int8)")
        logits_of = self.int8.simulated(self, plan)
        yield lambda x, y: self._correct_with(logits_of, x, y)

    def _correct_with(self, logits_of: Callable[[np.ndarray], np.ndarray], x: Any, y: Any) -> int:
        """Correct top-1 predictions of `logits_of` (numpy images in, logits out) on (x, y) in batches."""
        labels = _numpy(y)
        correct = 0
        for start in range(0, len(labels), self.batch_size):
            images = np.ascontiguousarray(_numpy(x[start : start + self.batch_size]), dtype=np.float32)
            correct += int((logits_of(images).argmax(1) == labels[start : start + self.batch_size]).sum())
        return correct

    def _screened_pass(self, total: int, count_correct: Callable[[Any, Any], int]) -> tuple[int, int]:
        """(correct, seen) by `count_correct`, on all of VAL or until the rule rejects it."""
        rule = self._rule
        if rule is None:
            return count_correct(self.x, self.y), total
        order = self._order(rule, total)
        correct = seen = 0
        for stop in rule.stops(total):
            for start in range(seen, stop, self.batch_size):
                x, y = self._take(self.x, self.y, order[start : min(start + self.batch_size, stop)])
                correct += count_correct(x, y)
            seen = stop
            if rule.should_reject(correct, seen, total):
                break
        return correct, seen

    def _order(self, rule: EarlyRejection, total: int) -> Any:
        key = (rule.seed, total)
        if key not in self._orders:
            self._orders[key] = self._index(rule.order(total))
        return self._orders[key]

    def _index(self, order: np.ndarray) -> Any:
        """`order` as what `_take` indexes with (a device tensor for PyTorch)."""
        return order

    def _take(self, x: Any, y: Any, index: Any) -> tuple[Any, Any]:
        """The images and labels at `index` (a slice of `_index(order)`), in the form `_correct` takes."""
        return x[index], y[index]

    def accuracy_on(self, plan: Plan, data: ImageSet, *, recalibrate: bool | None = None) -> float:
        """Top-1 in percent of `plan` on other images (not counted as a search evaluation)."""
        x, y = self._arrays(data)
        return self._top1(plan, x, y, recalibrate)

    def _top1(self, plan: Plan, x: Any, y: Any, recalibrate: bool | None) -> float:
        if plan.int8_layers and recalibrate is not None:
            # The int8 model is lowered with the statistics the search scored it with, never others.
            raise ValueError("an int8 plan is scored as emitted: recalibrate cannot be chosen for it")
        with self._scoring(plan, lambda p: self.substituted(p, recalibrate=recalibrate)) as count_correct:
            return 100.0 * count_correct(x, y) / len(y)

    def candidate(self, plan: Plan) -> AbstractContextManager[None]:
        """The context `screen` evaluates `plan` in: `substituted` unless an evaluator has a cheaper exact form."""
        return self.substituted(plan)

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
        """fp32 logits of `plan`'s float part on images `x`, whatever the search precision: the validation reference
        of the lowered float model (int8 layers are the simulation's, `int8`)."""

    def float64_logits(self, plan: Plan, x) -> np.ndarray | None:
        """`logits` computed in float64 from the same float32 parameters and statistics, or None where unavailable.

        Validation's measure of how much float32 rounding moves this plan's
        function (lowering/validate.py); only asked for when the plain
        tolerance is exceeded.
        """
        return None

    @abc.abstractmethod
    def batchnorm_statistics(self, plan: Plan) -> dict[str, np.ndarray]:
        """The running statistics the emitted model must carry for `plan`, by initializer name ({} if unchanged)."""

    @abc.abstractmethod
    def priorities(self, analysis: ChannelAnalysis, groups: Sequence[ChannelGroup], method: str = "taylor") -> dict[str, np.ndarray]:
        """Importance of each unit of each group, by group id ("taylor" or "l1"); a fallback is recorded in `notes`."""


def _numpy(a: Any) -> np.ndarray:
    """A torch tensor (on any device) or an array, as a numpy array."""
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def make_evaluator(
    module,
    data: ImageSet,
    transform: PlanTransform,
    *,
    device: str = "cpu",
    batch_size: int = 250,
    calibration: ImageSet | None = None,
    precision: str = "fp32",
    slicing: bool = False,
) -> Evaluator:
    """The evaluator for `module`: ONNX Runtime for an ONNX model, PyTorch otherwise.

    `precision` and `slicing` (search candidates physically smaller, see
    evaluation.slicing) apply to PyTorch only; ONNX models are evaluated as
    given (fp32, full size).
    """
    import onnx

    from adans_toolchain.frontend.onnx_model import OnnxModel

    common = dict(device=device, batch_size=batch_size, calibration=calibration)
    if isinstance(module, (OnnxModel, onnx.ModelProto)):
        from adans_toolchain.evaluation.onnx_runtime import OnnxEvaluator

        return OnnxEvaluator(module, data, transform, **common)
    from adans_toolchain.evaluation.substitution import SubstitutionEvaluator

    return SubstitutionEvaluator(module, data, transform, precision=precision, slicing=slicing, **common)
