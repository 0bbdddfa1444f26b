"""Channel groups through grouped convolutions, channel shuffle, chunk/split, dense concatenation and channels-last blocks.

Each pattern on a small module first (the units a careful human would draw),
then on the torchvision architecture that made it matter (issue 16).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

from adans_toolchain.analysis.channels import CONSUMER, PRODUCER, analyse_channels, channel_slice
from adans_toolchain.analysis.graph import Graph
from adans_toolchain.frontend.export import export_onnx
from tests.conftest import randomise_batchnorm
from tests.helpers import build, export_and_analyse


def _groups(exported) -> dict:
    return {g.id: g for g in exported.analysis.groups}


def _channels(group, tensor: str) -> list[list[int]]:
    """The channels of `tensor` in each unit of `group`, unit by unit."""
    return [sorted(int(c) for c in unit[tensor]) for unit in group.units]


class GroupedBlock(nn.Module):
    """conv a -> BN -> ReLU -> grouped conv g (4 groups: 2 inputs and 3 outputs each) -> BN -> ReLU -> conv c."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.g, self.bn_g = nn.Conv2d(8, 12, 3, padding=1, groups=4), nn.BatchNorm2d(12)
        self.c = nn.Conv2d(12, 6, 1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn_a(self.a(x)))
        y = torch.relu(self.bn_g(self.g(y)))
        return self.fc(self.c(y).mean((2, 3)))


def test_grouped_conv_units_take_the_same_in_group_position_from_every_group():
    exported = export_and_analyse(randomise_batchnorm(GroupedBlock()), (3, 8, 8))
    groups = _groups(exported)
    nodes = {n.name: n for n in exported.analysis.graph.nodes}
    a, g = groups["a"], groups["g"]
    assert a.prunable and g.prunable
    # Input side: in-group position i of each of the 4 groups (2 channels per group).
    a_out = nodes[a.producers[0]].output[0]
    assert _channels(a, a_out) == [[0, 2, 4, 6], [1, 3, 5, 7]]
    # Output side: position j of each group (3 channels per group).
    g_out = nodes[g.producers[0]].output[0]
    assert _channels(g, g_out) == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]
    # The weight's input axis (2 wide) is read by in-group position; its output axis makes g's channels.
    bindings = {(b.axis, b.role): b.tensor for b in exported.analysis.bindings if b.param == "g.weight"}
    positions = bindings[(1, CONSUMER)]
    assert positions in a.tensors and exported.analysis.channel_tensors[positions] == 2
    assert _channels(a, positions) == [[0], [1]]
    assert bindings[(0, PRODUCER)] == g_out


