"""Algorithm 1 (digest §5): the AdaNS search loop, journaled and resumable.

Per iteration t:
  1. build the SearchContext from the history (α_t, S_g by `good_set`);
  2. propose a batch — iteration 0 evaluates `init` if given, otherwise the
     sampler's first proposal (uniform over the box);
  3. predict the batch with the reconstruction fitted on the history
     (analysis only, it never steers the search);
  4. evaluate fn, append, summarise, write the iteration to the journal
     (fsync), then call the callback.

Evaluation budget: with `budget`, an iteration evaluates only the leading
samples of its batch the budget can pay for; a batch cut short is the last,
and no iteration after the first starts once the budget is spent. The cut
batch is journaled as it ran, so a resume with the same budget adds nothing
and a resume with a larger one goes on from there.

Determinism: iteration t draws from np.random.default_rng([seed, t]) and the
sampler keeps no state, so iteration t depends only on (settings, committed
history) — a resumed run recomputes exactly what the uninterrupted run did.

Score parts: with `score_parts` the sampler also sees how f splits into the
measured accuracy (read from each evaluation's info, so the journal holds it)
and the exact cost. A cost function has no portable form, so the journal does
not record it: a resume must pass the same one, as the compiler does (its
score and cost model are fixed by settings a resume may not change).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, Union

import numpy as np

from adans_toolchain.search import journal as journal_io
from adans_toolchain.search import reconstruction as recon
from adans_toolchain.search.samplers import SAMPLER_NAMES, Sampler, ScoreParts, SearchContext, make_sampler
from adans_toolchain.search.selection import good_set
from adans_toolchain.search.types import Evaluation, IterationSummary, SearchResult

Scores = Union[np.ndarray, Sequence[float]]
Objective = Callable[[np.ndarray], Union[Scores, tuple[Scores, Sequence[dict[str, Any]]]]]
ArrayLike = Union[np.ndarray, Sequence[float], None]


class EvaluationBudget(Protocol):
    """What an evaluation budget tells the loop (the caller knows which points cost anything)."""

    def remaining(self) -> int:
        """Evaluations left to pay for."""

    def affordable(self, xs: np.ndarray) -> int:
        """How many leading rows of xs can be evaluated without crossing the budget."""


@dataclass(frozen=True)
class _Settings:
    """Validated arguments of one `maximize` call."""

    dim: int
    samples: int
    iterations: int
    seed: int
    lower: np.ndarray
    upper: np.ndarray
    init: np.ndarray | None
    alpha_max: float
    reconstruction: bool
    score_parts: ScoreParts | None = None


def maximize(
    fn: Objective,
    dim: int,
    *,
    sampler: str | Sampler = "gaussian",
    samples: int = 50,
    iterations: int = 20,
    seed: int = 0,
    lower: ArrayLike = None,
    upper: ArrayLike = None,
    init: np.ndarray | Sequence[Sequence[float]] | None = None,
    journal: str | os.PathLike[str] | None = None,
    alpha_max: float = 0.95,
    reconstruction: bool = True,
    callback: Callable[[IterationSummary], None] | None = None,
    budget: EvaluationBudget | None = None,
    score_parts: ScoreParts | None = None,
) -> SearchResult:
    """Maximise the black box `fn` over the box [lower, upper] ⊂ R^dim.

    fn(X) gets a (n, dim) array and returns n finite scores, or
    (scores, infos) with one JSON-serialisable dict per sample, stored with
    its Evaluation. `samples` is the batch size b, `iterations` the number
    of batches T including the initial one. With `journal`, every iteration
    is appended to that JSON-lines file; if the file exists the run resumes
    from it (its settings must match, except `iterations`, which may grow).
    If the journal already holds at least `iterations` iterations, nothing is
    evaluated and the result holds its first `iterations` iterations.

    `callback` is called with each IterationSummary computed in this call
    (not for iterations loaded from the journal).

    `budget` caps what fn may be asked to evaluate (see the module's
    docstring); ValueError if it cannot pay for a single initial sample.

    `score_parts` tells the sampler how f splits into accuracy and cost (see
    the module's docstring); every info must then hold the accuracy.
    """
    settings = _validate(dim, samples, iterations, seed, lower, upper, init, alpha_max, reconstruction)
    if score_parts is not None:
        if not isinstance(score_parts, ScoreParts):
            raise ValueError(f"score_parts must be a ScoreParts, got {type(score_parts).__name__}")
        settings = dataclasses.replace(settings, score_parts=score_parts)
    strategy = _resolve_sampler(sampler)
    history: list[Evaluation] = []
    summaries: list[IterationSummary] = []
    path = None if journal is None else Path(journal)
    if path is not None:
        history, summaries = _open_journal(path, _header(settings, strategy))
    resumed_from = min(len(summaries), settings.iterations)

    with journal_io.open_for_append(path) if path else contextlib.nullcontext() as handle:
        for t in range(len(summaries), settings.iterations):
            if budget is not None and t > 0 and budget.remaining() <= 0:
                break
            proposed = _propose(t, strategy, settings, history)
            n = _affordable(budget, proposed, t)
            if n == 0:
                break
            batch, summary = _iteration(fn, t, proposed[:n], settings, history)
            history.extend(batch)
            summaries.append(summary)
            if handle is not None:
                journal_io.append(handle, journal_io.iteration_text(batch, summary))
            if callback is not None:
                callback(summary)
            if len(batch) < len(proposed):
                break  # cut short by the budget

    summaries = summaries[: settings.iterations]
    history = history[: summaries[-1].n_evaluations]
    best = max(history, key=lambda e: e.f)  # max keeps the first of equal scores
    return SearchResult(
        best_x=best.x,
        best_f=best.f,
        best_info=best.info,
        history=history,
        iterations=summaries,
        resumed_from=resumed_from,
    )


def _propose(t: int, sampler: Sampler, settings: _Settings, history: list[Evaluation]) -> np.ndarray:
    """Iteration t's batch: `init` at iteration 0 if given, else the sampler's proposal from `history`."""
    if t == 0 and settings.init is not None:
        return np.clip(settings.init, settings.lower, settings.upper)
    context = SearchContext.from_history(
        np.array([e.x for e in history], dtype=np.float64).reshape(-1, settings.dim),
        np.array([e.f for e in history], dtype=np.float64),
        np.array([e.iteration for e in history], dtype=np.int64),
        lower=settings.lower,
        upper=settings.upper,
        iteration=t,
        batch_size=settings.samples,
        alpha_max=settings.alpha_max,
        score_parts=settings.score_parts,
        accuracies=_accuracies(settings.score_parts, history),
    )
    batch = sampler.propose(context, settings.samples, np.random.default_rng([settings.seed, t]))
    if not np.isfinite(batch).all():
        raise ValueError(f"sampler {sampler.name!r} proposed non-finite points at iteration {t}")
    return batch


def _accuracies(parts: ScoreParts | None, history: list[Evaluation]) -> np.ndarray | None:
    """The history's accuracies from its infos (None without score parts)."""
    if parts is None:
        return None
    key = parts.accuracy_key
    missing = [
        i for i, e in enumerate(history)
        if isinstance(e.info.get(key), bool) or not isinstance(e.info.get(key), (int, float))
        or not np.isfinite(e.info[key])
    ]
    if missing:
        raise ValueError(
            f"with score_parts every evaluation's info must hold its accuracy, a finite number, under {key!r}; "
            f"evaluation {missing[0]} (iteration {history[missing[0]].iteration}) does not"
        )
    return np.array([e.info[key] for e in history], dtype=np.float64)


def _affordable(budget: EvaluationBudget | None, batch: np.ndarray, t: int) -> int:
    """How many leading samples of the batch to evaluate (all without a budget)."""
    if budget is None:
        return len(batch)
    n = int(budget.affordable(batch))
    if n == 0 and t == 0:
        raise ValueError("the evaluation budget cannot pay for any sample of the initial batch")
    return n


def _iteration(
    fn: Objective, t: int, batch: np.ndarray, settings: _Settings, history: list[Evaluation]
) -> tuple[list[Evaluation], IterationSummary]:
    """Evaluate iteration t's batch after `history` (not modified); return its evaluations and summary."""
    start = time.perf_counter()
    xs = np.array([e.x for e in history], dtype=np.float64).reshape(-1, settings.dim)
    fs = np.array([e.f for e in history], dtype=np.float64)

    predicted = None
    if settings.reconstruction and fs.size >= 2:
        predicted = recon.fit(xs, fs, settings.lower, settings.upper).predict(batch)

    scores, infos = _evaluate(fn, batch, t)
    evaluations = [Evaluation(x=x, f=f, iteration=t, info=info) for x, f, info in zip(batch, scores, infos)]

    all_fs = np.concatenate([fs, scores])
    alpha, good = good_set(all_fs, settings.samples, settings.alpha_max)
    summary = IterationSummary(
        iteration=t,
        alpha=alpha,
        n_good=int(good.size),
        mean_good_f=float(all_fs[good].mean()),
        best_f=float(all_fs.max()),
        e_avg=None if predicted is None else recon.relative_error(predicted, scores),
        n_evaluations=int(all_fs.size),
        elapsed_s=time.perf_counter() - start,
        e_range=None if predicted is None else recon.range_error(predicted, scores, all_fs),
    )
    return evaluations, summary


def _evaluate(fn: Objective, batch: np.ndarray, t: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Call fn on a copy of the batch and check what comes back."""
    n = batch.shape[0]
    out = fn(batch.copy())
    if isinstance(out, tuple):
        if len(out) != 2:
            raise ValueError(f"fn returned a tuple of {len(out)} items; expected (scores, infos)")
        raw_scores, raw_infos = out
    else:
        raw_scores, raw_infos = out, None
    scores = np.asarray(raw_scores, dtype=np.float64)
    if scores.shape != (n,):
        raise ValueError(f"fn returned scores of shape {scores.shape} for a batch of {n}; expected ({n},)")
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"fn returned a non-finite score ({scores[i]}) for sample {i} of iteration {t}; scores must be finite"
        )
    if raw_infos is None:
        return scores, [{} for _ in range(n)]
    infos = list(raw_infos)
    if len(infos) != n:
        raise ValueError(f"fn returned {len(infos)} infos for a batch of {n}")
    normalised = []
    for i, info in enumerate(infos):
        if not isinstance(info, dict):
            raise ValueError(f"info of sample {i} of iteration {t} is a {type(info).__name__}, not a dict")
        try:
            # Keep in memory exactly what the journal will hold (tuples become
            # lists, …) so a resumed run has an identical history.
            normalised.append(json.loads(json.dumps(info)))
        except (TypeError, ValueError) as e:
            raise ValueError(f"info of sample {i} of iteration {t} is not JSON-serialisable: {e}") from e
    return scores, normalised


def _open_journal(path: Path, header: dict[str, Any]) -> tuple[list[Evaluation], list[IterationSummary]]:
    """Create the journal, or load and check it; rewrite it cleanly if a crash damaged it."""
    if not path.exists() or path.stat().st_size == 0:
        journal_io.write_new(path, header)
        return [], []
    contents = journal_io.load(path)
    if contents.header is None:
        # Only a partial header: killed while the journal was being created.
        journal_io.write_new(path, header)
        return [], []
    journal_io.check_header(contents.header, header, path)
    if contents.rewrite:
        chunks = []
        for summary in contents.summaries:
            batch = [e for e in contents.evaluations if e.iteration == summary.iteration]
            chunks.append(journal_io.iteration_text(batch, summary))
        journal_io.write_new(path, header, chunks)
    return contents.evaluations, contents.summaries


def _header(settings: _Settings, sampler: Sampler) -> dict[str, Any]:
    return journal_io.make_header(
        dim=settings.dim,
        sampler=sampler.name,
        sampler_options=sampler.options(),
        samples=settings.samples,
        seed=settings.seed,
        lower=settings.lower.tolist(),
        upper=settings.upper.tolist(),
        alpha_max=settings.alpha_max,
        init_digest=_digest(settings.init),
    )


def _digest(init: np.ndarray | None) -> str | None:
    """sha256 over the shape and float64 bytes of init (None without init)."""
    if init is None:
        return None
    digest = hashlib.sha256(repr(init.shape).encode())
    digest.update(np.ascontiguousarray(init, dtype=np.float64).tobytes())
    return digest.hexdigest()


def _resolve_sampler(sampler: str | Sampler) -> Sampler:
    if isinstance(sampler, Sampler):
        return sampler
    if isinstance(sampler, str):
        return make_sampler(sampler)
    raise ValueError(f"sampler must be one of {', '.join(SAMPLER_NAMES)} or a Sampler, got {sampler!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _validate(
    dim: Any,
    samples: Any,
    iterations: Any,
    seed: Any,
    lower: ArrayLike,
    upper: ArrayLike,
    init: Any,
    alpha_max: Any,
    reconstruction: Any,
) -> _Settings:
    if not _is_int(dim) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if not _is_int(samples) or samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples!r}")
    if not _is_int(iterations) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not 0.0 <= float(alpha_max) <= 1.0:
        raise ValueError(f"alpha_max must be in [0, 1], got {alpha_max!r}")
    lo = _bound(lower, 0.0, dim, "lower")
    hi = _bound(upper, 1.0, dim, "upper")
    # lower == upper is allowed: that coordinate is fixed (e.g. a boundary
    # θ = 0 for a layer that tolerates no compression at all).
    if not (lo <= hi).all():
        i = int(np.flatnonzero(lo > hi)[0])
        raise ValueError(f"the box is empty along dimension {i}: lower={lo[i]} > upper={hi[i]}")
    start = None
    if init is not None:
        start = np.array(init, dtype=np.float64)
        if start.ndim != 2 or start.shape[0] < 1 or start.shape[1] != dim:
            raise ValueError(f"init must have shape (m, {dim}) with m ≥ 1, got {start.shape}")
        if not np.isfinite(start).all():
            raise ValueError("init holds non-finite values")
        start.setflags(write=False)
    return _Settings(
        dim=int(dim),
        samples=int(samples),
        iterations=int(iterations),
        seed=int(seed),
        lower=lo,
        upper=hi,
        init=start,
        alpha_max=float(alpha_max),
        reconstruction=bool(reconstruction),
    )


def _bound(value: ArrayLike, default: float, dim: int, name: str) -> np.ndarray:
    array = np.full(dim, default) if value is None else np.array(value, dtype=np.float64)
    if array.ndim == 0:
        array = np.full(dim, float(array))
    if array.shape != (dim,) or not np.isfinite(array).all():
        raise ValueError(f"{name} must be {dim} finite numbers (or one for all), got {value!r}")
    return array
