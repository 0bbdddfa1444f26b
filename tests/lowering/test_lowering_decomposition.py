"""Joint decomposition + pruning plans lower into factorised ONNX that equals the substituted model."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from adans_toolchain.analysis.graph import Graph
from adans_toolchain.plan.workload import graph_workload, plan_workload
from adans_toolchain.evaluation.substitution import SubstitutionEvaluator, original_weights
from adans_toolchain.frontend.data import ImageSet
from adans_toolchain.lowering import CheckModelPass, DecomposePass, PruneChannelsPass, SimplifyPass, run_passes
from adans_toolchain.lowering.prune_channels import set_initializers
from adans_toolchain.plan.sites import layer_sites, parse_methods
from adans_toolchain.plan.space import CompressionSpace
from adans_toolchain.transforms.plan_transform import PlanTransform
from cost_models import workload_macs
from tests.conftest import randomise_batchnorm
from tests.helpers import build, export_and_analyse

CASES = [("cifar_resnet20", (3, 32, 32), "d,ps"), ("mobilenet_v2", (3, 48, 48), "d,ps"), ("cifar_resnet20", (3, 32, 32), "pn,ps")]


@pytest.mark.parametrize("name,shape,methods", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_joint_plans_lower_exactly(name, shape, methods):
    module = randomise_batchnorm(build(name), seed=2)
    exported = export_and_analyse(module, shape)
    analysis = exported.analysis
    methods = parse_methods(methods)
    transform = PlanTransform(analysis, original_weights(module, analysis))
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(5))
    evaluator = SubstitutionEvaluator(module, ImageSet(x, torch.zeros(4, dtype=torch.long), "random"), transform)
    rng = np.random.default_rng(7)
    groups = analysis.prunable_groups
    space = CompressionSpace.from_priorities(groups, {g.id: rng.random(g.size) for g in groups}, extra_sites=layer_sites(analysis, methods))
    kinds = {type(s).__name__ for s in space.sites}
    assert ("SparsitySite" in kinds) == ("pn" in methods) and ("DecompositionSite" in kinds) == ("svd" in methods)
    weighted = ("Conv", "Gemm", "MatMul")
    before = sum(n.op_type in weighted for n in exported.onnx_model.graph.node)
    ps_dims = np.array([n for site in space.sites for n in [site.kind == "ps"] * site.dims])
    for k in range(4):
        x_plan = rng.random(space.dim) * 0.8
        if k % 2:
            x_plan[ps_dims] = 0.0  # no channel pruning: sparsity must survive lowering exactly
        plan = space.decode(x_plan)
        assert plan.active_decompositions or plan.active_sparsity
        source = set_initializers(exported.onnx_model, transform.sparse_weights(plan))
        lowered, _ = run_passes(
            source, [PruneChannelsPass(analysis, plan), DecomposePass(analysis, plan, transform.factorizations), CheckModelPass(), SimplifyPass()]
        )
        session = ort.InferenceSession(lowered.SerializeToString(), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        reference = evaluator.logits(plan, x)
        assert np.abs(got - reference).max() <= 1e-4 * np.abs(reference).max()
        assert workload_macs(graph_workload(Graph.from_model(lowered, shape))) == workload_macs(plan_workload(analysis, plan))
        # Every decomposition adds its factor nodes: Tucker 1 + one per factorised mode, SVD 2.
        added = sum(
            (int(d.ranks[0] < d.full[0]) + int(d.ranks[1] < d.full[1])) if d.method == "tucker" else 1
            for d in plan.active_decompositions
        )
        assert sum(n.op_type in weighted for n in lowered.graph.node) == before + added
        if plan.active_sparsity and not any(p.removed for p in plan.pruning):
            # BatchNorm folding scales weights but keeps zeros zero.
            zeros = sum(int((numpy_helper.to_array(i) == 0).sum()) for i in lowered.graph.initializer if i.data_type == 1)
            assert zeros >= sum(s.removed for s in plan.active_sparsity)
