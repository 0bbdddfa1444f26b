"""CompressionSpace and Plan: decode/encode and JSON round trips."""

from __future__ import annotations

import numpy as np
import pytest

from adans_toolchain.plan import GroupPruning, Plan
from adans_toolchain.plan.space import CompressionSpace, PruningSite
from tests.helpers import build, export_and_analyse


@pytest.fixture(scope="module")
def space():
    exported = export_and_analyse(build("cifar_resnet20"), (3, 32, 32))
    rng = np.random.default_rng(0)
    groups = exported.analysis.prunable_groups
    return CompressionSpace.from_priorities(groups, {g.id: rng.random(g.size) for g in groups}, "fp")


def test_decode_removes_floor_of_rate_lowest_priority_units(space):
    x = np.full(space.dim, 0.25)
    plan = space.decode(x)
    for site, p in zip(space.sites, plan.pruning):
        n_removed = int(np.floor(0.25 * site.size))
        assert len(p.keep) == site.size - n_removed
        assert set(p.removed) == set(int(u) for u in site.order[:n_removed])


def test_at_least_one_unit_stays(space):
    plan = space.decode(np.ones(space.dim))
    assert all(len(p.keep) == 1 for p in plan.pruning)


def test_encode_decode_round_trip(space):
    rng = np.random.default_rng(1)
    for _ in range(20):
        plan = space.decode(rng.random(space.dim))
        assert space.decode(space.encode(plan)) == plan


def test_encode_rejects_plans_outside_the_space(space):
    site = space.sites[0]
    keep = tuple(sorted(int(u) for u in site.order[:-1]))  # drops the most important unit
    plan = Plan((GroupPruning(site.group.id, site.size, keep),))
    with pytest.raises(ValueError):
        space.encode(plan)


def test_plan_json_round_trip(space):
    plan = space.decode(np.linspace(0, 0.9, space.dim))
    again = Plan.from_json(plan.to_json())
    assert again == plan and again.model_fingerprint == "fp"


def test_plan_validation():
    with pytest.raises(ValueError):
        GroupPruning("g", 4, ())
    with pytest.raises(ValueError):
        GroupPruning("g", 4, (2, 1))
    with pytest.raises(ValueError):
        GroupPruning("g", 4, (0, 4))
    with pytest.raises(ValueError):
        Plan.from_dict({"format": "something-else"})


def test_round_to_keeps_multiples_and_rounds_up(space):
    rounded = CompressionSpace([PruningSite(s.group, s.order, 8) for s in space.sites], "fp")
    rng = np.random.default_rng(2)
    for _ in range(30):
        x = rng.random(space.dim)
        plain, plan = space.decode(x), rounded.decode(x)
        for site, p, q in zip(space.sites, plain.pruning, plan.pruning):
            if site.size >= 8:
                assert len(q.keep) % 8 == 0
                assert len(p.keep) <= len(q.keep) < len(p.keep) + 8  # rounded up, never down
            else:
                assert q == p
        assert rounded.decode(rounded.encode(plan)) == plan


def test_round_to_rejects_unrounded_plans(space):
    rounded = CompressionSpace([PruningSite(s.group, s.order, 8) for s in space.sites], "fp")
    site_index = next(i for i, s in enumerate(space.sites) if s.size >= 16)
    x = np.zeros(space.dim)
    x[site_index] = 3.5 / space.sites[site_index].size  # 3 removed: not a multiple-of-8 count kept
    with pytest.raises(ValueError):
        rounded.encode(space.decode(x))
