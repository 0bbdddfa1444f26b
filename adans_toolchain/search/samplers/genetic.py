"""AdaNS-Genetic (digest §6): selection, crossover and mutation on S_g.

* Selection: parents are drawn from S_g with probability
  ∝ (f_i − f_min)/Σ(f_j − f_min), f_min the worst score in S_g — so the worst
  good sample is never a parent (unless every score in S_g is equal, when all
  get equal weight). Without replacement (paper) a round draws each eligible
  sample at most once; when a batch needs more parents than there are
  eligible samples, further rounds are drawn. With replacement (ASCAI) every
  parent is an independent draw.
* Crossover: parents are paired in draw order, (0, 1), (2, 3), …; with
  probability p_cross a pair swaps each coordinate with probability p_swap.
  With an odd batch the last child has no partner and is not crossed.
* Mutation: each child, with probability p_mutate, has each coordinate, with
  probability p_tweak, moved by N(0, mutation_std × box width) — the paper's
  N(0, 0.2) on [0, 1] — or, with `discrete_steps` (ASCAI's integer genes), by
  ±1 step of that coordinate's step size, with a random sign.

Children that are neither crossed nor mutated are copies of their parents;
that is the algorithm (the paper evaluates them again), not a bug.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from adans_toolchain.search.samplers.base import Sampler, SearchContext

SELECTIONS = ("without_replacement", "with_replacement")


@dataclass(frozen=True, kw_only=True)
class GeneticSampler(Sampler):
    name: ClassVar[str] = "genetic"

    p_mutate: float = 0.2
    p_tweak: float = 0.05
    p_cross: float = 0.8
    p_swap: float = 0.2
    mutation_std: float = 0.2
    selection: str = "without_replacement"
    # One step size per coordinate, or one for all; None = continuous genes.
    discrete_steps: float | tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("p_mutate", "p_tweak", "p_cross", "p_swap"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
        if not self.mutation_std >= 0:
            raise ValueError(f"mutation_std must be ≥ 0, got {self.mutation_std!r}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.discrete_steps is not None:
            steps = np.atleast_1d(np.asarray(self.discrete_steps, dtype=np.float64))
            if steps.ndim != 1 or not (steps > 0).all() or not np.isfinite(steps).all():
                raise ValueError(f"discrete_steps must be positive numbers, got {self.discrete_steps!r}")
            # Normalise to a float or a tuple: hashable, and JSON-friendly for the header.
            normalised = float(steps[0]) if np.ndim(self.discrete_steps) == 0 else tuple(steps.tolist())
            object.__setattr__(self, "discrete_steps", normalised)

    def _propose(self, context: SearchContext, n: int, rng: np.random.Generator) -> np.ndarray:
        children = context.good_xs[self._select(context, n, rng)].copy()
        self._crossover(children, rng)
        self._mutate(children, context, rng)
        return children

    def _select(self, context: SearchContext, n: int, rng: np.random.Generator) -> np.ndarray:
        weights = context.good_fs - context.good_fs.min()
        if weights.sum() <= 0:
            weights = np.ones_like(weights)
        if self.selection == "with_replacement":
            return rng.choice(weights.size, size=n, p=weights / weights.sum())
        eligible = int(np.count_nonzero(weights))
        rounds = []
        while n > 0:
            take = min(n, eligible)
            rounds.append(rng.choice(weights.size, size=take, replace=False, p=weights / weights.sum()))
            n -= take
        return np.concatenate(rounds)

    def _crossover(self, children: np.ndarray, rng: np.random.Generator) -> None:
        n_pairs = children.shape[0] // 2
        if n_pairs == 0:
            return
        first = children[0 : 2 * n_pairs : 2]
        second = children[1 : 2 * n_pairs : 2]
        crossed = rng.random(n_pairs) < self.p_cross
        swap = (rng.random(first.shape) < self.p_swap) & crossed[:, None]
        first_copy = first.copy()
        first[swap] = second[swap]
        second[swap] = first_copy[swap]

    def _mutate(self, children: np.ndarray, context: SearchContext, rng: np.random.Generator) -> None:
        mutated = rng.random(children.shape[0]) < self.p_mutate
        tweak = (rng.random(children.shape) < self.p_tweak) & mutated[:, None]
        if self.discrete_steps is None:
            delta = rng.normal(0.0, 1.0, children.shape) * (self.mutation_std * context.width)
        else:
            steps = np.asarray(self.discrete_steps, dtype=np.float64)
            if steps.ndim == 1 and steps.size != context.dim:
                raise ValueError(f"discrete_steps has {steps.size} entries for a {context.dim}-D search")
            delta = rng.choice([-1.0, 1.0], size=children.shape) * steps
        children[tweak] += delta[tweak]
