"""What each sampler specifically promises (digest §6), beyond conformance."""

from __future__ import annotations

import numpy as np
import pytest

from adans_toolchain.search import SearchContext, make_sampler, maximize
from adans_toolchain.search.samplers import apportion
from adans_toolchain.search.samplers.gaussian import _pairs
from adans_toolchain.search.samplers.zoom import best_leaf, build_tree, quality, root_tree


def context_from(xs, fs, *, iteration=1, batch_size=2, lower=None, upper=None, iterations=None) -> SearchContext:
    xs = np.asarray(xs, dtype=float)
    return SearchContext.from_history(
        xs,
        np.asarray(fs, dtype=float),
        np.zeros(len(fs), dtype=int) if iterations is None else np.asarray(iterations),
        lower=np.zeros(xs.shape[1]) if lower is None else lower,
        upper=np.ones(xs.shape[1]) if upper is None else upper,
        iteration=iteration,
        batch_size=batch_size,
        alpha_max=0.95,
    )


# ------------------------------------------------------------ rounding


@pytest.mark.parametrize(
    "n, expected",
    [(0, [0, 0, 0]), (1, [0, 1, 0]), (2, [0, 1, 1]), (7, [1, 3, 3]), (10, [1, 5, 4]), (50, [5, 23, 22])],
)
def test_batch_split_sums_to_n_and_is_deterministic(n, expected):
    assert apportion(n, (0.1, 0.45, 0.45)) == expected


def test_batch_split_sums_to_n_for_every_n():
    for n in range(200):
        counts = apportion(n, (0.1, 0.45, 0.45))
        assert sum(counts) == n and all(c >= 0 for c in counts)
        assert all(abs(c - n * w) < 1 for c, w in zip(counts, (0.1, 0.45, 0.45)))


# ------------------------------------------------------------ gaussian


@pytest.mark.parametrize("strategy", [1, 2, 3, 4])
def test_every_pair_strategy_pairs_distinct_members(strategy):
    first, second = _pairs(strategy, 5, 40, np.random.default_rng(0))
    assert first.shape == second.shape == (40,)
    assert ((0 <= first) & (first < 5) & (0 <= second) & (second < 5)).all()
    assert (first != second).all()


def test_default_pair_strategy_walks_s_g_by_decreasing_score():
    first, _ = _pairs(4, 3, 7, np.random.default_rng(0))
    assert first.tolist() == [0, 1, 2, 0, 1, 2, 0]  # positions in S_g, best first


def test_pair_strategy_3_always_starts_from_the_best():
    first, _ = _pairs(3, 6, 10, np.random.default_rng(0))
    assert (first == 0).all()


def test_pair_strategy_2_uses_score_neighbours():
    first, second = _pairs(2, 4, 5, np.random.default_rng(0))
    assert list(zip(first.tolist(), second.tolist())) == [(0, 1), (1, 2), (2, 3), (3, 0), (0, 1)]


def test_invalid_pair_strategy_is_rejected():
    with pytest.raises(ValueError, match="pair_strategy"):
        make_sampler("gaussian", pair_strategy=5)


def test_gaussian_local_and_cross_parts_concentrate_around_s_g():
    """With a tight S_g far from the box centre, 90% of the batch lands near it."""
    rng = np.random.default_rng(0)
    good = 0.8 + 0.01 * rng.standard_normal((10, 3))
    bad = rng.uniform(0, 0.3, size=(30, 3))
    xs = np.vstack([good, bad])
    fs = np.concatenate([np.full(10, 2.0) + rng.random(10) * 0.01, np.full(30, 0.1)])
    context = context_from(xs, fs, batch_size=10)
    assert set(context.good.tolist()) == set(range(10))
    points = make_sampler("gaussian").propose(context, 1000, np.random.default_rng(1))
    near = np.all(np.abs(points - 0.8) < 0.2, axis=1)
    assert 0.85 <= near.mean() <= 0.95  # Local + Cross (90%) + the odd uniform point near it


# ------------------------------------------------------------ genetic


def test_genetic_without_replacement_never_picks_the_worst_good_sample():
    xs = np.array([[0.1, 0.1], [0.5, 0.5], [0.9, 0.9], [0.3, 0.7]])
    fs = np.array([4.0, 3.0, 2.0, 1.0])
    context = context_from(xs, fs, batch_size=4)  # S_g = all four
    sampler = make_sampler("genetic", p_cross=0.0, p_mutate=0.0)  # children = parents
    children = sampler.propose(context, 30, np.random.default_rng(0))
    chosen = {tuple(c) for c in children}
    assert (0.3, 0.7) not in chosen
    assert chosen <= {tuple(x) for x in xs[:3]}
    # In rounds without replacement, each round of 3 uses each eligible parent once.
    for start in range(0, 30, 3):
        assert len({tuple(c) for c in children[start : start + 3]}) == 3


