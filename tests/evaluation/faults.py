"""Fault injection for the executor tests: a worker that dies once, mid-batch.

Production code has no hook for this. The test hands an executor this spec
instead of an EvaluatorSpec; it pickles by reference, so worker processes
import it from here (the repo root is on their path, as in the test run).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from adans_toolchain.evaluation.executors import EvaluatorSpec


@dataclass(frozen=True)
class DyingSpec(EvaluatorSpec):
    """Workers exit hard, as a crashed process would, when they evaluate: the first one only
    (it creates `marker`), or every one (`always`)."""

    marker: str = ""
    always: bool = False

    def build(self):
        return _Dying(super().build(), self.marker, self.always)


class _Dying:
    def __init__(self, evaluator, marker: str, always: bool) -> None:
        self.evaluator = evaluator
        self.marker = marker
        self.always = always

    def accuracy(self, plans):
        return self.screen(plans)[:, 0]

    def screen(self, plans):
        if self.always or self._first():
            os._exit(1)
        return self.evaluator.screen(plans)

    def _first(self) -> bool:
        try:
            # O_EXCL: exactly one worker creates the marker, so exactly one dies.
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return True


def dies_once(spec: EvaluatorSpec, marker) -> DyingSpec:
    """`spec`, whose first evaluating worker dies after creating `marker`."""
    return DyingSpec(**spec.__dict__, marker=str(marker))


def always_dies(spec: EvaluatorSpec) -> DyingSpec:
    """`spec`, whose every worker dies when it evaluates."""
    return DyingSpec(**spec.__dict__, always=True)
