"""The sampler interface and the read-only view of the search it works from.

A sampler is a pure function of (context, n, rng): everything it needs —
history, good set, α_t, box — is in the `SearchContext`, and its randomness
comes only from the generator it is handed. That is what makes a search
resumable from its journal alone: rebuild the context from the journal,
recreate the per-iteration generator from (seed, iteration), and the sampler
proposes exactly what it would have proposed in the uninterrupted run.

Subclasses are frozen keyword-only dataclasses (their fields are their
options, recorded in the journal header) and implement `_propose`; the public
`propose` handles the cases every sampler treats alike (n = 0, empty history)
and clips to the box.
"""

from __future__ import annotations

import abc
import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Hashable, Sequence

import numpy as np

from adans_toolchain.search.scoring import AdaNSScore
from adans_toolchain.search.selection import good_set, utility


def _read_only(values: Any, dtype: type) -> np.ndarray:
    array = np.array(values, dtype=dtype)
    array.setflags(write=False)
    return array


@dataclass(frozen=True)
class ScoreParts:
    """How f splits, for samplers that can use it: f(x) = score(accuracy(x), cost(x)).

    The accuracy is the expensive part, measured by evaluating x; the cost is
    exact and cheap (a cost model on the decoded plan), so a sampler may price
    candidates it never evaluates. Optional: a search without it is unchanged,
    and samplers that do not use it ignore it.

    cost          (n, dim) points -> (n,) costs in `score`'s unit; deterministic.
    score         the AdaNSScore that combines accuracy and cost into f.
    accuracy_key  the key of each evaluation's info that holds its accuracy.
    design_key    one point -> what identifies its design (the compiler: the
                  plan's discrete states); points with equal keys have equal
                  accuracy and cost, so one of them is all a search needs.
                  None: every point is its own design.
    """

    cost: Callable[[np.ndarray], np.ndarray]
    score: AdaNSScore
    accuracy_key: str = "accuracy"
    design_key: Callable[[np.ndarray], Hashable] | None = None


@dataclass(frozen=True, eq=False)  # holds arrays: compare fields explicitly
class SearchContext:
    """What a sampler sees when asked for iteration `iteration`'s batch.

    xs, fs, iterations  the history so far (every evaluation of iterations
                        < `iteration`), in evaluation order.
    good                indices into the history of S_g, by decreasing score.
    alpha               α_t that defined S_g.
    lower, upper        the search box.
    iteration           the iteration being proposed.
    batch_size          b of Algorithm 1 (the loop's `samples`).
    alpha_max           cap on α_t.
    score_parts         how f splits into accuracy and cost (None: f is a black box).
    accuracies          with score_parts, the history's accuracies, aligned with xs.

    Arrays are read-only copies.
    """

    xs: np.ndarray
    fs: np.ndarray
    iterations: np.ndarray
    good: np.ndarray
    alpha: float
    lower: np.ndarray
    upper: np.ndarray
    iteration: int
    batch_size: int
    alpha_max: float
    score_parts: ScoreParts | None = None
    accuracies: np.ndarray | None = None

    @classmethod
    def from_history(
        cls,
        xs: np.ndarray,
        fs: np.ndarray,
        iterations: np.ndarray,
        *,
        lower: np.ndarray,
        upper: np.ndarray,
        iteration: int,
        batch_size: int,
        alpha_max: float,
        score_parts: ScoreParts | None = None,
        accuracies: np.ndarray | None = None,
    ) -> "SearchContext":
        """Build the context, computing α_t and S_g by Algorithm 1."""
        lower = np.asarray(lower, dtype=np.float64)
        xs = np.asarray(xs, dtype=np.float64).reshape(-1, lower.size)
        if (score_parts is None) != (accuracies is None):
            raise ValueError("score_parts and the history's accuracies come together, or not at all")
        if accuracies is not None and np.shape(accuracies) != (xs.shape[0],):
            raise ValueError(f"{np.shape(accuracies)} accuracies for a history of {xs.shape[0]} samples")
        alpha, good = good_set(fs, batch_size, alpha_max)
        return cls(
            xs=_read_only(xs, np.float64),
            fs=_read_only(fs, np.float64),
            iterations=_read_only(iterations, np.int64),
            good=_read_only(good, np.int64),
            alpha=alpha,
            lower=_read_only(lower, np.float64),
            upper=_read_only(upper, np.float64),
            iteration=int(iteration),
            batch_size=int(batch_size),
            alpha_max=float(alpha_max),
            score_parts=score_parts,
            accuracies=None if accuracies is None else _read_only(accuracies, np.float64),
        )

    def at(self, iteration: int) -> "SearchContext":
        """The context as it was when iteration `iteration` was proposed.

        Lets a sampler replay its own past decisions (Zoom's splits) from the
        history alone instead of carrying state between iterations.
        """
        if not 0 <= iteration <= self.iteration:
            raise ValueError(f"iteration {iteration} is not in [0, {self.iteration}]")
        keep = self.iterations < iteration
        return SearchContext.from_history(
            self.xs[keep],
            self.fs[keep],
            self.iterations[keep],
            lower=self.lower,
            upper=self.upper,
            iteration=iteration,
            batch_size=self.batch_size,
            alpha_max=self.alpha_max,
            score_parts=self.score_parts,
            accuracies=None if self.accuracies is None else self.accuracies[keep],
        )

    @property
    def dim(self) -> int:
        return int(self.lower.size)

    @property
    def width(self) -> np.ndarray:
        """upper − lower; 0 along a fixed coordinate."""
        return self.upper - self.lower

    @property
    def scale(self) -> np.ndarray:
        """The width, with 1 along fixed coordinates: safe to divide by."""
        width = self.width
        return np.where(width > 0, width, 1.0)

    @property
    def n_history(self) -> int:
        return int(self.fs.size)

    @property
    def good_xs(self) -> np.ndarray:
        return self.xs[self.good]

    @property
    def good_fs(self) -> np.ndarray:
        return self.fs[self.good]

    @property
    def good_utility(self) -> np.ndarray:
        """Scores of S_g as the selection rule sees them (≥ 0; see selection.utility)."""
        return utility(self.fs)[self.good]


