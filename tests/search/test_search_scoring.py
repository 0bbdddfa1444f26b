"""The AdaNS score against values computed by hand from eq. 2-6."""

from __future__ import annotations

import math

import numpy as np
import pytest

from adans_toolchain.search.scoring import AdaNSScore


def test_feasible_candidate():
    s = AdaNSScore(baseline_accuracy=92.0, baseline_cost=100.0, accuracy_threshold=90.0, accuracy_floor=0.1)
    # cost 60 -> dC = 0.4; accuracy 91 -> dA = 1.0; feasible -> PEN = 1.0
    assert s([91.0], [60.0])[0] == pytest.approx(math.exp(0.4) / 1.0)


def test_infeasible_candidate_gets_exponential_penalty():
    s = AdaNSScore(92.0, 100.0, 90.0, 0.1)
    # accuracy 88 -> dA = 4, PEN = 4 + exp(90 - 88)
    assert s([88.0], [50.0])[0] == pytest.approx(math.exp(0.5) / (4.0 + math.exp(2.0)))


def test_floor_guards_no_drop_and_gains():
    s = AdaNSScore(92.0, 100.0, 90.0, 0.25)
    # A compressed model that beats the baseline: dA = -1 -> floored to 0.25.
    assert s([93.0], [80.0])[0] == pytest.approx(math.exp(0.2) / 0.25)
    assert s([92.0], [100.0])[0] == pytest.approx(1.0 / 0.25)


def test_floor_equal_to_allowed_drop_makes_feasible_scores_depend_on_cost_only():
    s = AdaNSScore(92.0, 100.0, 90.0, 2.0)
    f = s([91.9, 90.5, 90.0], [70.0, 70.0, 70.0])
    assert np.allclose(f, math.exp(0.3) / 2.0)
    assert s([90.0], [60.0])[0] > s([91.9], [70.0])[0]


def test_exactly_at_threshold_is_feasible_and_just_below_is_not():
    s = AdaNSScore(92.0, 100.0, 90.0, 0.1)
    at, below = s([90.0, 89.99], [50.0, 50.0])
    assert at == pytest.approx(math.exp(0.5) / 2.0)
    assert below == pytest.approx(math.exp(0.5) / (2.01 + math.exp(0.01)))
    assert list(s.feasible([90.0, 89.99])) == [True, False]


def test_deeply_infeasible_scores_stay_positive_and_ordered():
    s = AdaNSScore(92.0, 100.0, 90.0, 0.1)
    f = s([10.0, 50.0, 80.0], [10.0, 10.0, 10.0])
    assert np.all(f > 0) and f[0] < f[1] < f[2]


def test_invalid_settings():
    with pytest.raises(ValueError):
        AdaNSScore(92.0, 0.0, 90.0, 0.1)
    with pytest.raises(ValueError):
        AdaNSScore(92.0, 10.0, 90.0, 0.0)
