"""Grouped convolutions, channel shuffle, chunk/split, dense concatenation, channels-last MLPs: lowered = substituted.

The lowered ONNX model (channels physically removed, `group`, Reshape
targets, Slice bounds and Split sizes rewritten) must compute what the
substituted model (readers of the pruned channels zeroed) computes, for
random plans on the torchvision architectures of issue 16 and on small
graphs for the operator forms they do not use.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

from adans_toolchain.analysis.channels import analyse_channels
from adans_toolchain.analysis.graph import Graph, attributes
from adans_toolchain.evaluation.onnx_runtime import OnnxEvaluator
from adans_toolchain.evaluation.substitution import SubstitutionEvaluator, original_weights
from adans_toolchain.frontend.data import ImageSet
from adans_toolchain.frontend.export import export_onnx
from adans_toolchain.lowering import CheckModelPass, PruneChannelsPass, SimplifyPass, run_passes
from adans_toolchain.plan.space import CompressionSpace
from adans_toolchain.plan.workload import channel_counts, graph_workload
from adans_toolchain.transforms.plan_transform import PlanTransform
from cost_models import workload_macs
from tests.conftest import randomise_batchnorm
from tests.helpers import build, export_and_analyse


def _images(n: int, shape, seed: int = 2) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def _run(model: onnx.ModelProto, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _random_space(analysis, seed: int) -> tuple[CompressionSpace, np.random.Generator]:
    rng = np.random.default_rng(seed)
    groups = analysis.prunable_groups
    return CompressionSpace.from_priorities(groups, {g.id: rng.random(g.size) for g in groups}), rng


def _assert_lowers_exactly(model, analysis, evaluator, x, plans: int, seed: int = 3) -> list[onnx.ModelProto]:
    """`plans` random plans: the lowered model equals substitution, the plan changed the function, MACs as predicted."""
    space, rng = _random_space(analysis, seed)
    shape = tuple(x.shape[1:])
    base = workload_macs(graph_workload(analysis.graph))
    unpruned = evaluator.logits(space.decode(np.zeros(space.dim)), x)
    pruned_models = []
    for k in range(plans):
        plan = space.decode(0.2 + 0.7 * rng.random(space.dim))  # every group loses 20 to 90 % of its units
        pruned, _ = run_passes(model, [PruneChannelsPass(analysis, plan), CheckModelPass()])
        lowered, _ = run_passes(pruned, [SimplifyPass()])
        got, reference = _run(lowered, x), evaluator.logits(plan, x)
        scale = float(np.abs(reference).max())
        assert float(np.abs(got - reference).max()) <= 1e-4 * scale, f"plan {k}"
        assert float(np.abs(reference - unpruned).max()) > 1e-3 * scale, f"plan {k} changed nothing"
        lowered_macs = workload_macs(graph_workload(Graph.from_model(lowered, shape)))
        assert lowered_macs == workload_macs(graph_workload(analysis.graph, channel_counts(analysis, plan)))
        assert lowered_macs < base
        pruned_models.append(pruned)
    return pruned_models


TORCHVISION = ["resnext50_32x4d", "regnet_y_400mf", "shufflenet_v2_x1_0", "densenet121"]


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_random_plans_lower_exactly(name):
    shape = (3, 32, 32)
    exported = export_and_analyse(randomise_batchnorm(build(name), seed=1), shape)
    analysis = exported.analysis
    x = _images(4, shape)
    data = ImageSet(x, torch.zeros(4, dtype=torch.long), "random")
    evaluator = SubstitutionEvaluator(exported.module, data, PlanTransform(analysis, original_weights(exported.module, analysis)))
    pruned_models = _assert_lowers_exactly(exported.onnx_model, analysis, evaluator, x, plans=2)
    grouped = {n.name: attributes(n)["group"] for n in exported.onnx_model.graph.node
               if n.op_type == "Conv" and 1 < attributes(n).get("group", 1) < exported.analysis.graph.shapes[n.input[0]][1]}
    for pruned in pruned_models:
        # Grouped (non-depthwise) convolutions keep their groups: each group lost the same channels.
        assert {n.name: attributes(n)["group"] for n in pruned.graph.node if n.name in grouped} == grouped


def test_priorities_fold_a_grouped_conv_input_onto_its_in_group_positions():
    """Taylor importance of an in-group position sums the G channels the weight column reads."""
    shape = (3, 32, 32)
    exported = export_and_analyse(randomise_batchnorm(build("regnet_y_400mf"), seed=1), shape)
    analysis = exported.analysis
    data = ImageSet(_images(4, shape), torch.zeros(4, dtype=torch.long), "random")
    evaluator = SubstitutionEvaluator(exported.module, data, PlanTransform(analysis, original_weights(exported.module, analysis)))
    group = next(g for g in analysis.prunable_groups if g.id.endswith("f.a.0"))
    scores = evaluator.priorities(analysis, [group])[group.id]
    assert scores.shape == (group.size,) and np.all(scores > 0)


def test_grouped_conv_output_channels_are_evaluated_physically_smaller_exactly():
    """evaluation.slicing cuts a grouped conv's output rows (its `groups` stays); its input side stays zeroed."""
    shape = (3, 32, 32)
    module = randomise_batchnorm(build("regnet_y_400mf"), seed=3)
    exported = export_and_analyse(module, shape)
    analysis = exported.analysis
    data = ImageSet(_images(8, shape, 1), torch.zeros(8, dtype=torch.long), "random")
    transform = PlanTransform(analysis, original_weights(module, analysis))
    sliced = SubstitutionEvaluator(module, data, transform, slicing=True, batch_size=16)
    reference = SubstitutionEvaluator(module, data, transform, batch_size=16)
    assert any(gid.endswith("f.b.0") for gid in sliced.slicer.sliced_groups)
    assert all("grouped Conv" in why for gid, why in sliced.slicer.zeroed_groups.items() if gid.endswith("f.a.0"))
    space, rng = _random_space(analysis, 0)
    for _ in range(2):
        plan = space.decode(rng.random(space.dim) * 0.7)
        with torch.no_grad():
            with sliced.candidate(plan):
                got = sliced.module(data.x).float()
            with reference.candidate(plan):
                expected = reference.module(data.x).float()
        assert float((got - expected).abs().max()) <= 1e-4 * float(expected.abs().max())


