"""Synthetic test functions of the sampler benchmark (parts 1 and 2), each with a known maximum.

Every problem is a black box in the `maximize` convention: fn maps an (n, d)
array to n scores. The maxima are known in closed form (or by a local refine
from a known starting point), so the benchmark can report how close each
method gets, not only which one gets closest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.optimize import minimize

from adans_toolchain.search.samplers import ScoreParts
from adans_toolchain.search.scoring import AdaNSScore


@dataclass(frozen=True)
class Problem:
    name: str
    dim: int
    fn: Callable[[np.ndarray], np.ndarray]
    f_star: float  # the global maximum of fn over the box
    lower: np.ndarray
    upper: np.ndarray
    parts: ScoreParts | None = None  # how the score splits into accuracy and cost, where it does


def _unit_box(dim: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(dim), np.ones(dim)


# -- part 1: a 2-D multi-modal function (the paper's Fig. 10 setting) ---------

# One tall peak and four broad, lower decoys (centre x, centre y, height,
# width) that together cover most of the box. With the narrow peak (width
# 0.025) the region within 0.05 of the maximum is a disc of radius ~0.008
# (~2e-4 of the box): a uniform sampler lands there with ~7 % probability in
# 400 samples, and anything that refines the decoys' good sets must first get
# a sample within ~0.017 of the peak (f above the best decoy) before it can
# switch. The wide peak (0.05) quadruples those areas.
PEAK_2D = (0.82, 0.18, 1.00)
PEAK_WIDTHS_2D = {"narrow": 0.025, "wide": 0.05}
DECOYS_2D = (
    (0.25, 0.30, 0.75, 0.12),
    (0.30, 0.78, 0.80, 0.10),
    (0.72, 0.70, 0.70, 0.14),
    (0.55, 0.42, 0.60, 0.08),
)


def _bumps(xs: np.ndarray, bumps) -> np.ndarray:
    xs = np.atleast_2d(xs)
    total = np.zeros(xs.shape[0])
    for cx, cy, height, width in bumps:
        r2 = (xs[:, 0] - cx) ** 2 + (xs[:, 1] - cy) ** 2
        total += height * np.exp(-r2 / (2 * width**2))
    return total


def _local_max(fn: Callable[[np.ndarray], np.ndarray], start: tuple[float, float]) -> float:
    refined = minimize(lambda p: -fn(p[None, :])[0], x0=start, method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-12})
    return float(-refined.fun)


def multimodal_2d(variant: str) -> Problem:
    bumps = ((*PEAK_2D, PEAK_WIDTHS_2D[variant]),) + DECOYS_2D

    def fn(xs: np.ndarray) -> np.ndarray:
        return _bumps(xs, bumps)

    # The decoys' tails shift the peak's maximum slightly: refine it from the
    # peak's centre rather than assuming f* = its height.
    lower, upper = _unit_box(2)
    return Problem(f"bumps-2d-{variant}", 2, fn, _local_max(fn, PEAK_2D[:2]), lower, upper)


def best_decoy_2d(problem: Problem) -> float:
    """The highest local maximum other than the global one (what epsilon must exclude)."""
    return max(_local_max(problem.fn, (cx, cy)) for cx, cy, _, _ in DECOYS_2D)


def multimodal_2d_problems() -> list[Problem]:
    return [multimodal_2d(variant) for variant in PEAK_WIDTHS_2D]


# -- part 2: bounded high-dimensional functions -------------------------------


def shifted_bump(dim: int, seed: int = 0) -> Problem:
    """exp(−q/(2 s²)), q a weighted mean squared distance to a random centre.

    Weighted *mean* (not sum) so the landscape has the same contrast at every
    d: without it a fixed-width bump is 0 to machine precision almost
    everywhere in 300-D and no method gets a signal. Weights spread over a
    decade make some coordinates matter more than others (ill-conditioned).
    """
    rng = np.random.default_rng([seed, dim, 1])
    centre = rng.uniform(0.2, 0.8, dim)
    weights = np.exp(rng.uniform(0.0, np.log(10.0), dim))
    weights /= weights.sum()
    width = 0.1

    def fn(xs: np.ndarray) -> np.ndarray:
        q = ((np.atleast_2d(xs) - centre) ** 2) @ weights
        return np.exp(-q / (2 * width**2))

    lower, upper = _unit_box(dim)
    return Problem(f"bump-{dim}d", dim, fn, 1.0, lower, upper)


@dataclass(frozen=True)
class SyntheticPruning:
    """A pruning-like objective with the maximum on the boundary of the feasible region.

    x[j] is the fraction of layer j removed. Cost falls linearly with a
    per-layer share m_j (Σ m = 1); accuracy falls by Σ a_j x_j² points (a
    convex, coordinate-wise monotone damage, like the real one). Scored with
    the compiler's own AdaNSScore at a 2-point allowed drop, so infeasible
    points are ranked by the same exponential penalty. The optimum maximises
    Σ m_j x_j subject to Σ a_j x_j² ≤ allowed and 0 ≤ x ≤ 1: by KKT,
    x_j = min(1, m_j / (2 λ a_j)) with λ set so the constraint is active —
    layers that cost much and hurt little sit at the box corner x_j = 1.
    """

    shares: np.ndarray
    sensitivity: np.ndarray
    allowed_drop: float = 2.0

    @property
    def score(self) -> AdaNSScore:
        return AdaNSScore(100.0, 1.0, 100.0 - self.allowed_drop, self.allowed_drop)

    def __call__(self, xs: np.ndarray) -> np.ndarray:
        return self.score(self.accuracy(xs), self.cost(xs))

    def accuracy(self, xs: np.ndarray) -> np.ndarray:
        return 100.0 - (np.atleast_2d(xs) ** 2) @ self.sensitivity

    def cost(self, xs: np.ndarray) -> np.ndarray:
        return 1.0 - np.atleast_2d(xs) @ self.shares

    def evaluate(self, xs: np.ndarray):
        """Scores and, like the compiler's objective, each sample's accuracy in its info."""
        accuracy = self.accuracy(xs)
        return self.score(accuracy, self.cost(xs)), [{"accuracy": float(a)} for a in accuracy]

    @property
    def parts(self) -> ScoreParts:
        """What the compiler tells a sampler: the exact cost and the score (accuracy stays a black box)."""
        return ScoreParts(cost=self.cost, score=self.score)

    def optimum(self) -> np.ndarray:
        def x_of(lam: float) -> np.ndarray:
            return np.minimum(1.0, self.shares / (2 * lam * self.sensitivity))

        if self.sensitivity.sum() <= self.allowed_drop:
            return np.ones_like(self.shares)
        lo, hi = 1e-12, 1e12  # drop(x_of(λ)) decreases in λ
        for _ in range(200):
            mid = np.sqrt(lo * hi)
            if (x_of(mid) ** 2) @ self.sensitivity > self.allowed_drop:
                lo = mid
            else:
                hi = mid
        return x_of(hi)  # the feasible side of the bisection


def corner_pruning(dim: int, seed: int = 0) -> Problem:
    """SyntheticPruning with log-uniform shares (1 decade) and sensitivities (3 decades).

    Sensitivities sum to 30 points, so a uniformly random x loses ~10 points
    and is infeasible with overwhelming probability for d ≥ 20 — the thin
    feasible region our field notes found on the real objective.
    """
    rng = np.random.default_rng([seed, dim, 2])
    shares = np.exp(rng.uniform(0.0, np.log(10.0), dim))
    sensitivity = np.exp(rng.uniform(0.0, np.log(1000.0), dim))
    objective = SyntheticPruning(shares / shares.sum(), 30.0 * sensitivity / sensitivity.sum())
    f_star = float(objective(objective.optimum()[None, :])[0])
    lower, upper = _unit_box(dim)
    return Problem(f"corner-{dim}d", dim, objective.evaluate, f_star, lower, upper, objective.parts)


HIGH_DIM_FAMILIES: dict[str, Callable[[int], Problem]] = {"bump": shifted_bump, "corner": corner_pruning}
HIGH_DIMS = (20, 100, 300)


def high_dim_problems() -> list[Problem]:
    return [make(dim) for make in HIGH_DIM_FAMILIES.values() for dim in HIGH_DIMS]
