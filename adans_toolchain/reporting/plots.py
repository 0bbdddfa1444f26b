"""Plots of a search: convergence (best f, mean f(S_g), α_t, e_avg and e_range per
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
    """Two panels over the iterations: the scores with α_t on its own axis; the reconstruction errors.

    Top: best f and mean f(S_g) (left axis) and α_t (right axis, 0..1).
    Bottom: e_avg and e_range (see IterationSummary), on a log scale when
    they are positive, since e_avg spikes when scores are near 0. Legends
    sit outside the axes, right of each panel, so they never cover data.
    """
    if not iterations:
        raise ValueError("no iterations to plot")
    plt = _pyplot()
    t = [s.iteration for s in iterations]
    fig, (ax, err) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    try:
        ax.plot(t, [s.best_f for s in iterations], label="best f", color="tab:blue", marker=".")
        ax.plot(t, [s.mean_good_f for s in iterations], label="mean f(S_g)", color="tab:green", marker=".")
        ax.set_ylabel("score f")
        alpha_ax = ax.twinx()
        alpha_ax.plot(t, [s.alpha for s in iterations], label="α_t", color="tab:orange", linestyle="--", marker=".")
        alpha_ax.set_ylim(-0.02, 1.02)
        alpha_ax.set_ylabel("α_t (good-set threshold)")
        handles, labels = ax.get_legend_handles_labels()
        more = alpha_ax.get_legend_handles_labels()
        ax.legend(handles + more[0], labels + more[1], loc="upper left", bbox_to_anchor=(1.12, 1.0), borderaxespad=0.0)

        errors = [("e_avg", "tab:red", [(s.iteration, s.e_avg) for s in iterations if s.e_avg is not None]),
                  ("e_range", "tab:purple", [(s.iteration, s.e_range) for s in iterations if s.e_range is not None])]
        plotted = [values for _, _, values in errors if values]
        for name, color, values in errors:
            if values:
                err.plot(*zip(*values), label=name, color=color, marker="o", markersize=3)
        if plotted:
            if all(v > 0 for values in plotted for _, v in values):
                err.set_yscale("log")
            err.legend(loc="upper left", bbox_to_anchor=(1.12, 1.0), borderaxespad=0.0)
        else:
            err.text(0.5, 0.5, "no reconstruction errors (analysis off or nothing to fit)", transform=err.transAxes,
                     ha="center", va="center", color="0.4")
            err.set_yticks([])
        err.set_ylabel("reconstruction error")
        err.set_xlabel("iteration")
        err.xaxis.get_major_locator().set_params(integer=True)
        fig.tight_layout()
        fig.savefig(path, bbox_inches="tight")
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