class TinyConvNeXt(nn.Module):
    """A ConvNeXt stage in miniature: patchify stem, two CNBlocks (depthwise, Permute, LayerNorm, Linear MLP), head."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models.convnext import CNBlock, LayerNorm2d

        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        # layer_scale 1 (torchvision starts at 1e-6) so that what the MLPs compute reaches the logits.
        self.blocks = nn.Sequential(CNBlock(16, 1.0, 0.0), CNBlock(16, 1.0, 0.0))
        self.norm = LayerNorm2d(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(self.blocks(self.stem(x))).mean((2, 3)))


def test_convnext_mlp_hidden_channels_lower_exactly():
    """Channels-last Linear MLPs (through Permute and LayerNorm over the last axis): substituted in PyTorch, lowered in ONNX."""
    shape = (3, 32, 32)
    torch.manual_seed(0)
    exported = export_and_analyse(TinyConvNeXt(), shape)
    analysis = exported.analysis
    assert [g.size for g in analysis.prunable_groups] == [64, 64]  # one hidden group of 4 x 16 per block
    x = _images(3, shape)
    data = ImageSet(x, torch.zeros(3, dtype=torch.long), "random")
    evaluator = SubstitutionEvaluator(exported.module, data, PlanTransform(analysis, original_weights(exported.module, analysis)))
    sliced = SubstitutionEvaluator(exported.module, data, PlanTransform(analysis, original_weights(exported.module, analysis)),
                                   slicing=True)
    assert sliced.slicer is not None and len(sliced.slicer.sliced_groups) == 2  # physically smaller Linear layers
    space, rng = _random_space(analysis, 3)
    unpruned = evaluator.logits(space.decode(np.zeros(space.dim)), x)
    base_macs = workload_macs(graph_workload(analysis.graph))
    for k in range(2):
        plan = space.decode(rng.random(space.dim) * 0.9)
        lowered, _ = run_passes(exported.onnx_model, [PruneChannelsPass(analysis, plan), CheckModelPass(), SimplifyPass()])
        got, reference = _run(lowered, x), evaluator.logits(plan, x)
        scale = float(np.abs(reference).max())
        assert float(np.abs(got - reference).max()) <= 1e-4 * scale
        assert float(np.abs(reference - unpruned).max()) > 1e-3 * scale
        with sliced.candidate(plan), torch.no_grad():
            assert float((sliced.module(x) - torch.from_numpy(reference)).abs().max()) <= 1e-4 * scale
        # MACs of the plan (channels counted on the last axis) are those of the lowered model, and fewer.
        lowered_macs = workload_macs(graph_workload(Graph.from_model(lowered, shape)))
        predicted = workload_macs(graph_workload(analysis.graph, channel_counts(analysis, plan), channel_axes=analysis.channel_axes))
        assert lowered_macs == predicted < base_macs


# -- operator forms on hand-written graphs ---------------------------------------------


class _Graph:
    """conv a (8 channels) -> Relu -> [channel operator] -> one conv per part -> Concat -> pool -> Gemm."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.conv("input", 3, 8, "a", kernel=3)

    def const(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def conv(self, x: str, c_in: int, c_out: int, name: str, kernel: int = 1) -> str:
        w = self.const(f"{name}.weight", self.rng.standard_normal((c_out, c_in, kernel, kernel)).astype(np.float32))
        b = self.const(f"{name}.bias", self.rng.standard_normal(c_out).astype(np.float32))
        pads = [kernel // 2] * 4
        self.nodes.append(helper.make_node("Conv", [x, w, b], [f"{name}_conv"], name=name, pads=pads))
        self.nodes.append(helper.make_node("Relu", [f"{name}_conv"], [f"{name}_out"], name=f"{name}_relu"))
        return f"{name}_out"

    def model(self, parts: list[tuple[str, int]], opset: int) -> onnx.ModelProto:
        outs = [self.conv(t, c, 4, f"p{i}") for i, (t, c) in enumerate(parts)]
        self.nodes.append(helper.make_node("Concat", outs, ["joined"], name="join", axis=1))
        self.nodes.append(helper.make_node("GlobalAveragePool", ["joined"], ["pooled"], name="pool"))
        self.nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"))
        w = self.const("fc.weight", self.rng.standard_normal((5, 4 * len(parts))).astype(np.float32))
        self.nodes.append(helper.make_node("Gemm", ["flat", w], ["logits"], name="fc", transB=1))
        graph = helper.make_graph(
            self.nodes, "parts", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 8, 8])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 5])], self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        onnx.checker.check_model(model, full_check=True)
        return model


