"""The same suite over every cost model: protocol, batching, and monotonicity in compression.

Monotonicity: pruning more channels of any one group of ResNet-20 never
makes a model more costly. For latency this holds for a table whose
entries are monotone (the synthetic one here) and for the roofline; a real
measured table can, by design, make 16 channels cheaper than 15 (see
test_latency.py::test_staircase_makes_aligned_counts_cheaper).
"""

from __future__ import annotations

import numpy as np
import pytest

from adans_toolchain.analysis.graph import Graph
from adans_toolchain.plan.workload import graph_workload, plan_workloads
from cost_models import CostModel, cost_model_names, make_cost_model
from tests.cost_models.conftest import lower
from tests.cost_models.fixtures import make_target

MODELS = ["macs", "memory", "latency-table", "latency-roofline"]


@pytest.fixture
def model(request, synthetic_lut, tmp_path, monkeypatch) -> CostModel:
    monkeypatch.setenv("ADANS_LUT_DIR", str(tmp_path / "no-tables-here"))
    name = request.param
    if name == "latency-table":
        target, path = synthetic_lut
        return make_cost_model("latency", target, lut_path=path, missing="error")
    if name == "latency-roofline":
        return make_cost_model("latency", make_target())
    return make_cost_model(name, make_target())


def test_every_registered_model_is_covered():
    assert set(cost_model_names()) == {"macs", "memory", "latency"}


@pytest.mark.parametrize("model", MODELS, indirect=True)
def test_protocol_and_batching(model, resnet20, resnet20_space):
    rng = np.random.default_rng(1)
    plans = resnet20_space.decode_batch(rng.random((4, resnet20_space.dim)) * 0.8)
    works = plan_workloads(resnet20.analysis, plans)
    batch = model.estimate(works)
    assert batch.shape == (4,) and batch.dtype == np.float64 and np.all(batch > 0)
    assert [float(model.estimate([w])[0]) for w in works] == batch.tolist()  # batch = one by one
    assert model.estimate(works).tolist() == batch.tolist()  # deterministic
    d = model.describe()
    assert d["name"] == model.name and d["unit"] == model.unit and d["target"] == "testcpu"
    assert isinstance(d["notes"], list)


@pytest.mark.parametrize("model", MODELS, indirect=True)
def test_cost_never_increases_when_any_group_is_pruned_more(model, resnet20, resnet20_space):
    space = resnet20_space
    rates = [0.0, 0.2, 0.45, 0.7, 0.95]
    base = np.full(space.dim, 0.0)
    for i, name in enumerate(space.names):
        xs = np.repeat(base[None, :], len(rates), axis=0)
        xs[:, i] = rates
        costs = model.estimate(plan_workloads(resnet20.analysis, space.decode_batch(xs)))
        assert np.all(np.diff(costs) <= 1e-12 * costs[0]), f"{model.name}: group {name} costs {costs}"
        assert costs[-1] < costs[0], f"{model.name}: pruning group {name} saved nothing"


@pytest.mark.parametrize("model", MODELS, indirect=True)
def test_search_graph_and_emitted_graph_cost_the_same(model, resnet20, resnet20_space):
    """The unfused graph the search prices and the simplified graph lowering emits agree."""
    rng = np.random.default_rng(2)
    for x in (np.zeros(resnet20_space.dim), rng.random(resnet20_space.dim) * 0.7):
        plan = resnet20_space.decode(x)
        search = model.estimate(plan_workloads(resnet20.analysis, [plan]))[0]
        emitted = model.estimate([graph_workload(Graph.from_model(lower(resnet20, plan), resnet20.image_shape))])[0]
        assert emitted == pytest.approx(search, rel=1e-9)
