"""AdaNS with a surrogate screen (`adans`): propose many, evaluate the promising.

The paper fits a reconstruction f̃ of the score every iteration and only
reports it. Here a model fitted on the history decides which proposals are
worth an evaluation. Each iteration, `explore_fraction` of the batch (10 %,
the paper's uniform share) is drawn uniformly in the box and not screened —
the model can be wrong where it has seen nothing, and on a 2-D function
with one narrow peak among broad decoys these draws are what finds the peak
(tools/bench_samplers.py part 1). The rest:

1. Pool. `pool_factor` × n candidates: AdaNS-Gaussian's own proposals (the
   paper's sampler, unchanged) and, for `local_fraction` of the pool, small
   moves around the best samples so far (a few coordinates at a time, steps
   from 0.5 % to 20 % of the box width), which refine the feasibility
   boundary the optimum of a pruning score sits on. With a design key (the
   compiler's: a plan's discrete states) candidates of a design already
   evaluated, or already in the pool, are dropped before anything else.
2. Surrogate. A Gaussian process fitted on the history (at most
   `max_points` samples: the most recent half and the best of the rest).
   Its kernel is a squared exponential plus a linear kernel on the features
   (u, u²) of the point u in the unit box: the linear part carries the broad
   trend — a pruning accuracy falls roughly additively, and convexly, with
   each layer's compression — and the squared exponential what the trend
   misses. Kernel weights, length scale and noise are chosen on a small grid
   by marginal likelihood, the signal scale in closed form.
3. Screen. Each candidate gets its expected improvement over the best score
   so far, E[max(0, f(x) − f*)], as P(y > y*) · E[f(x) − f* | y > y*]: y*
   is the least modelled value at which the candidate would beat f* (found
   by bisection, since f never falls as y rises; +inf when nothing would
   do), the probability is in closed form and ranked on a log scale, so
   candidates far in the tail are still told apart rather than all rounding
   to 0, and the conditional mean is a quadrature over the truncated normal.
   The uncertainty in that expectation is the exploration term: an
   unexplored candidate may improve even if its mean does not.
4. Batch. The n best are picked one at a time; after each pick the model is
   told the pick's predicted value ("kriging believer"), which shrinks the
   uncertainty near it, so the next pick is elsewhere unless it is clearly
   better there: no near-duplicates in a batch. Candidates that cannot
   improve come last, in pool order.

What is modelled depends on what the search knows (`SearchContext`):

* With `score_parts` (the compiler passes them): the ACCURACY, whose
  history comes from each evaluation's info, and never the score. The cost
  of every candidate is exact (the cost model on its plan), and the score
  combines the two exactly as the evaluation will, so a candidate that would
  not improve even if feasible is never paid for. Accuracy is modelled on a
  scale that is linear within a few allowed drops of the threshold and
  logarithmic beyond (asinh of the shortfall in allowed drops), so collapsed
  plans — 10 % accuracy, or early-rejected ones with an estimate on part of
  VAL — do not dominate the fit near the threshold, where it matters. With
  `monotone` (default), the fact that more compression never raises
  accuracy bounds every prediction by the evaluated points: a candidate that
  compresses every coordinate at least as much as an evaluated point scores
  at most that point's accuracy, and one that compresses every coordinate at
  most as much scores at least it.
* Without: log f when every score is positive (else f) is modelled
  directly, a black-box search like the other samplers.

Determinism: every random number comes from the generator the loop hands
over (the pool), and the fit and the screen are deterministic functions of
the history, so a resumed search proposes exactly what an uninterrupted one
would (the conformance suite checks it; the history's accuracies are in the
journal's infos). Floating-point reductions may differ between BLAS builds
or thread counts, which could flip a near-tie: resume on the same machine.

Cost per iteration, with N ≤ max_points history samples, P pool candidates
and G = 64 kernel settings: O(G·N³) for the fit, O(P·N·(N + d) + n·P·N)
for the screen, plus the cost function on the P candidates (in the
compiler the cost model on P decoded plans: 5–25 ms each for ResNet-20/56
on a busy CPU core, so 2–8 s per iteration at b = 16, pool_factor 20).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import numpy as np

from adans_toolchain.search.reconstruction import select_centres
from adans_toolchain.search.samplers.base import Sampler, ScoreParts, SearchContext, uniform_in_box
from adans_toolchain.search.samplers.gaussian import GaussianSampler

TAIL_NODES = 32  # quadrature nodes of the mean improvement, given an improvement
TAIL_SPAN = 8.0  # sd the quadrature reaches beyond the improvement threshold (at z* ≥ 1: TAIL_SPAN / z*)
MIN_SD = 1e-9  # a predictive sd is at least this, so z* stays finite at an evaluated point
BISECTIONS = 60  # halvings of the bracket when solving for each candidate's improvement threshold
BRACKET = 20.0  # standardised target units either side of the mean a threshold is sought in
MAX_LOG_SCORE = 700.0  # exp stays finite below it
MAX_ASINH = 50.0  # sinh(50) ≈ 3e21 allowed drops: far beyond any accuracy, and finite
LOCAL_STEPS = (0.005, 0.2)  # smallest and largest local step, as fractions of the box width
LOCAL_COORDINATES = 8  # expected number of coordinates one local move changes
LOCAL_CENTRES = 5  # local moves start from this many of the best samples
# Kernel grid: weight of the linear (trend) part, squared-exponential length
# scale per coordinate in the unit box, and noise variance; all relative to
# the standardised targets' signal variance, which is fitted in closed form.
LINEAR_WEIGHTS = (0.0, 0.5, 0.9, 0.99)
LENGTH_SCALES = (0.05, 0.1, 0.2, 0.4)
NOISES = (1e-6, 1e-4, 1e-2, 1e-1)


@dataclass(frozen=True, kw_only=True)
class SurrogateSampler(Sampler):
    """AdaNS-Gaussian proposals screened by a surrogate (see the module docstring).

    pool_factor     candidates screened per sample proposed.
    local_fraction  share of the pool drawn around the best samples; the rest is AdaNS-Gaussian's.
    max_points      history samples the surrogate is fitted on, at most.
    monotone        with score parts, bound predicted accuracies by the evaluated points
                    (more compression never raises accuracy).
    explore_fraction  share of each batch drawn uniformly in the box and not screened.
    """

    name: ClassVar[str] = "adans"

    pool_factor: int = 20
    local_fraction: float = 0.5
    max_points: int = 300
    monotone: bool = True
    explore_fraction: float = 0.1

    def __post_init__(self) -> None:
        for option in ("pool_factor", "max_points"):
            value = getattr(self, option)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{option} must be an integer ≥ 1, got {value!r}")
        for option in ("local_fraction", "explore_fraction"):
            if not 0.0 <= getattr(self, option) <= 1.0:
                raise ValueError(f"{option} must be in [0, 1], got {getattr(self, option)!r}")
        if not isinstance(self.monotone, bool):
            raise ValueError(f"monotone must be true or false, got {self.monotone!r}")

    def _propose(self, context: SearchContext, n: int, rng: np.random.Generator) -> np.ndarray:
        n_explore = int(round(n * self.explore_fraction))
        explore = uniform_in_box(context.lower, context.upper, n_explore, rng)
        n_screened = n - n_explore
        pool = new_designs(
            context, candidate_pool(context, max(n, self.pool_factor * n), self.local_fraction, rng), n_screened
        )
        if context.n_history < 2 or not (context.width > 0).any():
            # Nothing to fit, or nothing to choose: AdaNS-Gaussian's own proposals first.
            return np.concatenate([explore, pool[:n_screened]])
        view = _view(context, self.monotone)
        keep = select_centres(context.fs, self.max_points)
        unit = _unit(context)
        process = GaussianProcess.fit(unit(context.xs[keep]), view.targets[keep])
        picks = pick_batch(process, unit(pool), view.scorer(pool), float(context.fs.max()), n_screened)
        return np.concatenate([explore, pool[picks]])


# -- the pool ------------------------------------------------------------------------------


def candidate_pool(context: SearchContext, size: int, local_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """`size` candidates: AdaNS-Gaussian's proposals, then local moves around the best samples."""
    n_local = int(round(size * local_fraction))
    gaussian = GaussianSampler().propose(context, size - n_local, rng)
    local = local_moves(context, n_local, rng)
    return np.clip(np.concatenate([gaussian, local]), context.lower, context.upper)


