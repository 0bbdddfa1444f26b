"""The AdaNS score (paper eq. 2-6).

    dC  = (C(M) - C(M_x)) / C(M)                      normalised cost reduction
    dA  = max(A(M) - A(M_x), floor)                   accuracy drop, in points
    PEN = dA                       if A(M_x) >= A_thr
        = dA + exp(A_thr - A(M_x)) otherwise
    f   = exp(dC) / PEN

Accuracies and the threshold are in percent, so the exponential penalty
grows by e per point below the threshold: infeasible candidates keep a
ranking (the search can climb out of them) but never beat a feasible one.

The floor guards dA <= 0 (a candidate may beat the baseline). It also sets
how the score trades accuracy for cost *inside* the feasible region: with a
floor as large as the allowed drop every feasible candidate has the same
penalty and the score maximises cost reduction under the constraint (what
`--max-accuracy-drop` promises, our default); a small floor such as 0.1
gives the paper's behaviour, where each halving of the drop is worth
ln 2 = 0.69 of normalised cost reduction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AdaNSScore:
    baseline_accuracy: float  # A(M), percent
    baseline_cost: float  # C(M), in the cost model's unit
    accuracy_threshold: float  # A_thr, percent
    accuracy_floor: float  # lower bound of dA, points

    def __post_init__(self) -> None:
        if self.baseline_cost <= 0:
            raise ValueError("baseline cost must be positive")
        if self.accuracy_floor <= 0:
            raise ValueError("the accuracy floor must be positive (it guards a division)")

    def cost_reduction(self, cost) -> np.ndarray:
        return (self.baseline_cost - np.asarray(cost, dtype=np.float64)) / self.baseline_cost

    def penalty(self, accuracy) -> np.ndarray:
        accuracy = np.asarray(accuracy, dtype=np.float64)
        drop = np.maximum(self.baseline_accuracy - accuracy, self.accuracy_floor)
        shortfall = self.accuracy_threshold - accuracy
        return np.where(accuracy >= self.accuracy_threshold, drop, drop + np.exp(np.maximum(shortfall, 0.0)))

    def __call__(self, accuracy, cost) -> np.ndarray:
        return np.exp(self.cost_reduction(cost)) / self.penalty(accuracy)

    def feasible(self, accuracy) -> np.ndarray:
        return np.asarray(accuracy) >= self.accuracy_threshold

    def as_dict(self) -> dict:
        return dict(self.__dict__, formula="exp(dC) / PEN_A, paper eq. 2-6")
