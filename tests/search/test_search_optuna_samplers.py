"""The Optuna samplers (tpe, cmaes): what the conformance suite cannot say.

The conformance suite (test_search_samplers.py) and the kill-and-resume test
already run over them; here: the missing-extra error, awkward histories, no
log noise, that CMA-ES really learns from a rebuilt history, and that both
beat uniform sampling on a smooth bump.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings

import numpy as np
import pytest

from adans_toolchain.errors import ConfigError
from adans_toolchain.search import SearchContext, make_sampler, maximize

HAS_OPTUNA = importlib.util.find_spec("optuna") is not None
HAS_CMAES = importlib.util.find_spec("cmaes") is not None
needs = {
    "tpe": pytest.mark.skipif(not HAS_OPTUNA, reason="optuna is not installed (extra: optuna)"),
    "cmaes": pytest.mark.skipif(not HAS_CMAES, reason="cmaes is not installed (extra: optuna)"),
}
OPTUNA_SAMPLERS = [pytest.param(name, marks=mark) for name, mark in needs.items()]
LOWER = np.array([0.0, -1.0, 0.5])
UPPER = np.array([1.0, 1.0, 0.5])  # the last coordinate is fixed (a boundary θ of 0)


def context(xs, fs, iterations, batch_size: int = 4) -> SearchContext:
    return SearchContext.from_history(
        np.asarray(xs, dtype=np.float64),
        np.asarray(fs, dtype=np.float64),
        np.asarray(iterations),
        lower=LOWER,
        upper=UPPER,
        iteration=int(np.max(iterations)) + 1,
        batch_size=batch_size,
        alpha_max=0.95,
    )


@pytest.mark.parametrize("name, module", [("tpe", "optuna"), ("cmaes", "cmaes")])
def test_a_missing_extra_is_a_one_line_config_error(monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(ConfigError) as e:
        make_sampler(name)
    message = str(e.value)
    assert "\n" not in message and f"'{name}'" in message and 'pip install -e ".[optuna]"' in message


def test_the_compile_config_refuses_a_sampler_whose_extra_is_missing(monkeypatch):
    from adans_toolchain.pipeline.config import CompileConfig

    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[optuna\]"'):
        CompileConfig(model="m", data="d", out="o", sampler="tpe")


@pytest.mark.parametrize("name", OPTUNA_SAMPLERS)
def test_duplicates_and_points_outside_the_box_give_a_valid_batch_silently(name, capfd):
    rng = np.random.default_rng(0)
    xs = rng.uniform([-0.5, -2.0, 0.0], [1.5, 2.0, 1.0], size=(24, 3))  # partly outside the box
    xs[12:] = xs[:12]  # every point twice
    fs = -np.sum(xs**2, axis=1)
    optuna = pytest.importorskip("optuna") if name == "tpe" else None
    verbosity = None if optuna is None else optuna.logging.get_verbosity()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        points = make_sampler(name).propose(context(xs, fs, np.repeat([0, 1, 2], 8)), 9, np.random.default_rng(1))
    assert points.shape == (9, 3) and np.isfinite(points).all()
    assert (points >= LOWER).all() and (points <= UPPER).all()
    assert (points[:, 2] == 0.5).all()
    assert capfd.readouterr().err == ""  # no Optuna INFO lines per study or trial
    if optuna is not None:
        assert optuna.logging.get_verbosity() == verbosity  # the caller's setting is left alone


@pytest.mark.parametrize("name", OPTUNA_SAMPLERS)
def test_a_box_with_no_free_coordinate_proposes_its_only_point(name):
    box = dict(lower=np.full(2, 0.25), upper=np.full(2, 0.25))
    ctx = SearchContext.from_history(
        np.full((3, 2), 0.25), np.arange(3.0), np.zeros(3, dtype=int), iteration=1, batch_size=3, alpha_max=0.95,
        **box,
    )
    assert np.array_equal(make_sampler(name).propose(ctx, 4, np.random.default_rng(0)), np.full((4, 2), 0.25))


@pytest.mark.skipif(not HAS_CMAES, reason="cmaes is not installed (extra: optuna)")
def test_cmaes_starts_from_the_best_initial_point_and_learns_from_later_generations():
    """Optuna's own CmaEsSampler ignores trials it did not generate; this one
    replays the history, so both the initial batch and every generation count."""
    rng = np.random.default_rng(0)
    init = rng.uniform(LOWER, UPPER, size=(8, 3))
    init[3] = [0.75, 0.5, 0.5]
    f_init = np.where(np.arange(8) == 3, 1.0, 0.0)
    sampler = make_sampler("cmaes", popsize=8)
    first = sampler.propose(context(init, f_init, np.zeros(8, dtype=int)), 200, np.random.default_rng(1))
    assert np.allclose(first[:, :2].mean(axis=0), [0.75, 0.5], atol=0.1)  # not the box's centre (0.5, 0)

    generation = first[:8]
    histories = []
    for f_generation in (generation[:, 0], -generation[:, 0]):  # the same points, opposite preferences
        xs = np.concatenate([init, generation])
        fs = np.concatenate([f_init, f_generation])
        histories.append(context(xs, fs, np.repeat([0, 1], 8)))
    after = [sampler.propose(h, 200, np.random.default_rng(1))[:, 0].mean() for h in histories]
    assert after[0] > after[1]  # the told generation moved the mean toward its better half


def bump5(xs: np.ndarray) -> np.ndarray:
    """A smooth bump in [0, 1]^5, maximum 1.01 at x = 0.3."""
    return np.exp(-np.sum((xs - 0.3) ** 2, axis=1) / 0.1) + 0.01


@pytest.mark.parametrize("name", OPTUNA_SAMPLERS)
def test_beats_uniform_sampling_on_a_smooth_bump_within_200_evaluations(name):
    def best(sampler: str, seed: int) -> float:
        return maximize(bump5, 5, sampler=sampler, samples=20, iterations=10, seed=seed, reconstruction=False).best_f

    seeds = (0, 1, 2)
    method = np.mean([best(name, s) for s in seeds])
    uniform = np.mean([best("uniform", s) for s in seeds])
    assert method > uniform + 0.1, (method, uniform)