def new_designs(context: SearchContext, pool: np.ndarray, n: int) -> np.ndarray:
    """The pool without candidates of a design already evaluated or earlier in the pool.

    With a design key (the compiler's plans are discrete: many x decode to
    one plan) a batch would otherwise spend evaluations on plans it knows.
    Order is kept; if fewer than n remain, the earliest dropped ones fill up.
    """
    key = None if context.score_parts is None else context.score_parts.design_key
    if key is None:
        return pool
    seen = {key(x) for x in context.xs}
    fresh = []
    for i, x in enumerate(pool):
        design = key(x)
        if design not in seen:
            seen.add(design)
            fresh.append(i)
    dropped = np.setdiff1d(np.arange(pool.shape[0]), fresh)
    return pool[np.sort(np.concatenate([fresh, dropped[: max(0, n - len(fresh))]]).astype(np.int64))]


def local_moves(context: SearchContext, n: int, rng: np.random.Generator) -> np.ndarray:
    """n points, each a best sample with a few coordinates moved by one random step size.

    Few coordinates at a time because in a high-dimensional box a move of
    every coordinate is almost always worse (the trust-region idea of TuRBO);
    step sizes log-uniform over two decades so one pool serves both coarse
    and fine refinement.
    """
    free = np.flatnonzero(context.width > 0)
    if n == 0 or free.size == 0:
        return np.tile(context.xs[context.good[:1]], (n, 1))
    centres = context.xs[context.good[np.arange(n) % min(LOCAL_CENTRES, context.good.size)]]
    steps = np.exp(rng.uniform(*np.log(LOCAL_STEPS), size=(n, 1)))
    moved = rng.random((n, free.size)) < min(1.0, LOCAL_COORDINATES / free.size)
    moved[np.arange(n), rng.integers(0, free.size, size=n)] = True  # every move changes something
    points = centres.copy()
    points[:, free] += moved * steps * context.width[free] * rng.standard_normal((n, free.size))
    return points