def _split(opset: int) -> onnx.ModelProto:
    g = _Graph()
    if opset < 13:
        node = helper.make_node("Split", ["a_out"], ["s0", "s1"], name="split", axis=1, split=[3, 5])
        sizes = [3, 5]
    elif opset < 18:
        sizes_input = g.const("sizes", np.array([3, 5], np.int64))
        node = helper.make_node("Split", ["a_out", sizes_input], ["s0", "s1"], name="split", axis=1)
        sizes = [3, 5]
    else:  # equal parts from num_outputs: lowering must give sizes instead
        node = helper.make_node("Split", ["a_out"], ["s0", "s1"], name="split", axis=1, num_outputs=2)
        sizes = [4, 4]
    g.nodes.append(node)
    return g.model([("s0", sizes[0]), ("s1", sizes[1])], opset)


def _stored_slices() -> onnx.ModelProto:
    """Channels 1..3 and 4..7 (negative start, end past the last channel) in stored bounds; channel 0 unread."""
    g = _Graph()
    axes = g.const("axes", np.array([1], np.int64))
    for name, start, end in (("lo", 1, 4), ("hi", -4, 2**62)):
        bounds = [g.const(f"{name}.starts", np.array([start])), g.const(f"{name}.ends", np.array([end]))]
        g.nodes.append(helper.make_node("Slice", ["a_out", *bounds, axes], [name], name=name))
    return g.model([("lo", 3), ("hi", 4)], 13)


