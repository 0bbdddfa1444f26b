"""Boundary characterisation: bisection finds each site's largest feasible compression, at a bounded cost."""

from __future__ import annotations

import numpy as np

import pytest

from adans_toolchain.search.boundary import (
    DIAGONAL_ROUNDS, Boundary, boundary_groups, characterise_boundary, initial_batch, max_boundary_evaluations,
    one_rate_rule,
)


def _synthetic(tolerances: np.ndarray, sizes: np.ndarray, calls: list):
    """Accuracy falls by 1 point per removed unit beyond each site's tolerance (monotone)."""

    def accuracy(xs: np.ndarray) -> np.ndarray:
        xs = np.atleast_2d(xs)
        calls.append(len(xs))
        removed = np.floor(xs * sizes + 1e-9)
        excess = np.clip(removed - tolerances, 0, None)
        return 100.0 - excess.sum(axis=1) - 0.01 * removed.sum(axis=1)

    return accuracy


def test_bisection_finds_exact_per_site_boundary():
    sizes = np.array([16, 32, 64, 8])
    tolerances = np.array([3, 20, 0, 7])
    calls: list = []
    b = characterise_boundary(_synthetic(tolerances, sizes, calls), sizes, threshold=99.0, rounds=7, diagonal_rounds=1)
    removed = np.floor(b.theta * sizes + 1e-9).astype(int)
    # 1 point above tolerance is still >= 99.0 minus the small slope: feasible up to tolerance + ~1 unit.
    acc = _synthetic(tolerances, sizes, [])
    for i in range(len(sizes)):
        x = np.zeros(len(sizes))
        x[i] = b.theta[i]
        assert acc(x)[0] >= 99.0  # theta itself is feasible
        x[i] = (removed[i] + 1.5) / sizes[i]
        if removed[i] + 1 < sizes[i]:
            assert acc(x)[0] < 99.0  # one more unit is not
    assert sum(calls) == b.evaluations


def test_boundary_is_monotone_in_the_threshold():
    sizes = np.array([16, 32, 64])
    tolerances = np.array([5, 10, 30])
    loose = characterise_boundary(_synthetic(tolerances, sizes, []), sizes, 95.0, rounds=6)
    strict = characterise_boundary(_synthetic(tolerances, sizes, []), sizes, 99.5, rounds=6)
    assert np.all(strict.theta <= loose.theta)
    assert np.all(loose.theta > 0) and np.all(loose.theta <= 1)


def test_diagonal_scale_is_feasible_jointly():
    sizes = np.array([16, 16, 16, 16])
    tolerances = np.array([8, 8, 8, 8])
    acc = _synthetic(tolerances, sizes, [])
    b = characterise_boundary(acc, sizes, 98.0, rounds=6)
    # Alone each site tolerates 8+; together the excess adds up, so the diagonal must shrink.
    assert 0 < b.diagonal_scale < 1
    assert acc(b.diagonal_scale * b.theta)[0] >= 98.0


def test_initial_batch_is_inside_the_box_and_holds_the_anchor():
    b = Boundary(theta=np.array([0.5, 0.2, 0.9]), diagonal_scale=0.4, evaluations=0, rounds=[])
    batch = initial_batch(b, 11, np.random.default_rng(0))
    assert batch.shape == (11, 3)
    assert np.all(batch >= 0) and np.all(batch <= b.theta + 1e-12)
    assert np.allclose(batch[0], 0.4 * b.theta)
    again = initial_batch(b, 11, np.random.default_rng(0))
    assert np.array_equal(batch, again)


@pytest.mark.parametrize("max_groups", [48, 2])
def test_the_announced_boundary_cost_is_an_upper_bound_that_is_reached(max_groups):
    sizes = np.array([16, 32, 64, 8, 3])
    rng = np.random.default_rng(0)
    for rounds in (1, 3, 6, 8):
        bound = max_boundary_evaluations(sizes, rounds=rounds, max_groups=max_groups)
        for _ in range(5):
            tolerances = rng.integers(0, sizes)
            start = rng.uniform(0, 0.5) * np.ones(len(sizes))
            for begin in (None, start):
                b = characterise_boundary(_synthetic(tolerances, sizes, []), sizes, threshold=99.0, rounds=rounds,
                                          max_groups=max_groups, start=begin)
                assert b.evaluations <= bound
        if rounds >= 6:
            # Every group feasible to its end (each bisects until its interval closes, from the baseline),
            # the joint corner not (every diagonal round is spent): the bound is reached.
            largest_group = max(len(g) for g in boundary_groups(sizes, max_groups))
            worst = characterise_boundary(_alone_feasible(largest_group), sizes, threshold=99.0, rounds=rounds,
                                          max_groups=max_groups)
            assert worst.evaluations == bound, (rounds, worst.evaluations, bound)


