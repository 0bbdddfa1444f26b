"""The executor interface and the one rule every executor shares: how a batch is split."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np

from adans_toolchain.plan import Plan


def chunk_bounds(n: int, workers: int) -> list[tuple[int, int]]:
    """Contiguous, nearly equal chunks of range(n), the first ones one longer; empty chunks dropped."""
    workers = max(1, min(workers, n)) if n else 1
    base, extra = divmod(n, workers)
    bounds, start = [], 0
    for i in range(workers):
        stop = start + base + (1 if i < extra else 0)
        if stop > start:
            bounds.append((start, stop))
        start = stop
    return bounds


# Evaluations per worker between two writes of the evaluation cache: small
# enough that a killed run loses little, large enough that remote workers
# stay busy (each chunk is split across all of them).
EVALUATIONS_PER_WORKER_PER_CHUNK = 8


def evaluation_chunk(workers: int) -> int:
    """How many plans to evaluate before the results are written to the cache."""
    return EVALUATIONS_PER_WORKER_PER_CHUNK * max(1, workers)


class Executor(ABC):
    name: str = "executor"

    @abstractmethod
    def screen(self, plans: Sequence[Plan]) -> np.ndarray:
        """Rows [top-1 %, images seen, rejected] of each plan, in the order given (Evaluator.screen)."""

    def accuracy(self, plans: Sequence[Plan]) -> np.ndarray:
        """Top-1 (percent) of each plan on the validation set (a partial estimate if rejected early), in order."""
        return self.screen(plans)[:, 0]

    @property
    def workers(self) -> int:
        return 1

    def describe(self) -> dict:
        return {"executor": self.name, "workers": self.workers}

    def close(self) -> None:
        """Release workers (idempotent)."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