def test_genetic_with_replacement_draws_independently():
    xs = np.array([[0.1, 0.1], [0.5, 0.5], [0.9, 0.9]])
    context = context_from(xs, [100.0, 1.0, 0.5], batch_size=3)
    sampler = make_sampler("genetic", p_cross=0.0, p_mutate=0.0, selection="with_replacement")
    children = sampler.propose(context, 20, np.random.default_rng(0))
    assert sum(np.array_equal(c, xs[0]) for c in children) >= 18  # weight 99 against 0.5


def test_genetic_crossover_only_swaps_coordinates_between_partners():
    xs = np.array([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.2, 0.2, 0.2, 0.2]])
    context = context_from(xs, [3.0, 2.0, 1.0], batch_size=3)
    sampler = make_sampler("genetic", p_cross=1.0, p_swap=0.5, p_mutate=0.0)
    children = sampler.propose(context, 2, np.random.default_rng(4))
    assert set(np.unique(children).tolist()) <= {0.0, 1.0}
    assert np.array_equal(children.sum(axis=0), np.ones(4))  # each coordinate: one 0, one 1


def test_genetic_discrete_mutation_moves_genes_by_one_step():
    xs = np.full((4, 3), 0.5)  # identical parents: any child's move is its mutation
    context = context_from(xs, [4.0, 3.0, 2.0, 1.0], batch_size=4)
    steps = (0.125, 0.25, 0.0625)
    sampler = make_sampler("genetic", p_cross=0.0, p_mutate=1.0, p_tweak=1.0, discrete_steps=steps)
    children = sampler.propose(context, 20, np.random.default_rng(0))
    assert np.allclose(np.abs(children - 0.5), steps)
    assert (children > 0.5).any() and (children < 0.5).any()  # both signs occur


def test_genetic_rejects_bad_options():
    with pytest.raises(ValueError, match="p_swap"):
        make_sampler("genetic", p_swap=1.5)
    with pytest.raises(ValueError, match="selection"):
        make_sampler("genetic", selection="tournament")
    with pytest.raises(ValueError, match="discrete_steps"):
        make_sampler("genetic", discrete_steps=[0.1, -0.1])


# ------------------------------------------------------------ zoom


def zoom_run_context(iterations=6, samples=8, seed=0) -> SearchContext:
    result = maximize(
        lambda xs: np.exp(-np.sum((xs - 0.8) ** 2, axis=1) / 0.05) + 0.01,
        2, sampler="zoom", samples=samples, iterations=iterations, seed=seed, reconstruction=False,
    )
    xs = np.array([e.x for e in result.history])
    fs = np.array([e.f for e in result.history])
    its = np.array([e.iteration for e in result.history])
    return context_from(xs, fs, iteration=iterations, batch_size=samples, iterations=its)


def test_zoom_tree_rebuilt_from_history_equals_the_tree_carried_across_iterations():
    """An implementation carrying the tree would add each batch to it and
    split once per iteration; replaying from the history gives the same tree."""
    full = zoom_run_context(iterations=8)
    carried = root_tree(full.at(0))  # empty history: the whole box, no samples
    for t in range(1, 9):
        now = full.at(t)
        new = full.xs[(full.iterations == t - 1)]
        carried = type(carried)(
            carried.lower, carried.upper, carried.parent, np.concatenate([carried.leaf_of, carried.locate(new)])
        )
        carried = carried.split(best_leaf(carried, now), now.xs, now.scale)
        assert carried == build_tree(now), f"iteration {t}"


def test_zoom_splits_the_best_region_in_half_along_its_longest_side():
    xs = np.array([[0.9, 0.9], [0.8, 0.95], [0.1, 0.1], [0.2, 0.3]])
    context = context_from(xs, [3.0, 2.0, 0.5, 0.4], batch_size=2, lower=[0, 0], upper=[2, 1])
    tree = build_tree(context)  # iteration 1: one split of the root
    assert tree.size == 3
    # The root is 2 wide and 1 tall: halve the first axis at 1.0.
    assert np.array_equal(tree.upper[1], [1.0, 1.0]) and np.array_equal(tree.lower[2], [1.0, 0.0])
    w = quality(tree, context)
    assert w.tolist() == [0.5, 0.5, 0.0]  # root 2/4, left half 2/4, right half empty


def test_zoom_samples_only_where_the_quality_is_positive():
    context = zoom_run_context(iterations=10)
    tree = build_tree(context)
    w = quality(tree, context)
    points = make_sampler("zoom").propose(context, 500, np.random.default_rng(0))
    inside_some = np.zeros(len(points), dtype=bool)
    for node in np.flatnonzero(w > 0):
        inside_some |= np.all((points >= tree.lower[node]) & (points <= tree.upper[node]), axis=1)
    assert inside_some.all()
    assert tree.size == 2 * 10 + 1  # one split per iteration after the first
