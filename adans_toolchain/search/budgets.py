"""A family of plans for several cost budgets from one search (`--budgets`, issue 17): the pure parts.

With budgets the question is no longer "the cheapest plan above one accuracy
threshold" but "the most accurate plan at each of several costs". The
search's iterations are split among the budgets (`split_iterations`), and
each phase is scored by `CappedScore`: accuracy, with the phase's budget as
a cap on cost. Every evaluated plan is a candidate for every budget; the
pipeline (pipeline/family.py) chooses the members and nests them.

Nesting is a statement about the discrete states of the search space: every
coordinate is an amount of compression (channels removed lowest priority
first, ranks cut, weights zeroed), so plan S is nested in plan L -- S keeps a
subset of what L keeps, in every group and layer -- exactly when S's state
is at least L's in every coordinate (`is_nested`), and the nested plan
closest to any S is the coordinate-wise maximum of the two (`clamp`).

Pure numpy, like the rest of this package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from adans_toolchain.search.scoring import AdaNSScore

# Above its cap a plan's score is multiplied by exp(-OVER_CAP * (cost / cap - 1)): 2 % over the cap costs a
# factor e, 10 % over e^5. Steep enough that the good set gathers under the cap (near it accuracy changes by
# far less than a factor e per 2 % of cost), smooth enough that a phase whose first points all lie above it can
# still climb down to it.
OVER_CAP = 50.0
# Below the cap cost is only a tie-break: a 1e-3 weight on the cost reduction never outweighs one image of
# accuracy, but between plans of equal accuracy the cheaper scores higher.
TIE_BREAK = 1e-3
_MIN_LOG_FACTOR = -300.0  # keeps a hopeless plan's score positive (exp(-745) is 0.0 in float64)


@dataclass(frozen=True)
class CappedScore(AdaNSScore):
    """The score of one --budgets phase: f = exp(TIE_BREAK * dC - OVER_CAP * max(C / cap - 1, 0)) / max(dA, floor).

    The AdaNS score (scoring.py) with cost turned from a reward into a cap:
    within the cap only accuracy counts (the floor is small, one image's
    worth by default, so f rises with every image a plan gets right), above
    it f falls steeply. The accuracy threshold adds no penalty here: the
    members of small budgets are chosen below it, and the paper's
    exp(shortfall) would rank any plan over the cap that meets the threshold
    above every plan within it that does not. The threshold stays an
    attribute: the surrogate sampler scales accuracy around it.
    `cost_cap` is the phase's budget in the cost model's unit. f never falls
    as accuracy rises, as the surrogate sampler requires.
    """

    cost_cap: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.cost_cap > 0:
            raise ValueError("a budget's cost cap must be positive")

    def over_cap(self, cost) -> np.ndarray:
        """How far above the cap each cost is, as a fraction of the cap (0 within it)."""
        return np.maximum(np.asarray(cost, dtype=np.float64) / self.cost_cap - 1.0, 0.0)

    def __call__(self, accuracy, cost) -> np.ndarray:
        log_factor = TIE_BREAK * self.cost_reduction(cost) - OVER_CAP * self.over_cap(cost)
        drop = np.maximum(self.baseline_accuracy - np.asarray(accuracy, dtype=np.float64), self.accuracy_floor)
        return np.exp(np.maximum(log_factor, _MIN_LOG_FACTOR)) / drop

    def within(self, cost) -> np.ndarray:
        return np.asarray(cost, dtype=np.float64) <= self.cost_cap * (1 + 1e-12)

    def as_dict(self) -> dict:
        return dict(self.__dict__, budget=self.cost_cap / self.baseline_cost,
                    formula=f"exp({TIE_BREAK:g} dC - {OVER_CAP:g} max(C/cap - 1, 0)) / max(dA, floor) (a --budgets phase)")


def split_iterations(iterations: int, phases: int) -> list[int]:
    """--iterations split among the phases, largest budget first; the remainder goes to the smallest budgets,
    which start furthest from the one-rate rule's point."""
    if phases < 1 or iterations < phases:
        raise ValueError(f"{iterations} iterations cannot give each of {phases} budgets one")
    base, extra = divmod(iterations, phases)
    return [base + (1 if k >= phases - extra else 0) for k in range(phases)]


def is_nested(states: Sequence[int], outer: Sequence[int]) -> bool:
    """Whether the plan in `states` keeps a subset of what the plan in `outer` keeps (at least as compressed
    in every coordinate)."""
    return bool(np.all(np.asarray(states) >= np.asarray(outer)))


def clamp(x: np.ndarray, outer: np.ndarray) -> np.ndarray:
    """The point nearest `x` whose plan is nested in `outer`'s: the coordinate-wise maximum. Every coordinate's
    state is a non-decreasing function of x, so the states of the maximum are the maxima of the states."""
    return np.maximum(np.asarray(x, dtype=np.float64), np.asarray(outer, dtype=np.float64))


def point_within(start: np.ndarray, end: np.ndarray, cost: Callable[[np.ndarray], np.ndarray], cap: float, *,
                 weights: np.ndarray | None = None, rounds: int = 24) -> np.ndarray | None:
    """The first point within `cap` on a path from `start` to `end`, by bisection on the path (costs only: no
    evaluation); `start` itself when it is within; None when not even `end` is.

    Along the path coordinate j moves from start to end at a speed proportional to weights[j] (default: all
    alike, a straight segment) and stops at end; the slowest arrives at t = 1. Every coordinate only moves
    towards more compression, so the cost (MACs, memory) does not rise along the path; a latency table may make
    it wobble, and the point returned is within the cap either way. Unequal weights reach the cap at a point a
    straight segment does not: with --round-to, groups on one segment cross their rounding steps together, so
    its cost jumps where a skewed path's steps are finer.
    """
    start, end = np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64)
    speed = np.ones_like(start) if weights is None else np.asarray(weights, dtype=np.float64) / np.min(weights)

    def at(t: float) -> np.ndarray:
        return start + np.minimum(t * speed, 1.0) * (end - start)

    costs = np.asarray(cost(np.vstack([start, end])), dtype=np.float64)
    if costs[0] <= cap:
        return start
    if costs[1] > cap:
        return None
    lo, hi = 0.0, 1.0
    for _ in range(rounds):
        mid = (lo + hi) / 2
        if float(np.asarray(cost(at(mid)[None, :]))[0]) <= cap:
            hi = mid
        else:
            lo = mid
    return at(hi)


def pareto_front(costs: Sequence[float], accuracies: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both (cheaper or as cheap, and more accurate), by cost."""
    costs, accuracies = np.asarray(costs, dtype=np.float64), np.asarray(accuracies, dtype=np.float64)
    order = np.lexsort((-accuracies, costs))  # by cost, then the most accurate first
    front, best = [], -np.inf
    for i in order:
        if accuracies[i] > best:
            front.append(int(i))
            best = accuracies[i]
    return front


def rank_candidates(accuracies: Sequence[float], costs: Sequence[float]) -> list[int]:
    """Indices by accuracy, most accurate first; ties: the cheaper first, then the earlier."""
    accuracies, costs = np.asarray(accuracies, dtype=np.float64), np.asarray(costs, dtype=np.float64)
    return [int(i) for i in np.lexsort((np.arange(accuracies.size), costs, -accuracies))]
