"""AdaNS-Gaussian (digest §6), the paper's best sampler.

Each batch is split into three parts (largest-remainder rounding, see
`apportion`):

* Uniform (10%): uniform over the box, so the search never stops exploring.
* Local (45%): a mixture of Gaussians centred on the members of S_g, picked
  with probability ∝ score, with one shared diagonal standard deviation per
  dimension equal to the span of S_g there (eq. 12: σ² = span²). As S_g
  tightens around the optimum, the span — and the step — shrinks with it.
* Cross (45%): for a pair (x1, x2) of S_g, draw from
  N((x1 + x2)/2, diag(((x1 − x2)/2)²)): explores between good samples.

Pair strategies for Cross (`pair_strategy`); the i-th Cross sample uses pair i:

1. both members uniformly at random from S_g (distinct);
2. neighbours in score order: (s_i, s_{i+1}), cycling through S_g sorted by
   decreasing score;
3. x1 = the best sample always, x2 uniformly at random from the rest;
4. (default, the best in the paper) x1 = s_i cycling through S_g in order of
   decreasing score, x2 uniformly at random from the rest of S_g.

"The rest" excludes x1: a pair of identical points would give a zero
standard deviation and re-propose x1 itself.

Guards the paper leaves open: a span of zero (S_g of one point, or of points
sharing a coordinate) would make Local samples exact copies, so the standard
deviation is floored at `min_std` × box width; and with |S_g| < 2 no pair
exists, so the Cross share is drawn from Local instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from adans_toolchain.search.samplers.base import Sampler, SearchContext, apportion, uniform_in_box

PAIR_STRATEGIES = (1, 2, 3, 4)


@dataclass(frozen=True, kw_only=True)
class GaussianSampler(Sampler):
    name: ClassVar[str] = "gaussian"

    uniform_fraction: float = 0.10
    local_fraction: float = 0.45
    cross_fraction: float = 0.45
    pair_strategy: int = 4
    min_std: float = 1e-3

    def __post_init__(self) -> None:
        fractions = (self.uniform_fraction, self.local_fraction, self.cross_fraction)
        if min(fractions) < 0 or sum(fractions) <= 0:
            raise ValueError(f"gaussian sampler fractions must be ≥ 0 and not all 0, got {fractions}")
        if self.pair_strategy not in PAIR_STRATEGIES:
            raise ValueError(f"pair_strategy must be one of {PAIR_STRATEGIES}, got {self.pair_strategy!r}")
        if not self.min_std >= 0:
            raise ValueError(f"min_std must be ≥ 0, got {self.min_std!r}")

    def _propose(self, context: SearchContext, n: int, rng: np.random.Generator) -> np.ndarray:
        n_uniform, n_local, n_cross = apportion(
            n, (self.uniform_fraction, self.local_fraction, self.cross_fraction)
        )
        if context.good.size < 2:
            n_local, n_cross = n_local + n_cross, 0
        parts = [
            uniform_in_box(context.lower, context.upper, n_uniform, rng),
            self._local(context, n_local, rng),
            self._cross(context, n_cross, rng),
        ]
        return np.concatenate(parts, axis=0)

    def _local(self, context: SearchContext, n: int, rng: np.random.Generator) -> np.ndarray:
        good_xs = context.good_xs
        weights = context.good_utility
        # All-equal utilities (e.g. S_g = {worst} after the f ≤ 0 shift) carry
        # no preference: fall back to equal weights.
        p = weights / weights.sum() if weights.sum() > 0 else None
        centres = good_xs[rng.choice(good_xs.shape[0], size=n, p=p)]
        span = good_xs.max(axis=0) - good_xs.min(axis=0)
        std = np.maximum(span, self.min_std * context.width)
        return centres + std * rng.standard_normal((n, context.dim))

    def _cross(self, context: SearchContext, n: int, rng: np.random.Generator) -> np.ndarray:
        if n == 0:
            return np.zeros((0, context.dim))
        first, second = _pairs(self.pair_strategy, context.good.size, n, rng)
        x1 = context.good_xs[first]
        x2 = context.good_xs[second]
        return (x1 + x2) / 2 + np.abs(x1 - x2) / 2 * rng.standard_normal((n, context.dim))


def _pairs(strategy: int, k: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into S_g sorted by decreasing score) of n pairs; needs k ≥ 2."""
    cycle = np.arange(n) % k
    if strategy == 1:
        first = rng.integers(0, k, size=n)
    elif strategy == 2:
        return cycle, (cycle + 1) % k
    elif strategy == 3:
        first = np.zeros(n, dtype=np.int64)
    else:
        first = cycle
    return first, _other(first, k, rng)


def _other(first: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random position in [0, k) different from each entry of `first`."""
    draw = rng.integers(0, k - 1, size=first.size)
    return draw + (draw >= first)
