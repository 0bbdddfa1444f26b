"""Per-layer precision in the Plan and the space (--methods ...,int8): coordinates, JSON, and what they cost."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cost_models import macs_by_precision, workload_macs, workload_memory_bytes

from adans_toolchain.errors import ConfigError
from adans_toolchain.plan import LayerPrecision, Plan
from adans_toolchain.plan.sites import layer_sites, parse_methods
from adans_toolchain.plan.space import CompressionSpace, PrecisionSite
from adans_toolchain.plan.workload import plan_workload
from tests.helpers import build, export_and_analyse


@pytest.fixture(scope="module")
def resnet20():
    return export_and_analyse(build("cifar_resnet20"), (3, 32, 32))


def _space(analysis, methods: str) -> CompressionSpace:
    groups = analysis.prunable_groups if "ps" in parse_methods(methods) else []
    rng = np.random.default_rng(0)
    return CompressionSpace.from_priorities(groups, {g.id: rng.random(g.size) for g in groups}, "fp",
                                            extra_sites=layer_sites(analysis, parse_methods(methods)))


def test_int8_is_a_method_alone_or_with_others():
    assert parse_methods("int8") == ("int8",)
    assert parse_methods("ps,int8") == ("ps", "int8")
    assert parse_methods("d,ps,int8") == ("ps", "svd", "tucker", "int8")
    with pytest.raises(ConfigError, match="unknown method"):
        parse_methods("int4")


def test_every_weighted_layer_gets_one_two_state_coordinate_and_high_x_is_int8(resnet20):
    space = _space(resnet20.analysis, "ps,int8")
    precision = [s for s in space.sites if isinstance(s, PrecisionSite)]
    assert len(precision) == 20  # 19 Conv + the Gemm
    assert all(s.levels == (2,) for s in precision)
    assert space.decode(np.zeros(space.dim)).int8_layers == ()
    everything = space.decode(np.ones(space.dim))
    assert set(everything.int8_layers) == {s.layer.weight for s in precision}
    assert space.decode(np.full(space.dim, PrecisionSite.INT8_FROM - 0.01)).int8_layers == ()
    assert len(space.decode(np.full(space.dim, PrecisionSite.INT8_FROM)).int8_layers) == 20


def test_precision_round_trips_through_encode_and_json(resnet20):
    space = _space(resnet20.analysis, "d,ps,int8")
    rng = np.random.default_rng(1)
    for _ in range(10):
        plan = space.decode(rng.random(space.dim))
        assert space.decode(space.encode(plan)) == plan
        assert Plan.from_json(plan.to_json()) == plan


def test_a_plan_written_before_precision_loads_with_every_layer_float():
    plan = Plan((), "fp", precision=(LayerPrecision("conv1.weight", "int8"),))
    data = json.loads(plan.to_json())
    del data["precision"]
    old = Plan.from_dict(data)
    assert old.precision == () and old.int8_layers == () and old.precision_for("conv1.weight") == "float"
    assert old.is_identity


def test_an_int8_only_plan_is_not_the_baseline_but_keeps_float_weights():
    plan = Plan((), "fp", precision=(LayerPrecision("conv1.weight", "int8"),))
    assert not plan.is_identity and plan.keeps_float_weights
    assert plan.float_part == Plan((), "fp") and plan.float_part.is_identity
    with pytest.raises(ValueError, match="precision must be"):
        LayerPrecision("conv1.weight", "int4")


def test_int8_coordinates_lower_the_memory_cost_monotonically_and_leave_macs(resnet20):
    analysis = resnet20.analysis
    space = _space(analysis, "ps,int8")
    precision = [i for i, name in enumerate(space.names) if name.endswith(":int8")]
    x = np.full(space.dim, 0.2)  # some pruning ...
    x[precision] = 0.0  # ... every layer float
    memory, macs = [], []
    for flipped in range(len(precision) + 1):
        x[precision[:flipped]] = 1.0
        work = plan_workload(analysis, space.decode(x))
        memory.append(workload_memory_bytes(work))
        macs.append(workload_macs(work))
    assert all(later < earlier for earlier, later in zip(memory, memory[1:])), memory
    assert len(set(macs)) == 1  # the same multiply-adds, in integers
    split = macs_by_precision(plan_workload(analysis, space.decode(x)))
    assert set(split) == {"int8"} and split["int8"] == macs[0]


def test_the_factors_of_a_decomposed_int8_layer_are_all_int8(resnet20):
    analysis = resnet20.analysis
    space = _space(analysis, "d,int8")
    plan = space.decode(np.full(space.dim, 0.9))
    decomposed = {d.layer for d in plan.active_decompositions}
    assert decomposed and decomposed <= set(plan.int8_layers)
    work = plan_workload(analysis, plan)
    factors = [op for op in work if "/tucker_" in op.name or "/svd_" in op.name]
    assert factors and all(op.weight_bits == 8 for op in factors)
    assert all(op.weight_bits == 32 for op in work if op.op_type == "BatchNormalization")
