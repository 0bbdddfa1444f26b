"""Reconstruction analysis (paper §VI): f̃ fits the history, and its error on
each new batch falls as an adaptive search learns a smooth f."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from adans_toolchain.search import maximize
from adans_toolchain.search.reconstruction import fit, relative_error, select_centres


def smooth(xs: np.ndarray) -> np.ndarray:
    return np.exp(-np.sum((xs - 0.3) ** 2, axis=1) / (2 * 0.3**2)) + 0.1


@pytest.mark.parametrize("spread", ["euclidean", "coordinate"])
def test_fit_is_exact_at_the_training_points(spread):
    rng = np.random.default_rng(0)
    xs = rng.uniform(-1, 3, size=(200, 4))
    fs = smooth(xs)
    model = fit(xs, fs, np.full(4, -1.0), np.full(4, 3.0), spread=spread)
    assert np.max(np.abs(model.predict(xs) - fs) / fs) < 1e-5


def test_duplicate_samples_do_not_break_the_fit():
    rng = np.random.default_rng(1)
    xs = rng.random((50, 3))
    xs = np.vstack([xs, xs[:10]])  # Genetic re-proposes unchanged parents
    fs = smooth(xs)
    model = fit(xs, fs, np.zeros(3), np.ones(3))
    assert np.max(np.abs(model.predict(xs) - fs) / fs) < 1e-4


def test_fit_generalises_between_samples_on_a_smooth_function():
    # 5-D: β = d/(8 ln 2) makes kernels about as wide as the sample spacing
    # (measured e ≈ 0.09); in 2–3-D they are narrower and f̃ sags between samples.
    rng = np.random.default_rng(2)
    xs = rng.random((300, 5))
    model = fit(xs, smooth(xs), np.zeros(5), np.ones(5))
    test = rng.random((200, 5))
    assert relative_error(model.predict(test), smooth(test)) < 0.15


def test_e_avg_is_finite_and_falls_as_the_search_learns():
    for seed in range(3):
        result = maximize(smooth, 5, sampler="gaussian", samples=30, iterations=16, seed=seed)
        errors = [s.e_avg for s in result.iterations[1:]]
        assert all(e is not None and np.isfinite(e) for e in errors)
        half = len(errors) // 2
        assert np.mean(errors[half:]) < 0.7 * np.mean(errors[:half]), errors


def test_relative_error_skips_zero_scores_and_reports_none_without_any():
    assert relative_error(np.array([1.0, 5.0]), np.array([2.0, 0.0])) == 0.5
    assert relative_error(np.array([1.0]), np.array([0.0])) is None


def test_centres_are_capped_to_the_recent_and_the_best():
    fs = np.arange(10.0)[::-1]  # the oldest samples are the best
    kept = select_centres(fs, 6)
    assert kept.tolist() == [0, 1, 2, 7, 8, 9]
    assert select_centres(fs, 20).tolist() == list(range(10))


def test_fit_stays_cheap_for_a_thousand_samples_in_30_dimensions(python_env):
    """Measured ≈ 45 ms; the bound only catches a complexity regression."""
    code = (
        "import time, numpy as np\n"
        "from adans_toolchain.search.reconstruction import fit\n"
        "rng = np.random.default_rng(0); xs = rng.random((1000, 30)); fs = rng.random(1000) + 1\n"
        "fit(xs, fs, np.zeros(30), np.ones(30))\n"
        "start = time.perf_counter(); fit(xs, fs, np.zeros(30), np.ones(30)).predict(xs[:50])\n"
        "print(time.perf_counter() - start)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=python_env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) < 1.0
