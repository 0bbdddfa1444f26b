"""The `maximize` API: arguments, fn conventions, summaries, result."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from adans_toolchain.search import Evaluation, IterationSummary, SearchResult, make_sampler, maximize


def test_result_shape_and_best(bump):
    result = maximize(bump, 3, samples=4, iterations=5, seed=0)
    assert isinstance(result, SearchResult)
    assert len(result.history) == 20 and len(result.iterations) == 5
    assert result.resumed_from == 0
    best = max(result.history, key=lambda e: e.f)
    assert np.array_equal(result.best_x, best.x) and result.best_f == best.f
    assert [s.n_evaluations for s in result.iterations] == [4, 8, 12, 16, 20]
    assert [s.iteration for s in result.iterations] == list(range(5))


def test_init_is_evaluated_first_and_clipped_to_the_box(bump):
    init = np.array([[0.3, 0.3], [2.0, -1.0], [0.5, 0.5]])
    result = maximize(bump, 2, samples=4, iterations=3, init=init, reconstruction=False)
    first = [e for e in result.history if e.iteration == 0]
    assert [e.x.tolist() for e in first] == [[0.3, 0.3], [1.0, 0.0], [0.5, 0.5]]
    assert len(result.history) == 3 + 4 + 4  # init may differ in size from the batch


def test_infos_are_stored_with_each_evaluation():
    def fn(xs):
        return xs.sum(axis=1) + 1, [{"accuracy": float(x[0]), "cost": (1, 2)} for x in xs]

    result = maximize(fn, 2, samples=3, iterations=2, reconstruction=False)
    for evaluation in result.history:
        assert evaluation.info == {"accuracy": evaluation.x[0], "cost": [1, 2]}  # stored as JSON holds it
    assert result.best_info == max(result.history, key=lambda e: e.f).info


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_score_names_the_sample(bad):
    def fn(xs):
        scores = np.ones(len(xs))
        scores[2] = bad
        return scores

    with pytest.raises(ValueError, match="sample 2 of iteration 0"):
        maximize(fn, 2, samples=4, iterations=2)


def test_fn_must_return_one_score_per_sample():
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        maximize(lambda xs: np.ones(3), 2, samples=4, iterations=1)
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        maximize(lambda xs: (np.ones(4), [{"x": object()}] * 4), 2, samples=4, iterations=1)
    with pytest.raises(ValueError, match="3 infos"):
        maximize(lambda xs: (np.ones(4), [{}] * 3), 2, samples=4, iterations=1)


def test_fn_gets_a_copy_it_may_modify(bump):
    def vandal(xs):
        scores = bump(xs)
        xs[:] = 123.0
        return scores

    result = maximize(vandal, 2, samples=3, iterations=2, reconstruction=False)
    assert all((e.x <= 1).all() for e in result.history)


def test_callback_gets_every_summary(bump):
    seen: list[IterationSummary] = []
    result = maximize(bump, 2, samples=3, iterations=4, callback=seen.append)
    assert seen == result.iterations


def test_summary_fields(bump):
    result = maximize(bump, 3, samples=6, iterations=6, seed=1)
    first = result.iterations[0]
    assert first.e_avg is None  # nothing to predict iteration 0 from
    assert all(s.e_avg is not None and np.isfinite(s.e_avg) for s in result.iterations[1:])
    assert all(s.elapsed_s >= 0 for s in result.iterations)
    assert all(0 <= s.alpha <= 0.95 and s.n_good >= 1 for s in result.iterations)
    off = maximize(bump, 3, samples=6, iterations=3, seed=1, reconstruction=False)
    assert all(s.e_avg is None for s in off.iterations)


def test_elapsed_time_is_left_out_of_equality():
    one = IterationSummary(0, 0.5, 3, 1.0, 2.0, None, 10, elapsed_s=0.1)
    assert one == dataclasses.replace(one, elapsed_s=99.0)
    assert one != dataclasses.replace(one, best_f=2.5)


def test_records_are_frozen(bump):
    result = maximize(bump, 2, samples=3, iterations=1, reconstruction=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.history[0].f = 0.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        result.history[0].x[0] = 0.0
    assert result.history[0] == Evaluation(result.history[0].x.copy(), result.history[0].f, 0, {})


def test_a_sampler_instance_is_accepted(bump):
    by_name = maximize(bump, 2, sampler="genetic", samples=4, iterations=3, reconstruction=False)
    by_instance = maximize(bump, 2, sampler=make_sampler("genetic"), samples=4, iterations=3, reconstruction=False)
    assert by_name == by_instance


def test_scores_at_or_below_zero_are_searched_too():
    result = maximize(lambda xs: -np.sum((xs - 0.7) ** 2, axis=1), 2, samples=10, iterations=10, seed=0)
    assert result.best_f > -0.01


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dim=0), "dim"),
        (dict(samples=0), "samples"),
        (dict(iterations=0), "iterations"),
        (dict(seed=-1), "seed"),
        (dict(alpha_max=1.5), "alpha_max"),
        (dict(lower=[0, 0, 0]), "lower"),
        (dict(lower=[0.6, 0.0], upper=[0.5, 1.0]), "empty along dimension 0"),
        (dict(init=np.zeros((2, 3))), "init"),
        (dict(sampler="nope"), "gaussian, uniform, zoom, genetic"),
    ],
)
def test_bad_arguments_are_clear_value_errors(bump, kwargs, message):
    settings = dict(dim=2, samples=3, iterations=2) | kwargs
    with pytest.raises(ValueError, match=message):
        maximize(bump, **settings)


def test_range_error_stays_meaningful_where_the_relative_error_explodes():
    # A pruning-like score: most of the box is "infeasible" and scores ~1e-30.
    def cliff(x):
        return np.where(x.sum(axis=1) < 0.8, 0.5 + 0.1 * x.sum(axis=1), 1e-30)

    result = maximize(cliff, 2, samples=8, iterations=5, seed=0)
    later = result.iterations[1:]
    assert all(s.e_range is not None and 0 <= s.e_range < 10 for s in later)
    assert max(s.e_avg for s in later) > 1e6  # |f - f~| / |f| with f ~ 1e-30
    # Old journals (no e_range) still load: the field defaults to None.
    assert IterationSummary(0, 0.5, 3, 1.0, 2.0, None, 10, elapsed_s=0.1).e_range is None
