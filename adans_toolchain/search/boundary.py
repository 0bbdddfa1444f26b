"""Boundary characterisation (paper section 4) and the directed initial batch.

Accuracy falls monotonically as any one site is compressed further, so for
each site, with every other site untouched, bisection finds theta[i]: the
largest compression known to keep accuracy above the threshold. All sites
bisect in lock-step, so each round is one batch of evaluations.

The cost is bounded (issue 16): a bisection starts at the one-rate rule's
level, which is feasible for each site alone since it is for all at once;
it runs `rounds` probes (default 1) above it; and beyond `max_groups`
coordinates, consecutive ones bisect together as one group, so a model with
120 sites pays at most max_groups * rounds + diagonal_rounds evaluations
(`max_boundary_evaluations`, announced before the compile starts).

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
    theta: np.ndarray  # per-coordinate x known feasible with every other coordinate at 0 (a lower bound)
    diagonal_scale: float  # largest s in [0, 1] with s * theta known feasible
    evaluations: int
    rounds: list[dict]
    complete: bool = True  # False: the evaluation budget ran out; theta is what was known by then
    groups: int = 0  # bisections run side by side: one per coordinate, or fewer when coordinates were grouped
    # Per coordinate, below where it is known infeasible alone (1.0 where nothing says so): every feasible
    # point lies under it, so it bounds the search's box where theta, a lower bound, would cut feasible points off.
    ceiling: np.ndarray | None = None

    def box(self) -> np.ndarray:
        return self.theta if self.ceiling is None else np.maximum(self.ceiling, self.theta)

    def as_dict(self) -> dict:
        return {
            "theta": [float(t) for t in self.theta],
            "diagonal_scale": self.diagonal_scale,
            "evaluations": self.evaluations,
            "complete": self.complete,
            "groups": self.groups,
        }


# Defaults of the compile's --boundary-rounds and --boundary-groups (pipeline/config.py).
BOUNDARY_ROUNDS = 1
BOUNDARY_GROUPS = 48
# The diagonal starts from a scale already known feasible (see `_known_feasible_scale`), so a few rounds resolve it.
DIAGONAL_ROUNDS = 4


def boundary_groups(sizes: np.ndarray, max_groups: int = BOUNDARY_GROUPS) -> list[np.ndarray]:
    """The coordinates bisected together: each alone, or, with more than `max_groups`, consecutive runs of them.

    Coordinates are in graph order (`CompressionSpace.sites`), so a group holds
    neighbouring layers. A coordinate with a single state has nothing to bisect.
    Depends on the sizes alone, so the cost can be announced before the one-rate rule runs.
    """
    searchable = np.flatnonzero(np.asarray(sizes) > 1)
    if len(searchable) <= max_groups:
        return [searchable[i : i + 1] for i in range(len(searchable))]
    return np.array_split(searchable, max_groups)


def characterise_boundary(
    accuracy: AccuracyFn,
    sizes: np.ndarray,  # discrete states per coordinate (CompressionSpace.levels)
    threshold: float,
    *,
    start: np.ndarray | None = None,  # a point known feasible (the one-rate rule's); None: the baseline
    rounds: int = BOUNDARY_ROUNDS,
    max_groups: int = BOUNDARY_GROUPS,
    diagonal_rounds: int = DIAGONAL_ROUNDS,
) -> Boundary:
    """Per-group bisection upward from `start`, `rounds` probes per group at most, then a diagonal bisection.

    Accuracy falls as any coordinate grows, so a coordinate alone at its level
    in a feasible point is feasible too: each bisection starts at `start`'s
    level, not at 0, and the rounds go to what is not yet known. A group's
    members move together (each over its own range above `start`) and are
    probed jointly with the rest at 0; a feasible joint probe holds for each
    member alone, so the group's level is a valid lower bound for every member.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    base = np.zeros(len(sizes), dtype=np.int64) if start is None else _count(np.asarray(start, dtype=np.float64), sizes)
    groups = boundary_groups(sizes, max_groups)
    # Each group bisects one integer step k in [0, steps]: k = 0 is `start` (feasible), k = steps one past
    # the largest legal count of its widest member (infeasible by convention).
    steps = np.array([int(np.max(sizes[g] - base[g])) for g in groups], dtype=np.int64)
    lo, hi = np.zeros(len(groups), dtype=np.int64), steps.copy()
    log: list[dict] = []
    evaluations, complete = 0, True
    for r in range(rounds):
        active = np.flatnonzero(hi - lo > 1)
        if not len(active):
            break
        mid = (lo + hi) // 2
        xs = np.zeros((len(active), len(sizes)))
        for row, g in enumerate(active):
            members = groups[g]
            xs[row, members] = _x_for_removed(_member_counts(base, sizes, members, mid[g], steps[g]), sizes[members])
        acc = np.asarray(accuracy(xs), dtype=np.float64)
        known = ~np.isnan(acc)
        evaluations += int(known.sum())
        ok = known & (acc >= threshold)
        lo[active[ok]] = mid[active[ok]]
        hi[active[known & ~ok]] = mid[active[known & ~ok]]
        log.append({"round": r, "probes": int(known.sum()), "feasible": int(ok.sum())})
        if not known.all():
            complete = False  # the budget is spent: the diagonal below is skipped too
            break
    counts = base.copy()
    for g, members in enumerate(groups):
        counts[members] = _member_counts(base, sizes, members, lo[g], steps[g])
    # Largest x that decodes to the largest count known to be feasible.
    theta = np.minimum((counts + 0.999) / sizes, 1.0)
    ceiling = _ceiling(groups, base, sizes, hi, steps)
    s_lo = _known_feasible_scale(theta, start)
    if not complete:
        return Boundary(theta, s_lo, evaluations, log, complete=False, groups=len(groups), ceiling=ceiling)
    scale, spent, complete = _diagonal_scale(accuracy, theta, threshold, diagonal_rounds, s_lo, log)
    return Boundary(theta, scale, evaluations + spent, log, complete, groups=len(groups), ceiling=ceiling)