class ShuffleBlock(nn.Module):
    """conv a (12 channels) -> channel shuffle with 3 groups of 4 -> conv b."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 12, 3, padding=1), nn.Conv2d(12, 6, 1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        n, c, h, w = y.shape
        y = y.view(n, 3, c // 3, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(self.b(y).mean((2, 3)))


def test_channel_shuffle_maps_channels_through_the_permutation():
    exported = export_and_analyse(ShuffleBlock(), (3, 8, 8))
    analysis = exported.analysis
    (shuffle,) = analysis.shuffles
    assert (shuffle.groups, shuffle.per_group) == (3, 4)
    a = _groups(exported)["a"]
    assert a.prunable and a.size == 4
    # Channel g*4 + b of conv a lands on b*3 + g after the shuffle; the 3 channels at position b go together.
    for unit in a.units:
        source, target = sorted(unit[shuffle.source]), sorted(unit[shuffle.target])
        b = source[0]
        assert source == [b, 4 + b, 8 + b] and target == [3 * b, 3 * b + 1, 3 * b + 2]
    # The intermediate 5-D tensors have no channel axis of their own.
    assert shuffle.split not in analysis.channel_tensors and shuffle.swapped not in analysis.channel_tensors


class ChunkAndSplit(nn.Module):
    """A channel chunk (exports as Slice) and an uneven channel split (exports as Split)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
        self.c1, self.c2 = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
        self.d1, self.d2 = nn.Conv2d(3, 4, 1), nn.Conv2d(5, 4, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = torch.chunk(self.a(x), 2, dim=1)
        first, second = torch.split(self.b(x), [3, 5], dim=1)
        y = torch.cat([self.c1(left), self.c2(right), self.d1(first), self.d2(second)], 1)
        return self.fc(y.mean((2, 3)))


def test_chunk_and_split_tie_each_part_to_its_offset():
    exported = export_and_analyse(ChunkAndSplit(), (3, 8, 8))
    analysis = exported.analysis
    made_by = {n.output[0]: n.input[1] for n in analysis.graph.nodes if n.op_type == "Conv"}
    parts = []  # (part tensor, conv output it comes from, offset)
    for node in analysis.graph.nodes:
        if node.op_type in ("Slice", "Split") and node.input[0] in made_by:
            offset = channel_slice(analysis.graph, node).start if node.op_type == "Slice" else 0
            for out in node.output:
                parts.append((out, node.input[0], offset))
                offset += analysis.graph.shapes[out][1]
    assert sorted((made_by[src], off, analysis.graph.shapes[p][1]) for p, src, off in parts) == [
        ("a.weight", 0, 4), ("a.weight", 4, 4), ("b.weight", 0, 3), ("b.weight", 3, 5)]
    for part, source, offset in parts:
        group = next(g for g in analysis.groups if part in g.tensors)
        assert group.prunable and group.size == analysis.graph.shapes[part][1]
        # Channel j of the part is channel offset + j of the conv that made it; the other part is another group.
        assert all(int(u[source][0]) == int(u[part][0]) + offset for u in group.units)
    assert len({next(g.id for g in analysis.groups if p in g.tensors) for p, _, _ in parts}) == 4


def test_dense_concatenation_gives_each_layers_new_features_their_own_group():
    exported = export_and_analyse(randomise_batchnorm(build("densenet121")), (3, 32, 32))
    groups = _groups(exported)
    analysis = exported.analysis
    layer = groups["features.denseblock1.denselayer2.conv2"]
    assert layer.prunable and layer.size == 32
    # Layer 2's 32 channels sit at 64 + 32 .. 64 + 63 of every later concatenation in the block.
    concats = [t for t in layer.tensors if analysis.channel_tensors[t] > 32]
    assert len(concats) >= 5
    for t in concats:
        assert sorted(int(c) for u in layer.units for c in u[t]) == list(range(96, 128))
    assert len(analysis.prunable_groups) == len(analysis.groups) - 2  # all but the model input and output


def test_squeeze_excitation_around_a_grouped_conv():
    """RegNet-Y: the SE's expansion conv makes channels multiplied into the grouped conv's output."""
    exported = export_and_analyse(randomise_batchnorm(build("regnet_y_400mf")), (3, 32, 32))
    groups = _groups(exported)
    nodes = {n.name: n for n in exported.analysis.graph.nodes}
    block = "trunk_output.block2.block2-1.f"
    grouped = groups[f"{block}.b.0"]
    assert grouped.prunable
    assert {nodes[p].input[1] for p in grouped.producers} == {f"{block}.b.0.weight", f"{block}.se.fc2.weight"}
    assert groups[f"{block}.se.fc1"].prunable  # the squeeze's hidden channels


# (model, groups the analysis froze before issue 16 and searched after it)
TORCHVISION = [
    ("resnext50_32x4d", 5, 37, 39),  # 32 grouped convolutions
    ("regnet_y_400mf", 21, 53, 55),  # grouped convolutions inside squeeze-excitation blocks
    ("shufflenet_v2_x1_0", 18, 31, 41),  # chunk, concat and channel shuffle in every block
    ("densenet121", 120, 120, 122),  # dense concatenation was already followed
]


@pytest.mark.parametrize("name,before,after,total", TORCHVISION, ids=[c[0] for c in TORCHVISION])
def test_torchvision_architectures_search_more_groups(name, before, after, total):
    analysis = export_and_analyse(build(name), (3, 32, 32)).analysis
    assert len(analysis.prunable_groups) == after
    assert after > before or name == "densenet121"
    assert len(analysis.groups) == total
    reasons = sorted(g.frozen_reason for g in analysis.frozen_groups)
    # Apart from the model input and output, only ShuffleNet's one-unit stream groups stay out of the search.
    assert all("model input" in r or "model output" in r or r.startswith("a single unit") for r in reasons), reasons


# -- channels-last (ConvNeXt) ------------------------------------------------------


def test_convnext_mlp_hidden_channels_are_groups_and_layer_norm_over_channels_freezes_with_its_reason():
    exported = export_and_analyse(build("convnext_tiny"), (3, 32, 32))
    analysis = exported.analysis
    # frontend.export stores the MLP's Linear weights under their parameter names (Transpose(weight), not onnx::MatMul_N).
    assert not [i.name for i in exported.onnx_model.graph.initializer if i.name.startswith("onnx::")]
    hidden = analysis.prunable_groups
    assert sorted(g.size for g in hidden) == [384] * 3 + [768] * 3 + [1536] * 9 + [3072] * 3  # 4 x dim per block
    nodes = {n.name: n for n in analysis.graph.nodes}
    first = next(g for g in hidden if g.size == 384)
    assert [nodes[p].op_type for p in first.producers] == ["MatMul"] and [nodes[c].op_type for c in first.consumers] == ["MatMul"]
    assert all(analysis.graph.shapes[t][-1] == 384 for t in first.tensors)  # channels-last: the last axis
    bindings = {(b.param, b.axis, b.role) for b in analysis.bindings if b.tensor in first.tensors}
    assert ("features.1.0.block.3.weight", 0, "producer") in bindings  # [out, in], the parameter's own layout
    assert ("features.1.0.block.5.weight", 1, "consumer") in bindings
    # The residual streams stay out: LayerNorm normalises over their channels.
    reasons = [g.frozen_reason for g in analysis.frozen_groups]
    assert any("LayerNormalization node" in r and "statistics span the channel axis" in r for r in reasons)
    assert all("LayerNormalization" in r or "model input" in r or "model output" in r for r in reasons), reasons
    # The channel axis is followed through the Permute: a channels-last tensor has the channels of its last axis.
    permuted = next(n.output[0] for n in analysis.graph.nodes if n.op_type == "Transpose" and n.input[0] in analysis.graph.activations)
    assert analysis.channel_tensors[permuted] == analysis.graph.shapes[permuted][-1] == 96
    assert analysis.channel_axes[permuted] == 3


def test_a_folded_linear_weight_no_parameter_matches_freezes_with_its_reason():
    """An exporter constant that is not a parameter's transpose (here: perturbed) keeps its name and freezes."""
    model = export_onnx(build("convnext_tiny").eval(), (3, 32, 32))
    first = next(n for n in model.graph.node if n.op_type == "Transpose" and n.name.endswith("/transpose"))
    param = next(i for i in model.graph.initializer if i.name == first.input[0])
    value = numpy_helper.to_array(param).T.copy()
    model.graph.initializer.append(numpy_helper.from_array(value, "onnx::MatMul_999"))
    for n in model.graph.node:
        n.input[:] = ["onnx::MatMul_999" if i == first.output[0] else i for i in n.input]
    model.graph.node.remove(first)
    analysis = analyse_channels(Graph.from_model(model, (3, 32, 32)))
    assert len(analysis.prunable_groups) == 17
    assert any("MatMul node" in g.frozen_reason and "folded transpose" in g.frozen_reason for g in analysis.frozen_groups)


def _layer_norm_net(axis: int) -> onnx.ModelProto:
    """conv (8 channels) -> LayerNormalization(axis) on NCHW -> conv -> pool -> Gemm."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "a.weight"),
        numpy_helper.from_array(np.ones((1, 8, 8, 8)[axis:], np.float32), "ln.weight"),
        numpy_helper.from_array(rng.standard_normal((6, 8, 1, 1)).astype(np.float32), "b.weight"),
        numpy_helper.from_array(rng.standard_normal((5, 6)).astype(np.float32), "fc.weight"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "a.weight"], ["a"], name="a", pads=[1, 1, 1, 1]),
        helper.make_node("LayerNormalization", ["a", "ln.weight"], ["ln"], name="ln", axis=axis),
        helper.make_node("Conv", ["ln", "b.weight"], ["b"], name="b"),
        helper.make_node("GlobalAveragePool", ["b"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.weight"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "ln", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("axis,prunable", [(-1, True), (-2, True), (1, False)], ids=["over-width", "over-space", "over-channels"])
def test_layer_norm_is_channelwise_unless_it_normalises_over_the_channel_axis(axis, prunable):
    analysis = analyse_channels(Graph.from_model(_layer_norm_net(axis), (3, 8, 8)))
    a = next(g for g in analysis.groups if g.id == "a")
    assert a.prunable == prunable
    if not prunable:
        assert "LayerNormalization node 'ln'" in a.frozen_reason and "channel axis" in a.frozen_reason
