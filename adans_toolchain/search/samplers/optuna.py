"""Optuna's TPE and CMA-ES behind the house Sampler contract (optional extra).

Both keep no state between calls: each `propose` rebuilds the method's state
from the history in the context and draws its randomness from the generator
the loop hands it (seeded from (seed, iteration)), so a killed search resumes
exactly, as with the AdaNS samplers. They ignore S_g and α_t; the loop still
computes them for its iteration summaries.

* `tpe`: an in-memory Optuna study with TPESampler(multivariate=True),
  seeded from the generator; every evaluation of the history is added as a
  completed trial (one FloatDistribution(lower_i, upper_i) per coordinate),
  then n trials are asked and never told. TPE models completed trials only,
  so the n asks are n draws from one model of the history.
* `cmaes`: CMA-ES from the `cmaes` library, the optimiser inside Optuna's
  CmaEsSampler, with that sampler's settings (coordinates scaled to [0, 1],
  σ0 = 1/6 of the range, 10·d resamplings before clipping to the box).
  Optuna's sampler itself cannot be rebuilt from a history: it learns only
  from trials it generated (a generation tag and the pickled optimiser in
  each trial's system attributes) and advances at most one generation per
  ask, so a study refilled with plain trials samples N(centre, σ0) forever.
  Here the generations are replayed instead: iteration 0 (the `init` batch,
  or the uniform first batch) is not CMA-ES's, so it only gives the starting
  mean, its best point (tools/bench_samplers_methods.py starts from the best
  of `init` too, and from the centre without one); every later iteration's
  points were drawn from the distribution current at that iteration, and
  once `popsize` of them have accumulated the first `popsize` are told and
  the rest dropped (Optuna's rule for stale trials). With the default
  popsize (the batch size b, unless CMA-ES's own default 4 + ⌊3 ln d⌋ is
  larger) one iteration is one generation.

Coordinates with lower == upper are not parameters (as in the benchmark): the
methods see only the free ones. History points are clipped to the box first.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import numpy as np

from adans_toolchain.errors import ConfigError
from adans_toolchain.search.samplers.base import Sampler, SearchContext

INSTALL = 'pip install -e ".[optuna]"'


def _require(sampler: str, module: str) -> None:
    """A one-line ConfigError if the optional `module` is not installed (no import)."""
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"sampler '{sampler}' needs {module}, which is not installed: {INSTALL}")


def _import(sampler: str, module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"sampler '{sampler}' needs {module}, which cannot be imported ({e}): {INSTALL}") from e


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def _free(context: SearchContext) -> np.ndarray:
    return np.flatnonzero(context.width > 0)


def _fill(context: SearchContext, free: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Full points: the free coordinates from `values`, the fixed ones at lower."""
    points = np.tile(context.lower, (values.shape[0], 1))
    points[:, free] = values
    return points


