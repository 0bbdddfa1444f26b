"""Boundary characterisation (paper section 4) and the directed initial batch.

Accuracy falls monotonically as any one site is compressed further, so for
each site, with every other site untouched, bisection finds theta[i]: the
largest compression that keeps accuracy above the threshold. All sites
bisect in lock-step, so each round is one batch of evaluations.

Our field measurements (papers/adans.md section 10) show that single-site
boundaries are loose while joint compression is not: with a strict threshold
the paper's directed init N(theta/2, theta/2) holds no feasible sample at
all. So after the per-site bisection we also bisect one scale s on the
diagonal s * theta, and seed the initial batch around that feasible point
as well as with the paper's directed samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

# Evaluates a batch of points x (n, d) and returns their accuracies (n,).
AccuracyFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Boundary:
    theta: np.ndarray  # per-site upper bound of x (fraction of units removed)
    diagonal_scale: float  # largest s in [0, 1] with s * theta feasible
    evaluations: int
    rounds: list[dict]

    def as_dict(self) -> dict:
        return {
            "theta": [float(t) for t in self.theta],
            "diagonal_scale": self.diagonal_scale,
            "evaluations": self.evaluations,
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
        evaluations += len(sites)
        ok = acc >= threshold
        lo[sites[ok]] = mid[sites[ok]]
        hi[sites[~ok]] = mid[sites[~ok]]
        log.append({"round": r, "sites": len(sites), "feasible": int(ok.sum())})
    # Largest x that decodes to the largest count known to be feasible.
    theta = np.minimum((lo + 0.999) / sizes, 1.0)
    s_lo, s_hi = 0.0, 1.0
    for r in range(diagonal_rounds):
        s = 0.5 * (s_lo + s_hi) if r else 1.0
        acc = float(np.asarray(accuracy((s * theta)[None, :]))[0])
        evaluations += 1
        if acc >= threshold:
            s_lo = s
            if r == 0:
                break  # the whole theta box corner is feasible
        else:
            s_hi = s
        log.append({"round": f"diagonal-{r}", "scale": s, "accuracy": acc})
    return Boundary(theta, s_lo, evaluations, log)


def max_boundary_evaluations(sizes: np.ndarray, *, rounds: int = 6, diagonal_rounds: int = 6) -> int:
    """The most evaluations `characterise_boundary` can spend: a site stops once its interval closes."""
    sizes = np.asarray(sizes, dtype=np.int64)
    # Bisection on (0, size) closes after ceil(log2(size)) halvings.
    per_site = np.minimum(rounds, np.ceil(np.log2(np.maximum(sizes, 1))).astype(np.int64))
    return int(per_site.sum()) + diagonal_rounds


def _x_for_removed(n_removed: int, size: int) -> float:
    return (n_removed + 0.5) / size


def initial_batch(boundary: Boundary, n: int, rng: np.random.Generator) -> np.ndarray:
    """The first batch: the best diagonal point, jitter around it, and the paper's directed samples."""
    theta = boundary.theta
    d = len(theta)
    anchor = boundary.diagonal_scale * theta
    n_paper = n // 2
    n_anchor = n - n_paper - 1
    paper = np.clip(rng.normal(theta / 2, theta / 2, size=(n_paper, d)), 0.0, theta)
    jitter = np.clip(anchor * rng.uniform(0.5, 1.5, size=(max(n_anchor, 0), d)), 0.0, theta)
    return np.vstack([anchor[None, :], jitter, paper])[:n]
