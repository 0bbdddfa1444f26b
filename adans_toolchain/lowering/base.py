"""The pass protocol, in the style of onnxscript's PassBase.

`check` says whether the pass can run and why not; `apply` returns (model,
modified). `requires` and `ensures` are Conditions run around every pass:
the requires on the input before `apply`, the ensures on the output after
it. A condition that does not hold is a bug in the pass (or in what ran
before it), so it raises instead of shipping a model that breaks a promise;
the pass log records every condition that was checked.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import onnx

from adans_toolchain.errors import LoweringError


@dataclass(frozen=True)
class Condition:
    """A cheap structural property of a model: `check` returns None when it holds, else why not."""

    name: str
    check: Callable[[onnx.ModelProto], str | None]


@dataclass(frozen=True)
class PassResult:
    model: onnx.ModelProto
    modified: bool
    checked: tuple[dict, ...] = ()  # filled by LoweringPass.__call__, one entry per condition


class LoweringPass(ABC):
    name: str = "pass"

    def requires(self) -> Sequence[Condition]:
        """Conditions the input model must meet."""
        return ()

    def ensures(self, source: onnx.ModelProto) -> Sequence[Condition]:
        """Conditions the output model meets; `source` is the input, for properties relating the two."""
        return ()

    def check(self, model: onnx.ModelProto) -> str | None:
        """None when the pass can run on `model`, else the reason it cannot."""
        return None

    @abstractmethod
    def apply(self, model: onnx.ModelProto) -> PassResult: ...

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        reason = self.check(model)
        if reason is not None:
            raise LoweringError(f"{self.name}: {reason}")
        before = self._verify(self.requires(), model, "before")
        result = self.apply(model)
        after = self._verify(self.ensures(model), result.model, "after")
        return replace(result, checked=before + after)

    def _verify(self, conditions: Sequence[Condition], model: onnx.ModelProto, when: str) -> tuple[dict, ...]:
        kind = "requires" if when == "before" else "ensures"
        for c in conditions:
            reason = c.check(model)
            if reason is not None:
                raise LoweringError(f"{self.name}: {kind} '{c.name}' does not hold: {reason}")
        # Only reached when all held: a failure raised above.
        return tuple({"condition": c.name, "when": when, "held": True} for c in conditions)


def _type_checks(model: onnx.ModelProto) -> str | None:
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as e:
        return str(e).splitlines()[0]
    return None


# Graph surgery that leaves a weight and its neighbours disagreeing on a
# channel count shows up here, without running the model.
TYPE_CHECKS = Condition("the graph type-checks under strict shape inference", _type_checks)


def run_passes(model: onnx.ModelProto, passes: Sequence[LoweringPass]) -> tuple[onnx.ModelProto, list[dict]]:
    log = []
    for p in passes:
        result = p(model)
        model = result.model
        log.append({"pass": p.name, "modified": result.modified, "checked": list(result.checked)})
    return model, log