# -- what is modelled --------------------------------------------------------------------------


Scorer = Callable[[np.ndarray], np.ndarray]  # (P, K) modelled values of P candidates -> (P, K) scores


@dataclass(frozen=True)
class _View:
    """The modelled quantity: its history (`targets`) and, for a pool, how a candidate's value scores."""

    targets: np.ndarray
    scorer: Callable[[np.ndarray], Scorer]


def _view(context: SearchContext, monotone: bool) -> _View:
    if context.score_parts is not None:
        return _accuracy_view(context, context.score_parts, monotone)
    positive = bool((context.fs > 0).all())
    targets = np.log(context.fs) if positive else context.fs.copy()

    def scorer(pool: np.ndarray) -> Scorer:
        # Far from the data a wide predictive spread must not overflow exp.
        return (lambda values: np.exp(np.minimum(values, MAX_LOG_SCORE))) if positive else (lambda values: values)

    return _View(targets, scorer)


def _accuracy_view(context: SearchContext, parts: ScoreParts, monotone: bool) -> _View:
    score = parts.score
    threshold = score.accuracy_threshold
    # One allowed drop is the unit of the scale; an absolute threshold at or
    # above the baseline has none, so one point stands in.
    unit = score.baseline_accuracy - threshold if score.baseline_accuracy > threshold else 1.0
    accuracies = context.accuracies

    def scorer(pool: np.ndarray) -> Scorer:
        costs = np.asarray(parts.cost(pool), dtype=np.float64).reshape(-1, 1)
        lowest, highest = dominance_bounds(pool, context.xs, accuracies) if monotone else (-np.inf, np.inf)

        def to_score(values: np.ndarray) -> np.ndarray:
            predicted = threshold + unit * np.sinh(np.clip(values, -MAX_ASINH, MAX_ASINH))
            bounded = np.minimum(np.maximum(predicted, np.reshape(lowest, (-1, 1))), np.reshape(highest, (-1, 1)))
            with np.errstate(over="ignore"):  # a hopeless candidate's penalty overflows to inf: it scores 0
                return score(bounded, costs)

        return to_score

    return _View(np.arcsinh((accuracies - threshold) / unit), scorer)


def dominance_bounds(points: np.ndarray, xs: np.ndarray, accuracies: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lowest, highest) accuracy each point can have if accuracy never rises with compression.

    highest = min accuracy of the evaluated samples the point compresses at
    least as much as, everywhere; lowest = max accuracy of those it
    compresses at most as much as. ±inf where there are none.
    """
    lowest = np.full(points.shape[0], -np.inf)
    highest = np.full(points.shape[0], np.inf)
    for x, accuracy in zip(xs, accuracies):
        at_least = (points >= x).all(axis=1)
        at_most = (points <= x).all(axis=1)
        highest[at_least] = np.minimum(highest[at_least], accuracy)
        lowest[at_most] = np.maximum(lowest[at_most], accuracy)
    return lowest, highest


def _unit(context: SearchContext):
    """Map points to their free coordinates in the unit box (a fixed coordinate carries nothing)."""
    free = np.flatnonzero(context.width > 0)
    return lambda xs: ((np.asarray(xs, dtype=np.float64) - context.lower) / context.scale)[:, free]


# -- the Gaussian process -----------------------------------------------------------------------


def _features(unit: np.ndarray) -> np.ndarray:
    """(u, u²) per coordinate, scaled so a row's squared norm is at most 1."""
    return np.hstack([unit, unit**2]) / np.sqrt(2 * unit.shape[1])


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d2 = np.sum(a**2, axis=1)[:, None] + np.sum(b**2, axis=1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d2, 0.0)