class Sampler(abc.ABC):
    """Proposes a batch of points in the box from a `SearchContext`.

    Subclasses: a frozen, keyword-only dataclass with a `name` class
    attribute, implementing `_propose(context, n, rng)` for a non-empty
    history. They must draw every random number from `rng` and keep no state
    between calls.
    """

    name: ClassVar[str] = "abstract"

    def propose(self, context: SearchContext, n: int, rng: np.random.Generator) -> np.ndarray:
        """Return n points, shape (n, dim), inside [lower, upper]."""
        if n < 0:
            raise ValueError(f"cannot propose {n} samples")
        if n == 0:
            return np.zeros((0, context.dim))
        if context.n_history == 0:
            # Nothing learned yet: every sampler starts uniform over the box.
            points = uniform_in_box(context.lower, context.upper, n, rng)
        else:
            points = np.asarray(self._propose(context, n, rng), dtype=np.float64)
        if points.shape != (n, context.dim):
            raise ValueError(
                f"sampler {self.name!r} proposed shape {points.shape}, expected {(n, context.dim)}"
            )
        return np.clip(points, context.lower, context.upper)

    @abc.abstractmethod
    def _propose(self, context: SearchContext, n: int, rng: np.random.Generator) -> np.ndarray:
        """Propose n points from a non-empty history (clipping is done by the caller)."""

    def options(self) -> dict[str, Any]:
        """Constructor options as JSON values, for the journal header."""
        if not dataclasses.is_dataclass(self):
            return {}
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return json.loads(json.dumps(values))


def uniform_in_box(lower: np.ndarray, upper: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n points drawn uniformly in the box."""
    return rng.uniform(lower, upper, size=(n, np.asarray(lower).size))


def apportion(n: int, fractions: Sequence[float]) -> list[int]:
    """Split n into integer counts proportional to `fractions`, summing to n exactly.

    Largest-remainder (Hamilton) rounding; ties go to the earlier part, so the
    split is deterministic. E.g. n=7 over (0.1, 0.45, 0.45) → [1, 3, 3];
    n=1 → [0, 1, 0].
    """
    weights = np.asarray(fractions, dtype=np.float64)
    if n < 0 or weights.ndim != 1 or weights.size == 0 or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"cannot apportion {n} over fractions {list(fractions)}")
    quotas = n * weights / weights.sum()
    counts = np.floor(quotas).astype(int)
    remainders = quotas - counts
    # Stable sort on -remainder: largest remainder first, earlier part on ties.
    for part in np.argsort(-remainders, kind="stable")[: n - int(counts.sum())]:
        counts[part] += 1
    return [int(c) for c in counts]
