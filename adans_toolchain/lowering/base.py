"""The pass protocol: `check` says whether and why not; `apply` returns (model, modified)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import onnx

from adans_toolchain.errors import LoweringError


@dataclass(frozen=True)
class PassResult:
    model: onnx.ModelProto
    modified: bool


class LoweringPass(ABC):
    name: str = "pass"
    requires: tuple[str, ...] = ()  # conditions the input model must meet (documentation + report)
    ensures: tuple[str, ...] = ()  # conditions the output model meets

    def check(self, model: onnx.ModelProto) -> str | None:
        """None when the pass can run on `model`, else the reason it cannot."""
        return None

    @abstractmethod
    def apply(self, model: onnx.ModelProto) -> PassResult: ...

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        reason = self.check(model)
        if reason is not None:
            raise LoweringError(f"{self.name}: {reason}")
        return self.apply(model)


def run_passes(model: onnx.ModelProto, passes: Sequence[LoweringPass]) -> tuple[onnx.ModelProto, list[dict]]:
    log = []
    for p in passes:
        result = p(model)
        model = result.model
        log.append({"pass": p.name, "modified": result.modified, "ensures": list(p.ensures)})
    return model, log
