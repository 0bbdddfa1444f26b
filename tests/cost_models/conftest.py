"""ResNet-20 exported once for the cost-model tests, with a synthetic table over its kernel families."""

from __future__ import annotations

import numpy as np
import pytest

from adans_toolchain.lowering import CheckModelPass, PruneChannelsPass, SimplifyPass, run_passes
from adans_toolchain.profiling.grid import GridRule
from adans_toolchain.profiling.profiler import ModelToProfile, plan_families
from adans_toolchain.plan.space import CompressionSpace
from tests.cost_models.fixtures import make_target, synthetic_table
from tests.helpers import build, export_and_analyse


@pytest.fixture(scope="session")
def resnet20():
    return export_and_analyse(build("cifar_resnet20").eval(), (3, 32, 32))


@pytest.fixture(scope="session")
def resnet20_specs(resnet20):
    model = ModelToProfile("cifar_resnet20", resnet20.onnx_model, resnet20.analysis, resnet20.image_shape)
    return plan_families([model], (1,), GridRule(align=8))


@pytest.fixture(scope="session")
def resnet20_space(resnet20):
    groups = resnet20.analysis.prunable_groups
    rng = np.random.default_rng(0)
    return CompressionSpace.from_priorities(groups, {g.id: rng.random(g.size) for g in groups})


@pytest.fixture
def synthetic_lut(tmp_path, resnet20_specs):
    """A table whose entries are a smooth, monotone function of the MACs and bytes of each kernel."""
    target = make_target()
    path = tmp_path / "testcpu.json"
    synthetic_table(resnet20_specs.values(), target).save(path)
    return target, path


def lower(exported, plan):
    model, _ = run_passes(exported.onnx_model, [PruneChannelsPass(exported.analysis, plan), CheckModelPass(), SimplifyPass()])
    return model
