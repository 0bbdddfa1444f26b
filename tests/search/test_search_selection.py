"""Algorithm 1, steps 1–3: α_t and S_g, checked by hand, and the loop invariant."""

from __future__ import annotations

import numpy as np
import pytest

from adans_toolchain.search import SAMPLER_NAMES, maximize
from adans_toolchain.search.selection import good_set


def test_alpha_by_hand():
    # f* = 5; the 2nd best score is 4, so α = 4/5 and S_g = {5, 4}.
    alpha, good = good_set(np.array([1.0, 5.0, 3.0, 4.0, 2.0]), batch_size=2, alpha_max=0.95)
    assert alpha == pytest.approx(0.8)
    assert good.tolist() == [1, 3]  # by decreasing score


def test_alpha_is_capped_at_alpha_max():
    # 4/5 > 0.5: α = 0.5 and S_g = {f ≥ 2.5} = {5, 4, 3}, more than b samples.
    alpha, good = good_set(np.array([1.0, 5.0, 3.0, 4.0, 2.0]), batch_size=2, alpha_max=0.5)
    assert alpha == 0.5
    assert good.tolist() == [1, 3, 2]


def test_at_least_b_samples_score_above_any_smaller_alpha():
    rng = np.random.default_rng(0)
    for _ in range(50):
        fs = rng.random(40) + 0.01
        b = int(rng.integers(1, 40))
        alpha, good = good_set(fs, b, 0.95)
        assert 0.0 <= alpha <= 0.95
        assert good.size >= b
        # α_t is the largest such α: just above it, fewer than b samples
        # qualify (unless the cap binds).
        if alpha < 0.95:
            assert np.count_nonzero(fs > (alpha + 1e-9) * fs.max()) < b


def test_fewer_samples_than_b_means_s_g_is_everything():
    alpha, good = good_set(np.array([3.0, 1.0, 2.0]), batch_size=5, alpha_max=0.95)
    assert alpha == 0.0
    assert good.tolist() == [0, 2, 1]


def test_ties_keep_history_order():
    alpha, good = good_set(np.array([2.0, 3.0, 2.0, 1.0]), batch_size=2, alpha_max=0.95)
    assert alpha == pytest.approx(2 / 3)
    assert good.tolist() == [1, 0, 2]  # both 2.0s tie with the b-th score


def test_scores_at_or_below_zero_use_the_shift_by_the_minimum():
    # u = f − min f = [0, 4, 2, 3, 1]: u* = 4, 2nd best u = 3, α = 3/4.
    alpha, good = good_set(np.array([-3.0, 1.0, -1.0, 0.0, -2.0]), batch_size=2, alpha_max=0.95)
    assert alpha == pytest.approx(0.75)
    assert good.tolist() == [1, 3]


def test_the_best_sample_is_always_good():
    rng = np.random.default_rng(1)
    for _ in range(100):
        fs = rng.normal(size=int(rng.integers(1, 30))) * 10
        _, good = good_set(fs, int(rng.integers(1, 10)), float(rng.random()))
        assert good[0] == int(np.argmax(fs))


def test_equal_scores_give_alpha_zero_and_everything_good():
    alpha, good = good_set(np.zeros(6), batch_size=2, alpha_max=0.95)
    assert alpha == 0.0 and good.size == 6


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_best_score_never_decreases_and_summaries_match_the_history(sampler, bump):
    # tpe and cmaes are an optional extra (.[optuna]); the README installs only .[test].
    pytest.importorskip({"tpe": "optuna", "cmaes": "cmaes"}.get(sampler, "numpy"))
    result = maximize(bump, 3, sampler=sampler, samples=5, iterations=8, seed=2, reconstruction=False)
    best = [s.best_f for s in result.iterations]
    assert all(later >= earlier for earlier, later in zip(best, best[1:]))
    fs = np.array([e.f for e in result.history])
    for summary in result.iterations:
        seen = fs[: summary.n_evaluations]
        assert summary.best_f == seen.max()
        alpha, good = good_set(seen, 5, 0.95)
        assert (summary.alpha, summary.n_good) == (alpha, good.size)
        assert summary.mean_good_f == pytest.approx(seen[good].mean())
    assert result.best_f == best[-1] == fs.max()
