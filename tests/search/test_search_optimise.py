"""The adaptive samplers must actually optimise: beat the uniform baseline."""

from __future__ import annotations

import numpy as np
import pytest

from adans_toolchain.search import maximize


def narrow_bump(xs: np.ndarray) -> np.ndarray:
    """5-D Gaussian bump, max 1.01 at an off-centre point: uniform sampling
    rarely lands near it with a few hundred samples."""
    centre = np.array([0.7, 0.25, 0.6, 0.4, 0.8])
    return np.exp(-np.sum((xs - centre) ** 2, axis=1) / 0.05) + 0.01


def best_score(sampler: str, seed: int) -> float:
    return maximize(narrow_bump, 5, sampler=sampler, samples=20, iterations=15, seed=seed, reconstruction=False).best_f


@pytest.mark.parametrize("sampler", ["gaussian", "zoom", "genetic"])
def test_adaptive_sampler_beats_uniform_at_equal_budget(sampler):
    wins = sum(best_score(sampler, seed) > best_score("uniform", seed) for seed in range(5))
    assert wins >= 4


def test_gaussian_gets_close_to_the_optimum():
    assert np.median([best_score("gaussian", seed) for seed in range(5)]) > 0.9


def test_good_set_tightens_as_the_search_goes_on():
    result = maximize(narrow_bump, 5, sampler="gaussian", samples=20, iterations=15, seed=0, reconstruction=False)
    alphas = [s.alpha for s in result.iterations]
    means = [s.mean_good_f for s in result.iterations]
    assert alphas[-1] > alphas[0] and means[-1] > 2 * means[0]
