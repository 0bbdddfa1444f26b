"""Boundary characterisation (paper section 4) and the directed initial batch.

Accuracy falls monotonically as any one site is compressed further, so for
each site, with every other site untouched, bisection finds theta[i]: the
largest compression that keeps accuracy above the threshold. All sites
bisect in lock-step, so each round is one batch of evaluations.

Our field measurements (the project's notes on the paper, not shipped) show that single-site
boundaries are loose while joint compression is not: with a strict threshold
the paper's directed init N(theta/2, theta/2) holds no feasible sample at
all. So after the per-site bisection we also bisect one scale s on the
diagonal s * theta, and seed the initial batch around that feasible point
as well as with the paper's directed samples.

Before either, `one_rate_rule` finds the plain baseline every search must
beat: one rate r for every coordinate (x = r * 1), bisected on r. The search
starts from it (its point leads the initial batch), so the search's best is
never worse than the rule.

An accuracy function may return NaN for a point it did not evaluate because
the compile's evaluation budget (--max-evaluations) ran out: every bisection
here then stops with what it knows and says it is incomplete.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

# Evaluates a batch of points x (n, d) and returns their accuracies (n,); NaN: not evaluated (budget spent).
AccuracyFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class OneRate:
    """The one-rate rule: the largest rate r found with x = r * 1 feasible (0: none is, the baseline)."""

    rate: float
    accuracy: float | None  # at `rate`; None when rate is 0 (never evaluated: that is the baseline)
    evaluations: int  # points evaluated (a point the budget refused is not one)
    rounds: list[dict]
    complete: bool = True  # False: the evaluation budget ran out before the last round
    mask: tuple[bool, ...] | None = None  # the coordinates the rate applies to (None: all); the rest stay 0

    def point(self, dim: int) -> np.ndarray:
        return self.rate * _mask(self.mask, dim)

    def as_dict(self) -> dict:
        return {"rate": self.rate, "accuracy": self.accuracy, "evaluations": self.evaluations,
                "rounds": self.rounds, "complete": self.complete,
                "mask": None if self.mask is None else [bool(m) for m in self.mask]}


def _mask(mask: tuple[bool, ...] | None, dim: int) -> np.ndarray:
    return np.ones(dim) if mask is None else np.asarray(mask, dtype=np.float64)


def one_rate_rule(
    accuracy: AccuracyFn, dim: int, threshold: float, *, rounds: int = 7, mask: tuple[bool, ...] | None = None
) -> OneRate:
    """Bisection on one rate r in [0, 1] applied to every coordinate (or those `mask` selects): the largest feasible r within 2**-rounds.

    r = 0 is the baseline, feasible by construction, so it is never evaluated;
    nor is r = 1 (every site down to one unit), which no threshold survives.
    Accuracy falls as r grows (every coordinate means more compression), so
    bisection needs `rounds` evaluations where a sweep would need 2**rounds.
    """
    lo, hi, at_lo = 0.0, 1.0, None
    log: list[dict] = []
    direction = _mask(mask, dim)
    for _ in range(rounds):
        r = 0.5 * (lo + hi)
        acc = float(np.asarray(accuracy((r * direction)[None, :]), dtype=np.float64)[0])
        if np.isnan(acc):
            return OneRate(lo, at_lo, len(log), log, complete=False, mask=mask)
        log.append({"rate": r, "accuracy": acc})
        if acc >= threshold:
            lo, at_lo = r, acc
        else:
            hi = r
    return OneRate(lo, at_lo, len(log), log, mask=mask)


@dataclass(frozen=True)
class Boundary:
    theta: np.ndarray  # per-site upper bound of x (fraction of units removed)
    diagonal_scale: float  # largest s in [0, 1] with s * theta feasible
    evaluations: int
    rounds: list[dict]
    complete: bool = True  # False: the evaluation budget ran out; theta is what was known by then

    def as_dict(self) -> dict:
        return {
            "theta": [float(t) for t in self.theta],
            "diagonal_scale": self.diagonal_scale,
            "evaluations": self.evaluations,
            "complete": self.complete,
        }


def characterise_boundary(
    accuracy: AccuracyFn,
    sizes: np.ndarray,  # discrete states per coordinate (CompressionSpace.levels)
    threshold: float,
    *,
    rounds: int = 6,
    diagonal_rounds: int = 6,
) -> Boundary:
    """Per-site bisection on the number of removed units, then a diagonal bisection."""
    sizes = np.asarray(sizes, dtype=np.int64)
    d = len(sizes)
    lo = np.zeros(d, dtype=np.int64)  # known feasible (nothing removed is the baseline)
    hi = sizes.copy()  # known infeasible, or one past the largest legal count (size - 1)
    log = []
    evaluations = 0
    complete = True
    for r in range(rounds):
        active = hi - lo > 1
        if not active.any():
            break
        mid = (lo + hi) // 2
        xs = np.zeros((int(active.sum()), d))
        sites = np.flatnonzero(active)
        for row, i in enumerate(sites):
            xs[row, i] = _x_for_removed(mid[i], sizes[i])
        acc = np.asarray(accuracy(xs), dtype=np.float64)
        known = ~np.isnan(acc)
        evaluations += int(known.sum())
        ok = known & (acc >= threshold)
        lo[sites[ok]] = mid[sites[ok]]
        hi[sites[known & ~ok]] = mid[sites[known & ~ok]]
        log.append({"round": r, "sites": int(known.sum()), "feasible": int(ok.sum())})
        if not known.all():
            complete = False  # the budget is spent: the diagonal below is skipped too
            break
    # Largest x that decodes to the largest count known to be feasible.
    theta = np.minimum((lo + 0.999) / sizes, 1.0)
    if not complete:
        return Boundary(theta, 0.0, evaluations, log, complete=False)
    scale, spent, complete = _diagonal_scale(accuracy, theta, threshold, diagonal_rounds, log)
    return Boundary(theta, scale, evaluations + spent, log, complete)


def _diagonal_scale(accuracy: AccuracyFn, theta: np.ndarray, threshold: float, rounds: int,
                    log: list[dict]) -> tuple[float, int, bool]:
    """Largest s with s * theta feasible (bisection, s = 1 first); the evaluations spent; whether it finished."""
    s_lo, s_hi = 0.0, 1.0
    for r in range(rounds):
        s = 0.5 * (s_lo + s_hi) if r else 1.0
        acc = float(np.asarray(accuracy((s * theta)[None, :]))[0])
        if np.isnan(acc):
            return s_lo, r, False
        if acc >= threshold:
            s_lo = s
            if r == 0:
                return s_lo, 1, True  # the whole theta box corner is feasible
        else:
            s_hi = s
        log.append({"round": f"diagonal-{r}", "scale": s, "accuracy": acc})
    return s_lo, rounds, True


def max_boundary_evaluations(sizes: np.ndarray, *, rounds: int = 6, diagonal_rounds: int = 6) -> int:
    """The most evaluations `characterise_boundary` can spend: a site stops once its interval closes."""
    sizes = np.asarray(sizes, dtype=np.int64)
    # Bisection on (0, size) closes after ceil(log2(size)) halvings.
    per_site = np.minimum(rounds, np.ceil(np.log2(np.maximum(sizes, 1))).astype(np.int64))
    return int(per_site.sum()) + diagonal_rounds


def _x_for_removed(n_removed: int, size: int) -> float:
    return (n_removed + 0.5) / size


def initial_batch(boundary: Boundary, n: int, rng: np.random.Generator, start: np.ndarray | None = None) -> np.ndarray:
    """The first batch: the best diagonal point, jitter around it, and the paper's directed samples.

    With `start` (the one-rate rule's point) it leads the batch in place of
    one jitter sample: it and the diagonal point are already evaluated, so a
    batch cut short by the evaluation budget still holds them.
    """
    theta = boundary.theta
    d = len(theta)
    anchor = boundary.diagonal_scale * theta
    n_paper = n // 2
    n_anchor = n - n_paper - 1 - (start is not None)
    paper = np.clip(rng.normal(theta / 2, theta / 2, size=(n_paper, d)), 0.0, theta)
    jitter = np.clip(anchor * rng.uniform(0.5, 1.5, size=(max(n_anchor, 0), d)), 0.0, theta)
    first = [] if start is None else [np.asarray(start, dtype=np.float64)[None, :]]
    return np.vstack([*first, anchor[None, :], jitter, paper])[:n]
