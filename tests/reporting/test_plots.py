"""Plots are written as image files (Agg backend, no display needed)."""

from __future__ import annotations

import numpy as np
import pytest

from adans_toolchain.search import maximize
from adans_toolchain.search.types import IterationSummary
from adans_toolchain.reporting import plots
from adans_toolchain.reporting.plots import plot_convergence, plot_samples_2d

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _bump(xs: np.ndarray) -> np.ndarray:
    """A smooth positive bump with its maximum 1.01 at x = 0.3 (in [0, 1]^d)."""
    return np.exp(-np.sum((xs - 0.3) ** 2, axis=1) / 0.1) + 0.01


@pytest.fixture(scope="module")
def bump():
    return _bump


@pytest.fixture(scope="module")
def result(bump):
    return maximize(bump, 2, samples=8, iterations=5, seed=0)


def _summary(i: int, alpha: float, e_avg: float | None, e_range: float | None) -> IterationSummary:
    return IterationSummary(i, alpha, 3, 0.1 * i, 0.2 * i, e_avg, 8 * (i + 1), 0.0, e_range)


class _Recorder:
    """Stands in for matplotlib's pyplot: keeps the figure so the test can look at its axes."""

    def __init__(self, plt):
        self.plt, self.figure = plt, None

    def subplots(self, *args, **kwargs):
        self.figure, axes = self.plt.subplots(*args, **kwargs)
        return self.figure, axes

    def close(self, fig):
        pass  # kept open for the assertions; closed by the test


def _drawn(monkeypatch, iterations, path):
    recorder = _Recorder(plots._pyplot())
    monkeypatch.setattr(plots, "_pyplot", lambda: recorder)
    plot_convergence(iterations, path)
    return recorder


def test_convergence_plot_gives_alpha_its_own_axis_and_the_errors_their_own_log_panel(monkeypatch, tmp_path):
    # e_avg spikes to ~1e3 when scores are near 0; e_range stays below 1.
    its = [_summary(0, 0.0, None, None), _summary(1, 0.05, 1500.0, 0.1), _summary(2, 0.3, 40.0, 0.12),
           _summary(3, 0.6, 0.5, 0.08)]
    recorder = _drawn(monkeypatch, its, tmp_path / "c.png")
    fig = recorder.figure
    try:
        assert (tmp_path / "c.png").read_bytes()[:8] == PNG_MAGIC
        labels = {ax: {line.get_label() for line in ax.get_lines()} for ax in fig.axes}
        alpha_axis = next(ax for ax, ls in labels.items() if "α_t" in ls)
        error_axis = next(ax for ax, ls in labels.items() if "e_avg" in ls)
        # α_t is alone on its axis, scaled to [0, 1], not to e_avg's spikes.
        assert labels[alpha_axis] == {"α_t"}
        assert alpha_axis.get_ylim()[1] <= 1.1
        # Both reconstruction errors, on a log axis of their own.
        assert labels[error_axis] == {"e_avg", "e_range"}
        assert error_axis.get_yscale() == "log"
        assert not {"best f", "mean f(S_g)"} & labels[error_axis]
        # Legends sit outside the data: right of their axes.
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            legend = ax.get_legend()
            if legend is not None:
                assert legend.get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1
        legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
        shown = {t.get_text() for legend in legends for t in legend.get_texts()}
        assert shown == {"best f", "mean f(S_g)", "α_t", "e_avg", "e_range"}
    finally:
        recorder.plt.close(fig)


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