def _ceiling(groups: list[np.ndarray], base: np.ndarray, sizes: np.ndarray, hi: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Largest x below the count known infeasible for each coordinate alone; 1.0 where none is known.

    A grouped probe that fails says only that its members together are
    infeasible, not any one of them, so grouped coordinates stay at 1.0.
    """
    ceiling = np.ones(len(sizes))
    for g, members in enumerate(groups):
        if len(members) == 1 and hi[g] < steps[g]:
            infeasible = _member_counts(base, sizes, members, hi[g], steps[g])
            ceiling[members] = np.minimum((infeasible - 0.001) / sizes[members], 1.0)
    return ceiling


def _member_counts(base: np.ndarray, sizes: np.ndarray, members: np.ndarray, k: int, steps: int) -> np.ndarray:
    """Removed units of each member at step k of `steps`: each moves over its own range above its start, so the
    widest moves one unit a step; at k = steps each would remove every unit."""
    return base[members] + (k * (sizes[members] - base[members])) // steps


def _count(x: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The state x decodes to in each coordinate (as `plan.space` decodes it; `search/` cannot import it)."""
    return np.minimum(np.floor(np.clip(x, 0.0, 1.0) * sizes + 1e-9).astype(np.int64), sizes - 1)


def _known_feasible_scale(theta: np.ndarray, start: np.ndarray | None) -> float:
    """The largest s with s * theta <= start in every coordinate: feasible without an evaluation (0 without start)."""
    if start is None:
        return 0.0
    return float(np.clip(np.min(np.asarray(start, dtype=np.float64) / theta), 0.0, 1.0))


def _diagonal_scale(accuracy: AccuracyFn, theta: np.ndarray, threshold: float, rounds: int, s_lo: float,
                    log: list[dict]) -> tuple[float, int, bool]:
    """Largest s with s * theta feasible (bisection above s_lo, s = 1 first); the evaluations spent; whether it finished."""
    s_hi = 1.0
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


def max_boundary_evaluations(sizes: np.ndarray, *, rounds: int = BOUNDARY_ROUNDS, max_groups: int = BOUNDARY_GROUPS,
                             diagonal_rounds: int = DIAGONAL_ROUNDS) -> int:
    """The most evaluations `characterise_boundary` can spend, whatever its start: a group stops once its interval closes.

    Reached when the start is the baseline, every group's probe is feasible
    (its interval is then widest, and closes last) and the diagonal's corner is not.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    # Bisection on (0, steps) closes after ceil(log2(steps)) halvings; steps is largest with nothing to start from.
    widest = np.array([int(np.max(sizes[g])) for g in boundary_groups(sizes, max_groups)], dtype=np.int64)
    per_group = np.minimum(rounds, np.ceil(np.log2(widest)).astype(np.int64)) if len(widest) else widest
    return int(per_group.sum()) + diagonal_rounds


def _x_for_removed(n_removed: np.ndarray, size: np.ndarray) -> np.ndarray:
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
