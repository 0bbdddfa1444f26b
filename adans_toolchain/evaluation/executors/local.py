"""In-process evaluation (the default)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from adans_toolchain.plan import Plan
from adans_toolchain.evaluation.executors.base import Executor


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, evaluator) -> None:
        self.evaluator = evaluator

    def screen(self, plans: Sequence[Plan]) -> np.ndarray:
        return self.evaluator.screen(plans)

    def accuracy(self, plans: Sequence[Plan]) -> np.ndarray:
        return self.evaluator.accuracy(plans)