def _stored_shuffle() -> onnx.ModelProto:
    """A channel shuffle (2 groups of 4) whose Reshape targets are stored constants, then a chunk by Split."""
    g = _Graph()
    g.nodes.append(helper.make_node("Reshape", ["a_out", g.const("to5d", np.array([0, 2, 4, 8, 8], np.int64))], ["r"], name="r"))
    g.nodes.append(helper.make_node("Transpose", ["r"], ["t"], name="t", perm=[0, 2, 1, 3, 4]))
    to4d, halves = g.const("to4d", np.array([-1, 8, 8, 8], np.int64)), g.const("halves", np.array([4, 4], np.int64))
    g.nodes.append(helper.make_node("Reshape", ["t", to4d], ["shuffled"], name="back"))
    g.nodes.append(helper.make_node("Split", ["shuffled", halves], ["s0", "s1"], name="split", axis=1))
    return g.model([("s0", 4), ("s1", 4)], 13)


FORMS = {
    "split-attribute-opset11": lambda: _split(11),
    "split-input-opset13": lambda: _split(13),
    "split-num-outputs-opset18": lambda: _split(18),
    "slices-stored-bounds": _stored_slices,
    "shuffle-stored-targets": _stored_shuffle,
}


@pytest.mark.parametrize("form", list(FORMS))
def test_channel_operator_forms_lower_exactly(form):
    model = FORMS[form]()
    shape = (3, 8, 8)
    graph = Graph.from_model(model, shape)
    analysis = analyse_channels(graph)
    parts = [g for g in analysis.prunable_groups if g.id == "a" or g.id.startswith("a#")]
    # One group per part (after the shuffle, each half holds the channels of both shuffle groups at 2 positions).
    assert len(parts) == 2
    x = _images(3, shape)
    data = ImageSet(x, torch.zeros(3, dtype=torch.long), "random")
    evaluator = OnnxEvaluator(model, data, PlanTransform(analysis, graph.initializers))
    _assert_lowers_exactly(model, analysis, evaluator, x, plans=3)


class ViewFlatten(nn.Module):
    """x.view(n, 8 * 4 * 4): a Reshape whose target the exporter computes from Shape with the channel count spelled in."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1, stride=2)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.a(x))
        return self.fc(y.view(y.size(0), 8 * 4 * 4))


def test_a_computed_flatten_target_gets_the_kept_count_and_keeps_the_batch_dynamic():
    shape = (3, 8, 8)
    exported = export_and_analyse(ViewFlatten(), shape)
    analysis = exported.analysis
    x = _images(5, shape)  # not the probe's batch of 2
    data = ImageSet(x, torch.zeros(5, dtype=torch.long), "random")
    evaluator = SubstitutionEvaluator(exported.module, data, PlanTransform(analysis, original_weights(exported.module, analysis)))
    _assert_lowers_exactly(exported.onnx_model, analysis, evaluator, x, plans=2)


class LinearSqueezeExcitation(nn.Module):
    """The squeeze-excitation of older code: pool, view(b, c), Linear, ReLU, Linear, sigmoid, view(b, channels, 1, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(16, 4), nn.Linear(4, 16)
        self.b = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.a(x))
        n, c, _, _ = y.size()
        scale = torch.sigmoid(self.fc2(torch.relu(self.fc1(y.mean((2, 3)).view(n, c))))).view(n, 16, 1, 1)
        return self.fc(self.b(y * scale).mean((2, 3)))


def test_squeeze_excitation_through_linear_layers_and_views_lowers_exactly():
    shape = (3, 8, 8)
    exported = export_and_analyse(LinearSqueezeExcitation(), shape)
    analysis = exported.analysis
    assert {g.id for g in analysis.prunable_groups} == {"a", "fc1", "b"}  # the SE's output joins conv a's channels
    x = _images(5, shape)
    data = ImageSet(x, torch.zeros(5, dtype=torch.long), "random")
    evaluator = SubstitutionEvaluator(exported.module, data, PlanTransform(analysis, original_weights(exported.module, analysis)))
    _assert_lowers_exactly(exported.onnx_model, analysis, evaluator, x, plans=2)
