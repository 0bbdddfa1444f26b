"""Plots are written as image files (Agg backend, no display needed)."""

from __future__ import annotations

import pytest

from adans_toolchain.search import maximize
from adans_toolchain.reporting.plots import plot_convergence, plot_samples_2d

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def result(bump):
    return maximize(bump, 2, samples=8, iterations=5, seed=0)


def test_convergence_plot(tmp_path, result):
    path = plot_convergence(result.iterations, tmp_path / "convergence.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_convergence_plot_without_e_avg(tmp_path, bump):
    off = maximize(bump, 2, samples=8, iterations=3, reconstruction=False)
    assert plot_convergence(off.iterations, tmp_path / "c.png").stat().st_size > 0


def test_samples_over_a_2d_function(tmp_path, result, bump):
    path = plot_samples_2d(result.history, bump, [0, 0], [1, 1], tmp_path / "samples.png", resolution=30)
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_samples_plot_needs_a_2d_box(tmp_path, result, bump):
    with pytest.raises(ValueError, match="2-D"):
        plot_samples_2d(result.history, bump, [0, 0, 0], [1, 1, 1], tmp_path / "x.png")
