"""The methods compared by the sampler benchmark, behind one interface.

    trace = run_method(name, fn, lower, upper, budget, seed, init=None)

Every method sees the objective only through a `Recorder`, which logs each
row it is handed as one proposal, in order. The budget is counted there, so
equal budgets are enforced in one place whatever the method does internally
(a cache inside fn, as in part 3, changes the wall time, never the count).

Methods:
  adans-<sampler>  `maximize` with that sampler: b samples per iteration, T
                   iterations (iteration 0 = `init` if given, else uniform).
                   Where the problem says how its score splits into accuracy
                   and cost (`parts`), the loop passes that on (only `adans`
                   uses it). Variants for ablations append "+option=value":
                   alpha_max (the loop's cap on α_t), batch (a different b
                   at the same total number of evaluations), or any option
                   of the sampler (e.g. adans-adans+pool_factor=5).
  random           b uniform samples per batch, T batches; never gets `init`
                   (plain random search as a user would run it).
  tpe              Optuna TPESampler(multivariate=True), sequential ask/tell.
  cmaes            Optuna CmaEsSampler (default population 4 + 3 ln d),
                   sequential ask/tell.
For the Optuna methods, `init` (when given) is evaluated first as one batch
and added to the study as completed trials, inside the same budget; CMA-ES
then starts from the best of them (its x0), since CMA-ES ignores trials it
did not generate when it updates its distribution.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from adans_toolchain.search import maximize
from adans_toolchain.search.samplers import ScoreParts, make_sampler

ADANS_SAMPLERS = ("gaussian", "genetic", "zoom", "uniform", "adans")
METHODS = tuple(f"adans-{s}" for s in ADANS_SAMPLERS) + ("random", "tpe", "cmaes")
# Methods that receive the shared initial batch when a problem has one.
USES_INIT = frozenset(METHODS) - {"random"}


@dataclass(frozen=True)
class Budget:
    batch: int  # b
    iterations: int  # T

    @property
    def total(self) -> int:
        return self.batch * self.iterations


@dataclass
class Trace:
    """What one (method, seed) run produced, in proposal order."""

    f: list[float] = field(default_factory=list)
    infos: list[dict[str, Any]] = field(default_factory=list)
    x_keys: list[str] = field(default_factory=list)  # to count distinct proposals
    iterations: list[dict[str, Any]] = field(default_factory=list)  # AdaNS summaries only
    wall_s: float = 0.0


class Recorder:
    """The only path from a method to the objective: logs every proposal.

    fn returns scores, or (scores, infos) like `maximize`'s objective; the
    recorder passes the same shape back. `key` turns a row into a string
    identifying the evaluated design (the plan, for part 3), so duplicates
    can be counted.
    """

    def __init__(self, fn: Callable, key: Callable[[np.ndarray], str] | None = None) -> None:
        self.fn = fn
        self.key = key or (lambda x: x.tobytes().hex())
        self.trace = Trace()

    def __call__(self, xs: np.ndarray):
        xs = np.atleast_2d(np.asarray(xs, dtype=np.float64))
        out = self.fn(xs)
        scores, infos = out if isinstance(out, tuple) else (out, [{} for _ in range(xs.shape[0])])
        scores = np.asarray(scores, dtype=np.float64)
        self.trace.f.extend(float(s) for s in scores)
        self.trace.infos.extend(infos)
        self.trace.x_keys.extend(self.key(x) for x in xs)
        return out


def run_method(
    name: str,
    fn: Callable,
    lower: np.ndarray,
    upper: np.ndarray,
    budget: Budget,
    seed: int,
    *,
    init: np.ndarray | None = None,
    key: Callable[[np.ndarray], str] | None = None,
    parts: ScoreParts | None = None,
) -> Trace:
    base, options = parse_method(name)
    if base not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    recorder = Recorder(fn, key)
    lower, upper = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    init = None if init is None or base not in USES_INIT else np.clip(init, lower, upper)
    start = time.perf_counter()
    if base.startswith("adans-"):
        _run_adans(base.removeprefix("adans-"), recorder, lower, upper, budget, seed, init, parts, **options)
    elif options:
        raise ValueError(f"{base} takes no options, got {options}")
    elif base == "random":
        _run_random(recorder, lower, upper, budget, seed)
    else:
        _run_optuna(base, recorder, lower, upper, budget, seed, init)
    recorder.trace.wall_s = time.perf_counter() - start
    if len(recorder.trace.f) != budget.total:
        raise RuntimeError(f"{name} made {len(recorder.trace.f)} proposals, budget {budget.total}")
    return recorder.trace


def parse_method(name: str) -> tuple[str, dict[str, float]]:
    """'adans-gaussian+alpha_max=0.99+batch=10' -> ('adans-gaussian', {'alpha_max': 0.99, 'batch': 10}).

    Keys other than alpha_max and batch are the sampler's options, checked
    when the sampler is built; values are read as JSON-like literals.
    """
    base, *pairs = name.split("+")
    options = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key == "alpha_max":
            options[key] = float(value)
        elif key == "batch":
            options[key] = int(value)
        elif base.startswith("adans-") and key:
            options[key] = _literal(value)
        else:
            raise ValueError(f"unknown option {key!r} in method {name!r}")
    return base, options


def _literal(text: str):
    """'5' -> 5, '0.5' -> 0.5, 'true'/'false' -> bool; anything else stays a string."""
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _run_adans(sampler, recorder, lower, upper, budget, seed, init, parts, *, alpha_max=0.95, batch=None, **options) -> None:
    batch = batch or budget.batch
    # Same total as every other method: the initial batch (of its own size)
    # plus as many batches of b as fill the rest of the budget.
    first = batch if init is None else init.shape[0]
    iterations = 1 + (budget.total - first) // batch
    if first + (iterations - 1) * batch != budget.total:
        raise ValueError(f"batch {batch} does not divide the budget {budget.total} after a first batch of {first}")
    result = maximize(
        recorder,
        lower.size,
        sampler=make_sampler(sampler, **options),
        samples=batch,
        iterations=iterations,
        seed=seed,
        lower=lower,
        upper=upper,
        init=init,
        alpha_max=alpha_max,
        score_parts=parts,
    )
    recorder.trace.iterations = [
        {k: getattr(s, k) for k in ("iteration", "alpha", "n_good", "mean_good_f", "best_f", "e_avg")}
        for s in result.iterations
    ]


def _run_random(recorder, lower, upper, budget, seed) -> None:
    rng = np.random.default_rng([seed, 0x5EED])
    for _ in range(budget.iterations):
        recorder(rng.uniform(lower, upper, size=(budget.batch, lower.size)))


def _run_optuna(name, recorder, lower, upper, budget, seed, init) -> None:
    import optuna
    from optuna.distributions import FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Coordinates with lower == upper (a site that tolerates no compression)
    # are not parameters at all: Optuna only sees the free ones.
    free = np.flatnonzero(upper > lower)
    names = [f"x{i}" for i in free]
    space = {n: FloatDistribution(float(lower[i]), float(upper[i])) for n, i in zip(names, free)}

    def to_x(params: dict[str, float]) -> np.ndarray:
        x = lower.copy()
        x[free] = [params[n] for n in names]
        return x

    init_scores = None if init is None else np.asarray(_scores(recorder(init)))
    sampler = _optuna_sampler(name, seed, None if init is None else init[int(np.argmax(init_scores))][free], names)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    if init is not None:
        study.add_trials(
            [
                optuna.trial.create_trial(
                    params={n: float(v) for n, v in zip(names, x[free])}, distributions=space, value=float(f)
                )
                for x, f in zip(init, init_scores)
            ]
        )
    for _ in range(budget.total - (0 if init is None else init.shape[0])):
        trial = study.ask(space)
        score = _scores(recorder(to_x(trial.params)[None, :]))[0]
        study.tell(trial, float(score))


def _optuna_sampler(name: str, seed: int, x0: np.ndarray | None, names: list[str]):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(multivariate=True, seed=seed)
    with warnings.catch_warnings():
        # x0 is deprecated in Optuna 4.9 but is still the way to warm-start CMA-ES from one point.
        warnings.simplefilter("ignore")
        return optuna.samplers.CmaEsSampler(
            seed=seed, x0=None if x0 is None else {n: float(v) for n, v in zip(names, x0)}
        )


def _scores(out) -> np.ndarray:
    return np.asarray(out[0] if isinstance(out, tuple) else out, dtype=np.float64)
