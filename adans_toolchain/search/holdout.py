"""Honest selection (issue 13): rank on one part of VAL, choose on a held-back part.

The search compares hundreds of noisy candidates on the same images, so the
best of them on those images is, on average, lucky there: its VAL accuracy
is inflated and its TEST accuracy falls below it. Here VAL is split once,
deterministically, into SEARCH-VAL (what the search scores) and HOLDOUT-VAL
(images no candidate saw); the few best feasible plans of the search are
scored again on the holdout and the emitted plan is chosen there.

Pure numpy, like the rest of this package: the pipeline evaluates the plans
and hands the accuracies in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from adans_toolchain.search.scoring import AdaNSScore

# The split's random stream: apart from the loop's [seed, iteration] and the initial batch's [seed, 2**31 - 1].
_SPLIT_STREAM = 2**31 - 2


def split_holdout(labels: Sequence[int] | np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of SEARCH-VAL and HOLDOUT-VAL, each in increasing order; together they are every image once.

    round(fraction * n) images are held back, stratified by label: each class
    gives about `fraction` of its images (within one), picked by a permutation
    seeded with `seed`, so the same data and seed give the same split.
    fraction 0 holds nothing back.
    """
    labels = np.asarray(labels)
    n = labels.size
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the held-back fraction must be in [0, 1), got {fraction}")
    held = int(np.floor(fraction * n + 0.5))
    if held == 0:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    order = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(n)
    # Each image's place within its class (in permuted order) as a fraction of the class;
    # taking the `held` lowest places takes about the same share of every class.
    place = np.empty(n)
    permuted = labels[order]
    for label in np.unique(labels):
        members = order[permuted == label]
        place[members] = (np.arange(members.size) + 0.5) / members.size
    ranked = order[np.argsort(place[order], kind="stable")]
    return np.sort(ranked[held:]), np.sort(ranked[:held])


def top_distinct(keys: Sequence[str], scores: Sequence[float], k: int) -> list[int]:
    """Indices of the k best scores with distinct keys (one per plan), best first; ties keep their order."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    picked, seen = [], set()
    for i in order:
        if keys[i] in seen:
            continue
        seen.add(keys[i])
        picked.append(int(i))
        if len(picked) == k:
            break
    return picked


def holdout_threshold(baseline_holdout: float, *, allowed_drop: float, absolute: float | None = None) -> float:
    """The accuracy threshold on the holdout: an absolute --accuracy-threshold as given, else the baseline's holdout
    accuracy less the allowed drop (the baseline's own accuracy there differs from SEARCH-VAL)."""
    return absolute if absolute is not None else baseline_holdout - allowed_drop


@dataclass(frozen=True)
class HoldoutChoice:
    """Which re-scored candidate to emit, and how it was decided.

    scores, feasible  the AdaNS score and feasibility of each candidate on the holdout.
    chosen            index of the candidate to emit; None: the baseline.
    outcome           "holdout": the best holdout score among the candidates feasible there;
                      "fallback": none is feasible there, the most accurate one there is within
                      the allowed drop of the baseline's holdout accuracy (possible only with an
                      absolute threshold the holdout's own baseline nearly misses);
                      "baseline": no candidate to re-score, or none good enough on the holdout.
    """

    score: AdaNSScore
    scores: tuple[float, ...]
    feasible: tuple[bool, ...]
    chosen: int | None
    outcome: str


def choose_on_holdout(
    accuracies: Sequence[float], costs: Sequence[float], search_score: AdaNSScore, *,
    baseline_holdout: float, allowed_drop: float, absolute_threshold: float | None = None,
) -> HoldoutChoice:
    """Re-score candidates (given in search order, best first) on the holdout and pick the one to emit.

    The score is the search's own AdaNS score (same cost, same floor) with the
    baseline accuracy and the threshold taken on the holdout. Ties go to the
    candidate the search ranked higher.
    """
    threshold = holdout_threshold(baseline_holdout, allowed_drop=allowed_drop, absolute=absolute_threshold)
    score = replace(search_score, baseline_accuracy=baseline_holdout, accuracy_threshold=threshold)
    accuracies = np.asarray(accuracies, dtype=np.float64)
    scores = score(accuracies, np.asarray(costs, dtype=np.float64)) if accuracies.size else np.zeros(0)
    feasible = score.feasible(accuracies) if accuracies.size else np.zeros(0, dtype=bool)
    chosen, outcome = None, "baseline"
    if feasible.any():
        candidates = np.flatnonzero(feasible)
        chosen, outcome = int(candidates[np.argmax(scores[candidates])]), "holdout"  # argmax: first of equals
    elif accuracies.size:
        best = int(np.argmax(accuracies))
        # The same expression as the relative threshold, so with --max-accuracy-drop this never
        # admits what feasibility refused (there "within the drop" and "feasible" are one test).
        if accuracies[best] >= baseline_holdout - allowed_drop:
            chosen, outcome = best, "fallback"
    return HoldoutChoice(score, tuple(float(s) for s in scores), tuple(bool(f) for f in feasible), chosen, outcome)