def _alone_feasible(most_compressed: int, calls: list | None = None):
    """Feasible (100) while at most `most_compressed` coordinates are compressed at all, else 0: monotone."""

    def accuracy(xs: np.ndarray) -> np.ndarray:
        xs = np.atleast_2d(xs)
        if calls is not None:
            calls.append(xs.copy())
        return np.where((xs > 0).sum(axis=1) > most_compressed, 0.0, 100.0)

    return accuracy


def _removed(x: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The units x removes per coordinate, as the compression space decodes it."""
    return np.minimum(np.floor(np.clip(x, 0, 1) * sizes + 1e-9), sizes - 1).astype(int)


def _graded(sizes: np.ndarray, weights: np.ndarray, calls: list | None = None):
    """Accuracy falls with the fraction removed, faster in sensitive coordinates (weights): monotone in each."""

    def accuracy(xs: np.ndarray) -> np.ndarray:
        xs = np.atleast_2d(xs)
        if calls is not None:
            calls.append(xs.copy())
        return 95.0 - 40.0 * (_removed(xs, sizes) / sizes * weights).sum(axis=1)

    return accuracy


@pytest.mark.parametrize("rounds", [1, 3])
def test_each_site_costs_its_rounds_from_the_rules_level_and_is_never_probed_below_it(rounds):
    rng = np.random.default_rng(1)
    sizes = rng.integers(8, 65, size=20)
    accuracy = _graded(sizes, rng.uniform(0.02, 0.08, size=20))
    rule = one_rate_rule(accuracy, len(sizes), 70.0)
    assert 0.5 < rule.rate < 1  # above the middle, where a bisection from 0 would probe first
    start = rule.point(len(sizes))
    calls: list = []
    b = characterise_boundary(_recording(accuracy, calls), sizes, 70.0, start=start, rounds=rounds)
    assert b.complete and b.groups == 20
    assert b.evaluations == sum(len(c) for c in calls) <= rounds * len(sizes) + DIAGONAL_ROUNDS
    assert len(calls[0]) == len(sizes)  # every site probed once in the first round, in one batch
    site_probes = np.vstack([c for c in calls if len(c) > 1 or np.count_nonzero(c) == 1])
    for probe in site_probes:
        (site,) = np.flatnonzero(probe)
        assert _removed(probe, sizes)[site] > _removed(start, sizes)[site]  # above the rule's level, never below
    # Theta holds at least the rule's level, and each site alone at theta is feasible.
    assert np.all(_removed(b.theta, sizes) >= _removed(start, sizes))
    assert np.all(accuracy(np.diag(b.theta)) >= 70.0)
    # The diagonal starts from a scale known feasible from the rule (s * theta <= its point), never below it.
    assert b.diagonal_scale >= float(np.min(start / b.theta)) > 0
    assert accuracy(b.diagonal_scale * b.theta)[0] >= 70.0


def _recording(accuracy, calls: list):
    def recorded(xs: np.ndarray) -> np.ndarray:
        calls.append(np.atleast_2d(xs).copy())
        return accuracy(xs)

    return recorded


def test_more_rounds_from_the_rule_refine_what_one_round_found():
    rng = np.random.default_rng(2)
    sizes = rng.integers(8, 65, size=12)
    accuracy = _graded(sizes, rng.uniform(0.05, 0.5, size=12))
    start = one_rate_rule(accuracy, len(sizes), 85.0).point(len(sizes))
    one = characterise_boundary(accuracy, sizes, 85.0, start=start, rounds=1)
    many = characterise_boundary(accuracy, sizes, 85.0, start=start, rounds=8)
    assert np.all(_removed(many.theta, sizes) >= _removed(one.theta, sizes))
    assert np.all(accuracy(np.diag(many.theta)) >= 85.0)
    # With enough rounds each site's bisection closes: one more unit alone is infeasible (or there is none).
    beyond = np.diag((_removed(many.theta, sizes) + 1.5) / sizes)
    assert np.all((accuracy(beyond) < 85.0) | (_removed(many.theta, sizes) + 1 >= sizes))


def test_groups_are_consecutive_cover_every_searchable_coordinate_and_respect_the_cap():
    sizes = np.array([4, 1, 8, 8, 16, 1, 2, 32, 64, 3])
    alone = boundary_groups(sizes, 48)
    assert [g.tolist() for g in alone] == [[i] for i in range(10) if sizes[i] > 1]  # a single state: nothing to bisect
    grouped = boundary_groups(sizes, 3)
    assert len(grouped) == 3
    assert np.concatenate(grouped).tolist() == [i for i in range(10) if sizes[i] > 1]


def test_many_sites_are_bisected_in_groups_at_the_cap():
    rng = np.random.default_rng(3)
    sizes = rng.integers(16, 257, size=120)  # DenseNet-121 has 120 sites
    accuracy = _graded(sizes, rng.uniform(0.01, 0.1, size=120))
    start = one_rate_rule(accuracy, len(sizes), 85.0).point(len(sizes))
    calls: list = []
    b = characterise_boundary(_recording(accuracy, calls), sizes, 85.0, start=start, rounds=2, max_groups=48)
    assert b.groups == 48 and b.complete
    # Two rounds of at most 48 probes each (a closed group stops), then the diagonal's single points.
    assert len(calls[0]) == 48 and len(calls[1]) <= 48 and all(len(c) == 1 for c in calls[2:])
    assert b.evaluations <= 48 * 2 + DIAGONAL_ROUNDS == max_boundary_evaluations(sizes, rounds=2, max_groups=48)
    for probe in calls[0]:
        moved = np.flatnonzero(probe)
        assert 2 <= len(moved) <= 3 and np.array_equal(moved, np.arange(moved[0], moved[-1] + 1))  # neighbours
    # A group's feasible level holds for every member alone.
    assert np.all(_removed(b.theta, sizes) >= _removed(start, sizes))
    assert np.all(accuracy(np.diag(b.theta)) >= 85.0)


def _answers_then_nan(accuracy, answered: int, calls: list):
    """The first `answered` points are evaluated, the rest NaN: an evaluation budget running out mid-batch."""
    left = {"n": answered}

    def budgeted(xs: np.ndarray) -> np.ndarray:
        xs = np.atleast_2d(xs)
        calls.append(len(xs))
        acc = accuracy(xs).astype(np.float64)
        acc[left["n"]:] = np.nan
        left["n"] = max(left["n"] - len(xs), 0)
        return acc

    return budgeted


@pytest.mark.parametrize("answered", [0, 5, 48, 49, 50])
def test_a_spent_budget_stops_the_bisection_cleanly_and_says_so(answered):
    rng = np.random.default_rng(4)
    sizes = rng.integers(16, 129, size=100)
    accuracy = _graded(sizes, rng.uniform(0.01, 0.1, size=100))
    start = one_rate_rule(accuracy, len(sizes), 85.0).point(len(sizes))
    calls: list = []
    b = characterise_boundary(_answers_then_nan(accuracy, answered, calls), sizes, 85.0, start=start, max_groups=48)
    assert not b.complete and b.as_dict()["complete"] is False
    # One round of 48 group probes, then the diagonal one point at a time: nothing is asked after the first NaN.
    assert b.evaluations == answered and len(calls) == (1 if answered < 48 else 2 + answered - 48)
    # What it knew is still a valid boundary: every site alone at theta is feasible, the diagonal scale too.
    assert np.all(accuracy(np.diag(b.theta)) >= 85.0)
    assert np.all(_removed(b.theta, sizes) >= _removed(start, sizes))
    assert accuracy(b.diagonal_scale * b.theta)[0] >= 85.0


def test_the_cost_does_not_grow_with_the_number_of_sites_beyond_the_cap():
    for sites in (10, 48, 120, 1000):
        sizes = np.full(sites, 64)
        assert max_boundary_evaluations(sizes, rounds=1, max_groups=48) == min(sites, 48) + DIAGONAL_ROUNDS
        assert max_boundary_evaluations(sizes, rounds=0, max_groups=48) == DIAGONAL_ROUNDS


@pytest.mark.parametrize("rounds", [1, 3])
def test_the_box_holds_every_point_feasible_alone_and_stops_where_a_probe_failed(rounds):
    """theta is a lower bound; the box reaches up to the count known infeasible, so no feasible point is cut off."""
    sizes = np.array([16, 32, 64, 8])
    tolerances = np.array([3, 20, 0, 7])
    acc = _synthetic(tolerances, sizes, [])
    b = characterise_boundary(acc, sizes, threshold=99.0, rounds=rounds, diagonal_rounds=1)
    box = b.box()
    assert np.all(box >= b.theta)
    for i, size in enumerate(sizes):
        for count in range(size):
            x = np.zeros(len(sizes))
            x[i] = (count + 0.5) / size
            if acc(x)[0] >= 99.0:
                assert x[i] <= box[i] + 0.5 / size, (i, count)  # every feasible count is inside the box
    assert np.any(box < 1.0)  # some probe failed and bounds its coordinate
    for i in np.flatnonzero(box < 1.0):
        x = np.zeros(len(sizes))
        x[i] = box[i] + 0.5 / sizes[i]
        assert acc(x)[0] < 99.0  # just past the box: known infeasible


def test_grouped_coordinates_keep_the_whole_range_in_the_box():
    """A failed joint probe says nothing of one member alone: grouped coordinates are not bounded by it."""
    sizes = np.full(10, 16)
    b = characterise_boundary(_synthetic(np.full(10, 2), sizes, []), sizes, threshold=99.0, max_groups=3, diagonal_rounds=1)
    assert b.groups == 3
    assert np.all(b.box() == 1.0)
