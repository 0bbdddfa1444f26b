"""Conformance suite: every sampler must pass every test here."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from adans_toolchain.search import SAMPLER_NAMES, Sampler, SearchContext, make_sampler, maximize, read_journal

DIM = 4
LOWER = np.full(DIM, -2.0)
UPPER = np.array([1.0, 3.0, 0.5, 10.0])


def shifted_bump(xs: np.ndarray) -> np.ndarray:
    """A bump inside the non-trivial box above."""
    return np.exp(-np.sum((xs - 0.2) ** 2, axis=1) / 2.0) + 0.01


def history_context(iteration: int = 3, batch: int = 10, seed: int = 0, scores=shifted_bump) -> SearchContext:
    """A context with `iteration` batches of uniform samples already evaluated."""
    rng = np.random.default_rng(seed)
    xs = rng.uniform(LOWER, UPPER, size=(iteration * batch, DIM))
    return SearchContext.from_history(
        xs,
        scores(xs),
        np.repeat(np.arange(iteration), batch),
        lower=LOWER,
        upper=UPPER,
        iteration=iteration,
        batch_size=batch,
        alpha_max=0.95,
    )


# Samplers behind an optional extra, and the module each one needs.
OPTIONAL = {"tpe": "optuna", "cmaes": "cmaes"}


def installed(name: str) -> bool:
    return name not in OPTIONAL or importlib.util.find_spec(OPTIONAL[name]) is not None


def sampler_param(name: str):
    reason = f"{OPTIONAL.get(name)} is not installed (extra: optuna)"
    return pytest.param(name, marks=pytest.mark.skipif(not installed(name), reason=reason))


@pytest.fixture(params=[sampler_param(name) for name in SAMPLER_NAMES])
def sampler(request) -> Sampler:
    return make_sampler(request.param)


@pytest.mark.parametrize("n", [1, 7, 50])
@pytest.mark.parametrize("iteration", [0, 1, 4])
def test_proposals_have_the_batch_size_and_stay_in_the_box(sampler, n, iteration):
    context = history_context(iteration=iteration)
    points = sampler.propose(context, n, np.random.default_rng(1))
    assert points.shape == (n, DIM)
    assert np.isfinite(points).all()
    assert (points >= LOWER).all() and (points <= UPPER).all()


def test_zero_samples_is_an_empty_batch(sampler):
    assert sampler.propose(history_context(), 0, np.random.default_rng(0)).shape == (0, DIM)


@pytest.mark.parametrize(
    "scores",
    [
        lambda xs: -np.sum(xs**2, axis=1),  # all ≤ 0: the shifted-utility rule
        lambda xs: np.ones(xs.shape[0]),  # all equal: no preference at all
    ],
    ids=["negative", "constant"],
)
def test_unusual_scores_still_give_valid_batches(sampler, scores):
    context = history_context(scores=scores)
    points = sampler.propose(context, 9, np.random.default_rng(2))
    assert points.shape == (9, DIM) and np.isfinite(points).all()
    assert (points >= LOWER).all() and (points <= UPPER).all()


def test_a_single_sample_history_is_enough(sampler):
    context = SearchContext.from_history(
        np.array([[0.0, 1.0, 0.0, 5.0]]),
        np.array([1.0]),
        np.array([0]),
        lower=LOWER,
        upper=UPPER,
        iteration=1,
        batch_size=1,
        alpha_max=0.95,
    )
    points = sampler.propose(context, 5, np.random.default_rng(3))
    assert points.shape == (5, DIM) and np.isfinite(points).all()
    assert (points >= LOWER).all() and (points <= UPPER).all()


def test_the_sampler_does_not_mutate_the_context(sampler):
    context = history_context()
    before = context.xs.copy(), context.fs.copy(), context.good.copy()
    sampler.propose(context, 8, np.random.default_rng(4))
    assert np.array_equal(context.xs, before[0])
    assert np.array_equal(context.fs, before[1])
    assert np.array_equal(context.good, before[2])


def test_a_search_stays_in_the_box_and_honours_odd_batches(sampler):
    result = maximize(
        shifted_bump, DIM, sampler=sampler, samples=7, iterations=5, seed=3, lower=-2.0, upper=UPPER,
        reconstruction=False,
    )
    xs = np.array([e.x for e in result.history])
    assert xs.shape == (35, DIM)
    assert (xs >= LOWER).all() and (xs <= UPPER).all()
    assert [sum(e.iteration == t for e in result.history) for t in range(5)] == [7] * 5


def test_a_fixed_coordinate_stays_fixed(sampler):
    """lower == upper along a coordinate (a layer whose boundary θ is 0)."""
    result = maximize(
        shifted_bump, 3, sampler=sampler, samples=6, iterations=5, seed=0, lower=[-1.0, 0.5, 0.0],
        upper=[1.0, 0.5, 2.0],
    )
    xs = np.array([e.x for e in result.history])
    assert (xs[:, 1] == 0.5).all() and np.isfinite(xs).all()
    assert all(s.e_avg is None or np.isfinite(s.e_avg) for s in result.iterations)


def test_same_seed_same_search_in_two_processes(sampler, run_worker):
    settings = dict(sampler=sampler.name, seed=11, dim=3, samples=6, iterations=4, lower=-1.0, upper=2.0)
    first = run_worker(**settings)
    second = run_worker(**settings)
    assert first == second
    assert len(first["history"]) == 24


def test_different_seeds_give_different_searches(sampler):
    runs = [
        maximize(shifted_bump, DIM, sampler=sampler, samples=6, iterations=3, seed=seed, reconstruction=False)
        for seed in (0, 1)
    ]
    assert runs[0].history != runs[1].history
    # Not just the initial uniform batch: the adaptive iterations differ too.
    last = [np.array([e.x for e in r.history if e.iteration == 2]) for r in runs]
    assert not np.array_equal(last[0], last[1])


def test_state_rebuilt_from_the_journal_equals_the_state_carried_in_memory(sampler, tmp_path):
    """The batch proposed at iteration t during a run equals the batch proposed
    from nothing but the journal's history and the seed."""
    proposed: list[np.ndarray] = []

    def recording(xs: np.ndarray) -> np.ndarray:
        proposed.append(xs.copy())
        return shifted_bump(xs)

    seed, samples = 5, 6
    journal = tmp_path / "run.jsonl"
    maximize(
        recording, DIM, sampler=sampler, samples=samples, iterations=6, seed=seed, lower=LOWER, upper=UPPER,
        journal=journal, reconstruction=False,
    )
    _, evaluations, _ = read_journal(journal)
    xs = np.array([e.x for e in evaluations])
    fs = np.array([e.f for e in evaluations])
    its = np.array([e.iteration for e in evaluations])
    for t in range(1, 6):
        keep = its < t
        context = SearchContext.from_history(
            xs[keep], fs[keep], its[keep], lower=LOWER, upper=UPPER, iteration=t, batch_size=samples,
            alpha_max=0.95,
        )
        rebuilt = sampler.propose(context, samples, np.random.default_rng([seed, t]))
        assert np.array_equal(rebuilt, proposed[t]), f"iteration {t}"


def test_options_round_trip_through_make_sampler(sampler):
    assert make_sampler(sampler.name, **sampler.options()) == sampler


def test_unknown_sampler_names_list_the_known_ones():
    with pytest.raises(ValueError, match="gaussian, uniform, zoom, genetic"):
        make_sampler("simulated_annealing")


def test_unknown_options_are_rejected_by_name():
    with pytest.raises(ValueError, match="'p_mutation'"):
        make_sampler("genetic", p_mutation=0.3)


def test_constructors_are_keyword_only():
    for name in filter(installed, SAMPLER_NAMES):
        cls = type(make_sampler(name))
        with pytest.raises(TypeError):
            cls(0.5)
