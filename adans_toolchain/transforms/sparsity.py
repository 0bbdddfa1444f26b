"""Unstructured magnitude pruning by parameter substitution.

Each layer's weights are ordered once by |w| (ties by position, so the order
is deterministic); removing k of them zeroes the first k in that order.
"""

from __future__ import annotations

import numpy as np


class MagnitudeOrder:
    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self._order = {name: np.argsort(np.abs(w).ravel(), kind="stable") for name, w in weights.items()}

    def zeroed(self, name: str, removed: int) -> np.ndarray:
        """Flat indices of the `removed` smallest-magnitude weights of `name`."""
        return self._order[name][:removed]

    def apply(self, name: str, weight: np.ndarray, removed: int) -> np.ndarray:
        out = weight.copy().ravel()
        out[self.zeroed(name, removed)] = 0
        return out.reshape(weight.shape)
