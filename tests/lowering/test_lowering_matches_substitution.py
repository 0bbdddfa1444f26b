"""For random Plans, the lowered ONNX model must equal the substituted PyTorch model."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from adans_toolchain.analysis.graph import Graph
from adans_toolchain.plan.workload import channel_counts, graph_workload
from adans_toolchain.evaluation.substitution import SubstitutionEvaluator
from adans_toolchain.frontend.data import ImageSet
from adans_toolchain.lowering import CheckModelPass, PruneChannelsPass, SimplifyPass, run_passes
from adans_toolchain.plan.space import CompressionSpace
from adans_toolchain.evaluation.substitution import original_weights
from adans_toolchain.transforms.plan_transform import PlanTransform
from cost_models import workload_macs
from tests.conftest import randomise_batchnorm
from tests.helpers import build, export_and_analyse

CASES = [("cifar_resnet20", (3, 32, 32)), ("mobilenet_v2", (3, 64, 64)), ("resnet18", (3, 64, 64))]


@pytest.mark.parametrize("name,shape", CASES, ids=[c[0] for c in CASES])
def test_twenty_random_plans_lower_exactly(name, shape):
    exported = export_and_analyse(randomise_batchnorm(build(name), seed=1), shape)
    analysis = exported.analysis
    x = torch.randn(6, *shape, generator=torch.Generator().manual_seed(2))
    data = ImageSet(x, torch.zeros(6, dtype=torch.long), "random")
    evaluator = SubstitutionEvaluator(exported.module, data, PlanTransform(analysis, original_weights(exported.module, analysis)))
    rng = np.random.default_rng(3)
    space = CompressionSpace.from_priorities(
        analysis.prunable_groups, {g.id: rng.random(g.size) for g in analysis.prunable_groups}
    )
    base_macs = workload_macs(graph_workload(analysis.graph))
    unpruned = evaluator.logits(space.decode(np.zeros(space.dim)), x)
    for k in range(20):
        # Rates up to 95 %, including extreme corners every few plans.
        x_plan = rng.random(space.dim) * (0.95 if k % 5 else 1.0)
        plan = space.decode(x_plan)
        lowered, _ = run_passes(exported.onnx_model, [PruneChannelsPass(analysis, plan), CheckModelPass(), SimplifyPass()])
        session = ort.InferenceSession(lowered.SerializeToString(), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        reference = evaluator.logits(plan, x)
        scale = np.abs(reference).max()
        assert np.abs(got - reference).max() <= 1e-4 * scale, f"plan {k}"
        # The plan really changed the function and the graph.
        assert np.abs(reference - unpruned).max() > 1e-3 * scale
        lowered_macs = workload_macs(graph_workload(Graph.from_model(lowered, shape)))
        assert lowered_macs == workload_macs(graph_workload(analysis.graph, channel_counts(analysis, plan)))
        assert lowered_macs < base_macs


def test_pad_amounts_shrink_with_pruned_padding_channels():
    exported = export_and_analyse(randomise_batchnorm(build("cifar_resnet20")), (3, 32, 32))
    analysis = exported.analysis
    groups = {g.id: g for g in analysis.groups}
    pad3 = groups["layer3.0.conv2"]
    # Remove the 8 padded channels that come first in stage 3 (the "before" side of the pad).
    tensor = pad3.tensors[0]
    order = np.argsort([u[tensor].min() for u in pad3.units])
    priorities = {g.id: np.ones(g.size) for g in analysis.prunable_groups}
    scores = np.ones(pad3.size)
    scores[order[:8]] = 0.0
    priorities[pad3.id] = scores
    space = CompressionSpace.from_priorities(analysis.prunable_groups, priorities)
    x = np.zeros(space.dim)
    x[space.names.index(pad3.id)] = 8.5 / pad3.size
    lowered, _ = run_passes(exported.onnx_model, [PruneChannelsPass(analysis, space.decode(x))])
    pads = [n for n in lowered.graph.node if n.op_type == "Pad"]
    values = {i.name: i for i in lowered.graph.initializer}
    from onnx import numpy_helper

    channel_pads = sorted(
        tuple(int(v) for v in numpy_helper.to_array(values[p.input[1]])[[1, 5]]) for p in pads if p.input[1] in values
    )
    assert (8, 16) in channel_pads  # stage 3: 16 before -> 8, 16 after unchanged
