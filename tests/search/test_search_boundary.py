"""Boundary characterisation: bisection finds each site's largest feasible compression."""

from __future__ import annotations

import numpy as np

from adans_toolchain.search.boundary import Boundary, characterise_boundary, initial_batch, max_boundary_evaluations


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
    loose = characterise_boundary(_synthetic(tolerances, sizes, []), sizes, 95.0)
    strict = characterise_boundary(_synthetic(tolerances, sizes, []), sizes, 99.5)
    assert np.all(strict.theta <= loose.theta)
    assert np.all(loose.theta > 0) and np.all(loose.theta <= 1)


def test_diagonal_scale_is_feasible_jointly():
    sizes = np.array([16, 16, 16, 16])
    tolerances = np.array([8, 8, 8, 8])
    acc = _synthetic(tolerances, sizes, [])
    b = characterise_boundary(acc, sizes, 98.0)
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


def test_the_announced_boundary_cost_is_an_upper_bound_that_is_reached():
    sizes = np.array([16, 32, 64, 8, 3])
    rng = np.random.default_rng(0)
    for rounds in (1, 3, 6, 8):
        bound = max_boundary_evaluations(sizes, rounds=rounds, diagonal_rounds=6)
        for _ in range(5):
            tolerances = rng.integers(0, sizes)
            b = characterise_boundary(_synthetic(tolerances, sizes, []), sizes, threshold=99.0, rounds=rounds)
            assert b.evaluations <= bound
        if rounds >= 6:
            # Every single site feasible to its end (each bisects until its interval closes),
            # the joint corner not (every diagonal round is spent): the bound is reached.
            worst = characterise_boundary(_synthetic(sizes, sizes, []), sizes, threshold=99.0, rounds=rounds)
            assert worst.evaluations == bound, (rounds, worst.evaluations, bound)