@dataclass(frozen=True)
class GaussianProcess:
    """A fitted GP on standardised targets: k = s²(w·φφ' + (1 − w)·exp(−‖u − u'‖²/(2ℓ²d)))."""

    unit: np.ndarray  # (N, d) training inputs
    linear_weight: float
    length: float
    signal: float  # s², in standardised units
    noise: float  # relative to s²
    inverse_factor: np.ndarray  # L⁻¹, K = L Lᵀ (without s²)
    weights: np.ndarray  # K⁻¹ y_standardised
    offset: float
    spread: float

    @classmethod
    def fit(cls, unit: np.ndarray, targets: np.ndarray) -> "GaussianProcess":
        offset = float(np.mean(targets))
        spread = float(np.std(targets)) or 1.0
        y = (targets - offset) / spread
        linear = _features(unit) @ _features(unit).T
        best = None
        for length in LENGTH_SCALES:
            bump = np.exp(-_squared_distances(unit, unit) / (2 * length**2 * unit.shape[1]))
            for weight, noise in itertools.product(LINEAR_WEIGHTS, NOISES):
                kernel = weight * linear + (1 - weight) * bump
                kernel[np.diag_indices_from(kernel)] += noise
                try:
                    factor = np.linalg.cholesky(kernel)
                except np.linalg.LinAlgError:
                    continue
                whitened = np.linalg.solve(factor, y)
                # Signal variance in closed form; the log marginal likelihood up to constants.
                signal = max(float(whitened @ whitened) / y.size, 1e-12)
                evidence = -0.5 * y.size * np.log(signal) - np.sum(np.log(np.diag(factor)))
                if best is None or evidence > best[0]:
                    best = (evidence, weight, length, noise, signal, factor)
        if best is None:
            raise np.linalg.LinAlgError("no kernel setting gave a positive definite matrix")
        _, weight, length, noise, signal, factor = best
        inverse = np.linalg.inv(factor)
        return cls(unit, weight, length, signal, noise, inverse, inverse.T @ (inverse @ y), offset, spread)

    def kernel(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Prior covariance (without s²) between the rows of a and b."""
        bump = np.exp(-_squared_distances(a, b) / (2 * self.length**2 * a.shape[1]))
        return self.linear_weight * _features(a) @ _features(b).T + (1 - self.linear_weight) * bump

    def prior_variance(self, a: np.ndarray) -> np.ndarray:
        return self.linear_weight * np.sum(_features(a) ** 2, axis=1) + (1 - self.linear_weight)

    def posterior(self, points: np.ndarray) -> "Posterior":
        """Mean, variance and what later conditioning needs, at `points` (unit box)."""
        cross = self.kernel(points, self.unit)  # (P, N)
        projected = self.inverse_factor @ cross.T  # (N, P)
        mean = self.offset + self.spread * (cross @ self.weights)
        variance = self.signal * np.maximum(self.prior_variance(points) - np.sum(projected**2, axis=0), 0.0)
        return Posterior(self, points, projected, mean, variance * self.spread**2)


@dataclass
class Posterior:
    """The GP's posterior over a pool, conditioned on fantasy observations one pick at a time."""

    process: GaussianProcess
    points: np.ndarray
    projected: np.ndarray
    mean: np.ndarray
    variance: np.ndarray  # in target units²
    covariances: list[np.ndarray] = field(default_factory=list)  # with each pick, after the earlier picks
    pivots: list[float] = field(default_factory=list)  # each pick's variance when picked, plus noise

    def condition_on(self, pick: int) -> None:
        """Believe the model at `pick`: its mean stays, the variance around it shrinks.

        Posterior covariance with the pick, after the earlier picks, by the
        rank-one updates c_j = k(·, x_j) − Σ_i c_i c_i[j] / v_i.
        """
        gp = self.process
        covariance = gp.signal * gp.spread**2 * (
            gp.kernel(self.points, self.points[pick : pick + 1])[:, 0] - self.projected.T @ self.projected[:, pick]
        )
        for earlier, pivot in zip(self.covariances, self.pivots):
            covariance = covariance - earlier * earlier[pick] / pivot
        # The pick's own variance, plus the noise a real observation would carry.
        pivot = float(covariance[pick]) + gp.noise * gp.signal * gp.spread**2
        self.covariances.append(covariance)
        self.pivots.append(pivot)
        self.variance = np.maximum(self.variance - covariance**2 / pivot, 0.0)


# -- the screen ---------------------------------------------------------------------------------


def improvement_thresholds(to_score: Scorer, size: int, incumbent: float, low: float, high: float) -> np.ndarray:
    """Per candidate (of `size`), the least modelled value y* at which its score would beat the incumbent.

    The score never falls as the modelled value rises (accuracy, or log f),
    so bisection finds it. +inf where not even `high` would do: no outcome
    of that candidate can improve (in the compiler: a plan no cheaper than
    the best feasible one, or one its dominance bounds rule out).
    """

    def beats(values: np.ndarray) -> np.ndarray:
        return to_score(values[:, None])[:, 0] > incumbent

    lows, highs = np.full(size, low), np.full(size, high)
    for _ in range(BISECTIONS):
        middle = (lows + highs) / 2
        above = beats(middle)
        highs = np.where(above, middle, highs)
        lows = np.where(above, lows, middle)
    return np.where(beats(np.full(size, high)), highs, np.inf)


def log_expected_improvement(mean: np.ndarray, sd: np.ndarray, threshold: np.ndarray, to_score: Scorer,
                             incumbent: float) -> np.ndarray:
    """log E[max(0, f − f*)] per candidate: log P(y > y*) + log E[f − f* | y > y*].

    The probability in closed form, so far tails still rank candidates
    instead of all rounding to 0; the conditional mean by quadrature over
    y = y* + sd·t, t ≥ 0, weighted by the truncated normal density.
    −inf where no outcome improves.
    """
    possible = np.isfinite(threshold)
    if not possible.any():
        return np.full(mean.shape, -np.inf)
    threshold = np.where(possible, threshold, mean)  # placeholders, masked out at the end
    sd = np.maximum(sd, MIN_SD)
    z = (threshold - mean) / sd
    # The truncated density exp(−z t − t²/2) has its mass within a few units of max(0, −z).
    span = np.maximum(0.0, -z) + TAIL_SPAN / np.maximum(z, 1.0)
    t = span[:, None] * (np.arange(TAIL_NODES) + 0.5)[None, :] / TAIL_NODES
    log_weights = -z[:, None] * t - t**2 / 2
    weights = np.exp(log_weights - log_weights.max(axis=1, keepdims=True))
    gains = np.maximum(to_score(threshold[:, None] + sd[:, None] * t) - incumbent, 0.0)
    mean_gain = np.sum(weights * gains, axis=1) / np.sum(weights, axis=1)
    with np.errstate(divide="ignore"):
        return np.where(possible, log_normal_tail(z) + np.log(mean_gain), -np.inf)


_erfc = np.vectorize(math.erfc, otypes=[float])


def log_normal_tail(z: np.ndarray) -> np.ndarray:
    """log P(Z > z) for a standard normal Z, accurate far into the tail (asymptotic series beyond 5)."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    near = z < 5.0
    out[near] = np.log(0.5 * _erfc(z[near] / math.sqrt(2.0)))
    far = z[~near]
    out[~near] = -0.5 * far**2 - np.log(far) - 0.5 * math.log(2 * math.pi) + np.log1p(-1 / far**2 + 3 / far**4)
    return out


def pick_batch(process: GaussianProcess, unit_pool: np.ndarray, to_score: Scorer, incumbent: float, n: int) -> np.ndarray:
    """Indices of the n pool candidates with the largest expected improvement, kriging-believer style."""
    posterior = process.posterior(unit_pool)
    reach = BRACKET * process.spread
    threshold = improvement_thresholds(
        to_score, unit_pool.shape[0], incumbent, float(process.offset - reach), float(process.offset + reach)
    )
    chosen: list[int] = []
    available = np.ones(unit_pool.shape[0], dtype=bool)
    for _ in range(min(n, unit_pool.shape[0])):
        value = log_expected_improvement(
            posterior.mean, np.sqrt(posterior.variance), threshold, to_score, incumbent
        )
        # lexsort: last key is primary; -index makes the earliest candidate win a full tie.
        order = np.lexsort((-np.arange(available.size), value, available))
        pick = int(order[-1])
        chosen.append(pick)
        available[pick] = False
        posterior.condition_on(pick)
    return np.array(chosen, dtype=np.int64)
