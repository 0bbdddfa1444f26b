"""Plots of a search: convergence (best f, mean f(S_g), α_t, e_avg per
iteration — the paper's Fig. 11 style) and samples over a 2-D function (the
paper's Fig. 10).

matplotlib is imported inside the functions, with the Agg backend, so that
importing the search package does not import it and plotting works without a
display.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from adans_toolchain.search.types import Evaluation, IterationSummary


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_convergence(iterations: Sequence[IterationSummary], path: str | os.PathLike[str]) -> Path:
    """Best f and mean f(S_g) per iteration; α_t (and e_avg, if any) on a second axis."""
    if not iterations:
        raise ValueError("no iterations to plot")
    plt = _pyplot()
    t = [s.iteration for s in iterations]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        ax.plot(t, [s.best_f for s in iterations], label="best f", color="tab:blue")
        ax.plot(t, [s.mean_good_f for s in iterations], label="mean f(S_g)", color="tab:green")
        ax.set_xlabel("iteration")
        ax.set_ylabel("score f")
        right = ax.twinx()
        right.plot(t, [s.alpha for s in iterations], label="α_t", color="tab:orange", linestyle="--")
        with_error = [(s.iteration, s.e_avg) for s in iterations if s.e_avg is not None]
        if with_error:
            right.plot(*zip(*with_error), label="e_avg", color="tab:red", linestyle=":")
        right.set_ylabel("α_t, e_avg")
        lines = ax.get_legend_handles_labels()
        more = right.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], loc="best")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return Path(path)


def plot_samples_2d(
    history: Sequence[Evaluation],
    fn_grid: Callable[[np.ndarray], Any],
    lower: Sequence[float],
    upper: Sequence[float],
    path: str | os.PathLike[str],
    *,
    resolution: int = 120,
) -> Path:
    """Samples coloured by iteration over a heatmap of a 2-D function.

    fn_grid follows the convention of `maximize`'s fn: it takes an (n, 2)
    array and returns n values, or (values, infos).
    """
    lower = np.asarray(lower, dtype=np.float64)
    upper = np.asarray(upper, dtype=np.float64)
    if lower.shape != (2,) or upper.shape != (2,):
        raise ValueError("plot_samples_2d needs a 2-D box")
    plt = _pyplot()
    gx, gy = np.meshgrid(
        np.linspace(lower[0], upper[0], resolution), np.linspace(lower[1], upper[1], resolution)
    )
    values = fn_grid(np.column_stack([gx.ravel(), gy.ravel()]))
    if isinstance(values, tuple):
        values = values[0]
    values = np.asarray(values, dtype=np.float64).reshape(gx.shape)
    xs = np.array([e.x for e in history]).reshape(-1, 2)
    its = np.array([e.iteration for e in history])

    fig, ax = plt.subplots(figsize=(6, 5))
    try:
        mesh = ax.pcolormesh(gx, gy, values, shading="auto", cmap="Greys")
        fig.colorbar(mesh, ax=ax, label="f")
        points = ax.scatter(xs[:, 0], xs[:, 1], c=its, s=10, cmap="viridis", edgecolors="none")
        fig.colorbar(points, ax=ax, label="iteration")
        ax.set_xlim(lower[0], upper[0])
        ax.set_ylim(lower[1], upper[1])
        ax.set_xlabel("x[0]")
        ax.set_ylabel("x[1]")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return Path(path)