@contextlib.contextmanager
def _quiet(optuna: Any) -> Iterator[None]:
    """No per-study INFO lines and no experimental-feature warnings; the
    caller's Optuna verbosity is restored afterwards."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


@dataclass(frozen=True, kw_only=True)
class TPESampler(Sampler):
    """Optuna's multivariate TPE over the history (see the module docstring).

    n_startup_trials  below this many evaluations TPE draws uniformly (Optuna's default 10).
    constant_liar     treat the batch's earlier asks as bad points so a batch
                      spreads out (Optuna's option; off, as in the benchmark).
    """

    name: ClassVar[str] = "tpe"

    n_startup_trials: int = 10
    constant_liar: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.n_startup_trials, bool) or not isinstance(self.n_startup_trials, int) or (
            self.n_startup_trials < 0
        ):
            raise ValueError(f"n_startup_trials must be an integer ≥ 0, got {self.n_startup_trials!r}")
        _require(self.name, "optuna")

    def _propose(self, context: SearchContext, n: int, rng: np.random.Generator) -> np.ndarray:
        free = _free(context)
        if free.size == 0:
            return _fill(context, free, np.zeros((n, 0)))
        optuna = _import(self.name, "optuna")
        from optuna.distributions import FloatDistribution

        names = [f"x{i}" for i in free]
        space = {
            name: FloatDistribution(float(context.lower[i]), float(context.upper[i])) for name, i in zip(names, free)
        }
        xs = np.clip(context.xs, context.lower, context.upper)[:, free]
        with _quiet(optuna):
            study = optuna.create_study(
                direction="maximize",
                sampler=optuna.samplers.TPESampler(
                    multivariate=True,
                    seed=_seed(rng),
                    n_startup_trials=self.n_startup_trials,
                    constant_liar=self.constant_liar,
                ),
            )
            study.add_trials(
                [
                    optuna.trial.create_trial(
                        params={name: float(v) for name, v in zip(names, x)}, distributions=space, value=float(f)
                    )
                    for x, f in zip(xs, context.fs)
                ]
            )
            asked = [study.ask(space).params for _ in range(n)]
        return _fill(context, free, np.array([[p[name] for name in names] for p in asked], dtype=np.float64))


@dataclass(frozen=True, kw_only=True)
class CmaEsSampler(Sampler):
    """CMA-ES with Optuna's settings, its generations replayed from the history.

    popsize  λ, the evaluations per generation, ≥ 4; None: the loop's batch
             size b, so each iteration is one generation, or CMA-ES's own
             default 4 + ⌊3 ln d⌋ when that is larger (a generation then
             spans several iterations, all drawn from one distribution).
    sigma0   initial step size as a fraction of each coordinate's range
             (Optuna's default 1/6).
    """

    name: ClassVar[str] = "cmaes"

    popsize: int | None = None
    sigma0: float = 1 / 6

    def __post_init__(self) -> None:
        if self.popsize is not None and (
            isinstance(self.popsize, bool) or not isinstance(self.popsize, int) or self.popsize < 4
        ):
            # Below 4 the rank-μ learning rate is 0 and cmaes divides by it.
            raise ValueError(f"popsize must be an integer ≥ 4 or None, got {self.popsize!r}")
        if not (isinstance(self.sigma0, (int, float)) and 0 < self.sigma0 < float("inf")):
            raise ValueError(f"sigma0 must be > 0, got {self.sigma0!r}")
        _require(self.name, "cmaes")

    def _propose(self, context: SearchContext, n: int, rng: np.random.Generator) -> np.ndarray:
        free = _free(context)
        if free.size == 0:
            return _fill(context, free, np.zeros((n, 0)))
        cmaes = _import(self.name, "cmaes")
        lower, width = context.lower[free], context.width[free]
        unit = np.clip((context.xs[:, free] - lower) / width, 0.0, 1.0)
        first = context.iterations == 0
        mean = unit[first][int(np.argmax(context.fs[first]))] if first.any() else np.full(free.size, 0.5)
        popsize = self.popsize or max(context.batch_size, 4 + math.floor(3 * math.log(free.size)))
        optimizer = cmaes.CMA(
            mean=mean,
            sigma=float(self.sigma0),
            bounds=np.tile([0.0, 1.0], (free.size, 1)),
            seed=_seed(rng),
            n_max_resampling=10 * free.size,
            population_size=popsize,
        )
        pending: list[int] = []  # drawn from the current generation, not yet told
        for t in np.unique(context.iterations[~first]):
            pending.extend(np.flatnonzero(context.iterations == t).tolist())
            if len(pending) >= popsize:
                # CMA-ES minimises; the search maximises f.
                optimizer.tell([(unit[i], -float(context.fs[i])) for i in pending[:popsize]])
                pending = []
        asked = np.array([optimizer.ask() for _ in range(n)], dtype=np.float64)
        return _fill(context, free, lower + np.clip(asked, 0.0, 1.0) * width)
