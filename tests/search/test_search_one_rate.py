"""The one-rate rule (bisection on one rate for every coordinate) and the evaluation budget of the search."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from adans_toolchain.search import maximize
from adans_toolchain.search.boundary import Boundary, characterise_boundary, initial_batch, one_rate_rule

SIZES = np.array([16, 32, 64, 8, 24])


def _monotone(sizes: np.ndarray, weights: np.ndarray, calls: list | None = None):
    """Accuracy falls as units are removed, faster in sensitive sites (weights): monotone in every coordinate."""

    def accuracy(xs: np.ndarray) -> np.ndarray:
        xs = np.atleast_2d(xs)
        if calls is not None:
            calls.append(len(xs))
        removed = np.minimum(np.floor(np.clip(xs, 0, 1) * sizes + 1e-9), sizes - 1) / sizes
        return 95.0 - 40.0 * (removed * weights).sum(axis=1)

    return accuracy


def _largest_feasible_rate(accuracy, dim: int, threshold: float, points: int = 4097) -> float:
    """Brute force: the largest rate on a fine grid whose point r * 1 meets the threshold."""
    rates = np.linspace(0.0, 1.0, points)
    feasible = accuracy(rates[:, None] * np.ones(dim)) >= threshold
    return float(rates[feasible].max())


@pytest.mark.parametrize("threshold", [94.0, 90.0, 80.0, 60.0])
@pytest.mark.parametrize("rounds", [5, 7, 9])
def test_bisection_finds_the_brute_force_rate_within_its_resolution(threshold, rounds):
    weights = np.array([0.3, 0.1, 0.05, 0.4, 0.15])
    calls: list = []
    accuracy = _monotone(SIZES, weights, calls)
    rule = one_rate_rule(accuracy, len(SIZES), threshold, rounds=rounds)
    assert sum(calls) == rule.evaluations == rounds and rule.complete
    best = _largest_feasible_rate(accuracy, len(SIZES), threshold)
    assert rule.rate <= best < rule.rate + 2.0 ** -rounds
    if rule.rate:
        assert rule.accuracy == accuracy(rule.point(len(SIZES)))[0] >= threshold
    assert np.array_equal(rule.point(3), np.full(3, rule.rate))


def test_a_threshold_no_rate_meets_gives_the_baseline():
    rule = one_rate_rule(lambda xs: np.zeros(len(xs)), 4, 50.0)
    assert rule.rate == 0.0 and rule.accuracy is None and rule.evaluations == 7


def test_a_spent_budget_stops_the_bisection_with_what_it_knows():
    accuracy = _monotone(SIZES, np.full(5, 0.2))
    full = one_rate_rule(accuracy, len(SIZES), 90.0)
    answered = {"n": 0}

    def three_then_nan(xs):
        answered["n"] += 1
        return accuracy(xs) if answered["n"] <= 3 else np.full(len(xs), np.nan)

    cut = one_rate_rule(three_then_nan, len(SIZES), 90.0)
    assert not cut.complete and cut.evaluations == 3 and answered["n"] == 4
    assert [r["rate"] for r in cut.rounds] == [r["rate"] for r in full.rounds[:3]]
    assert cut.rate <= full.rate  # the largest rate known feasible after three rounds


def test_a_spent_budget_stops_the_boundary_mid_round_and_skips_the_diagonal():
    accuracy = _monotone(SIZES, np.full(5, 0.2))
    left = {"n": 7}

    def budgeted(xs):
        acc = accuracy(xs)
        acc[left["n"]:] = np.nan  # the first `left` points of the batch fit
        left["n"] = max(left["n"] - len(xs), 0)
        return acc

    b = characterise_boundary(budgeted, SIZES, 90.0, rounds=6)
    assert not b.complete and b.evaluations == 7 and b.diagonal_scale == 0.0
    assert b.as_dict()["complete"] is False
    assert characterise_boundary(accuracy, SIZES, 90.0).complete


def test_the_rule_leads_the_initial_batch_in_place_of_one_sample():
    b = Boundary(theta=np.array([0.5, 0.2, 0.9]), diagonal_scale=0.4, evaluations=0, rounds=[])
    start = np.full(3, 0.1)
    batch = initial_batch(b, 11, np.random.default_rng(0), start=start)
    assert batch.shape == (11, 3)
    assert np.array_equal(batch[0], start) and np.allclose(batch[1], 0.4 * b.theta)
    assert np.array_equal(initial_batch(b, 2, np.random.default_rng(0), start=start)[0], start)


class _Budget:
    """Pays for `cap` distinct points in all; repeats of a paid point are free (like the evaluation cache)."""

    def __init__(self, cap: int, paid: set | None = None) -> None:
        self.cap, self.paid = cap, set() if paid is None else paid

    def remaining(self) -> int:
        return max(self.cap - len(self.paid), 0)

    def affordable(self, xs: np.ndarray) -> int:
        new: set = set()
        for i, x in enumerate(xs):
            key = x.tobytes()
            if key not in self.paid and key not in new:
                if len(new) == self.remaining():
                    return i
                new.add(key)
        return len(xs)

    def pay(self, xs: np.ndarray) -> None:
        self.paid.update(x.tobytes() for x in xs)


def _paying(budget: _Budget):
    def fn(xs):
        budget.pay(xs)
        return np.exp(-np.sum((xs - 0.3) ** 2, axis=1) / 0.1) + 0.01

    return fn


def test_the_budget_cuts_the_last_batch_to_fit_exactly(tmp_path):
    budget = _Budget(11)
    result = maximize(_paying(budget), 2, samples=4, iterations=5, seed=0, budget=budget, journal=tmp_path / "j.jsonl")
    assert len(budget.paid) == 11 and len(result.history) == 11
    assert [s.n_evaluations for s in result.iterations] == [4, 8, 11]


def test_a_resume_with_the_same_budget_adds_nothing_and_a_larger_one_goes_on(tmp_path):
    journal = tmp_path / "j.jsonl"
    budget = _Budget(11)
    first = maximize(_paying(budget), 2, samples=4, iterations=5, seed=0, budget=budget, journal=journal)
    again = maximize(_paying(budget), 2, samples=4, iterations=5, seed=0, budget=budget, journal=journal)
    assert len(budget.paid) == 11 and again == dataclasses.replace(first, resumed_from=3)
    larger = _Budget(14, budget.paid)
    more = maximize(_paying(larger), 2, samples=4, iterations=5, seed=0, budget=larger, journal=journal)
    # A sample on the box's corner can repeat a paid one, which costs nothing.
    assert len(larger.paid) == 14 and len(more.history) >= 14 and more.history[:11] == first.history
    assert len(more.iterations) == 4 and more.resumed_from == 3


def test_a_budget_that_pays_for_nothing_of_the_first_batch_is_an_error():
    with pytest.raises(ValueError, match="initial batch"):
        maximize(_paying(_Budget(0)), 2, samples=4, iterations=2, budget=_Budget(0))


def test_a_masked_rule_moves_only_the_masked_coordinates():
    seen = []

    def accuracy(xs):
        seen.append(xs[0].copy())
        return np.array([100.0 - 40.0 * xs[0].sum()])

    mask = (True, False, True, False)
    rule = one_rate_rule(accuracy, 4, 90.0, mask=mask)
    assert all(x[1] == 0 and x[3] == 0 and x[0] == x[2] for x in seen)
    assert np.array_equal(rule.point(4), rule.rate * np.array([1.0, 0.0, 1.0, 0.0]))
    assert 0.125 - 2**-7 <= rule.rate <= 0.125  # 100 - 80 r >= 90
