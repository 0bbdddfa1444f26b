"""Naive uniform sampling: the baseline every adaptive sampler must beat."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from adans_toolchain.search.samplers.base import Sampler, SearchContext, uniform_in_box


@dataclass(frozen=True, kw_only=True)
class UniformSampler(Sampler):
    """Ignores the history: every batch is uniform over the box."""

    name: ClassVar[str] = "uniform"

    def _propose(self, context: SearchContext, n: int, rng: np.random.Generator) -> np.ndarray:
        return uniform_in_box(context.lower, context.upper, n, rng)
