"""Records of a search: one evaluation, one iteration, the final result.

All three are frozen so a history handed to a sampler, a plot or a report
cannot be changed behind the loop's back. Arrays inside them are copied and
made read-only for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np


def _frozen_array(values: Any) -> np.ndarray:
    array = np.array(values, dtype=np.float64)  # a copy, never a view
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class Evaluation:
    """One evaluated sample: the point, its score, when, and what fn reported."""

    x: np.ndarray
    f: float
    iteration: int
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "x", _frozen_array(self.x))
        object.__setattr__(self, "f", float(self.f))
        object.__setattr__(self, "iteration", int(self.iteration))

    # A dataclass would compare `x` with ==, which is ambiguous for arrays;
    # exact element-wise equality is what "same history" means here.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Evaluation):
            return NotImplemented
        return (
            np.array_equal(self.x, other.x)
            and self.f == other.f
            and self.iteration == other.iteration
            and self.info == other.info
        )

    __hash__ = None  # type: ignore[assignment]  # holds an array and a dict


@dataclass(frozen=True)
class IterationSummary:
    """What one iteration of Algorithm 1 did, for progress, journals and plots.

    iteration      0-based index; iteration 0 is the initial batch (init or
                   the sampler's first proposal).
    alpha          α_t computed from the history *including* this iteration's
                   batch: the threshold that defines the good set S_g from
                   which the NEXT iteration's batch is proposed.
    n_good         |S_g| for that same good set.
    mean_good_f    mean score over that S_g.
    best_f         best score over the whole history so far (never decreases).
    e_avg          mean |f − f̃|/|f| over this iteration's batch, f̃ being the
                   reconstruction fitted on the history before this batch was
                   evaluated (paper §VI); None when there was nothing to
                   fit (iteration 0, or a history of one sample), when the
                   analysis is off, or when every f of the batch is 0.
    e_range        mean |f − f̃| over the batch divided by the range of f
                   over the history so far (max − min). The paper's e_avg
                   divides by each |f|, which explodes when scores are near
                   0 (an infeasible pruning plan scores ~1e-30), so it is
                   reported with this scale-free companion. None as e_avg.
    n_evaluations  cumulative number of evaluations after this iteration.
    elapsed_s      wall seconds this iteration took (proposal, evaluation,
                   analysis, journal write). It is the only nondeterministic
                   field, so it is left out of equality.
    """

    iteration: int
    alpha: float
    n_good: int
    mean_good_f: float
    best_f: float
    e_avg: float | None
    n_evaluations: int
    elapsed_s: float = field(compare=False)
    e_range: float | None = None

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True, eq=False)
class SearchResult:
    """The outcome of `maximize`.

    history       every evaluation in evaluation order (journal order).
    iterations    one summary per iteration.
    resumed_from  number of iterations loaded from the journal (0 if fresh).
    """

    best_x: np.ndarray
    best_f: float
    best_info: dict[str, Any]
    history: list[Evaluation]
    iterations: list[IterationSummary]
    resumed_from: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "best_x", _frozen_array(self.best_x))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SearchResult):
            return NotImplemented
        return (
            np.array_equal(self.best_x, other.best_x)
            and self.best_f == other.best_f
            and self.best_info == other.best_info
            and self.history == other.history
            and self.iterations == other.iterations
            and self.resumed_from == other.resumed_from
        )

    __hash__ = None  # type: ignore[assignment]
