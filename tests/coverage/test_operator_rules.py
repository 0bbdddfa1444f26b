"""Channel-analysis rules for operators the listed architectures do not all use.

Each rule either ties channels (and then the compiled model must validate
numerically) or freezes the group with a reason naming the operator.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from adans_toolchain.analysis.channels import analyse_channels
from adans_toolchain.analysis.graph import Graph
from adans_toolchain.frontend.loading import build_architecture
from adans_toolchain.frontend.onnx_model import normalise_onnx
from tests.conftest import randomise_batchnorm
from tests.coverage.harness import TINY, compile_and_check, write_random_images


class _Net:
    """A small ONNX conv net written node by node (opset 13)."""

    def __init__(self, channels: int = 8, size: int = 8, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.size = size
        self.x = self.conv("input", 3, channels, "stem")

    def const(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def conv(self, x: str, c_in: int, c_out: int, name: str) -> str:
        w = self.const(f"{name}.weight", self.rng.standard_normal((c_out, c_in, 3, 3)).astype(np.float32) * 0.3)
        b = self.const(f"{name}.bias", self.rng.standard_normal(c_out).astype(np.float32) * 0.1)
        self.nodes.append(helper.make_node("Conv", [x, w, b], [f"{name}_out"], name=name, pads=[1, 1, 1, 1]))
        self.nodes.append(helper.make_node("Relu", [f"{name}_out"], [f"{name}_relu"], name=f"{name}_relu"))
        return f"{name}_relu"

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attrs) -> list[str]:
        name = f"{op_type.lower()}{len(self.nodes)}"
        outs = [f"{name}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, **attrs))
        return outs

    def model(self, x: str, c: int, classes: int = 5, opset: int = 13) -> onnx.ModelProto:
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"))
        self.nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"))
        w = self.const("fc.weight", self.rng.standard_normal((classes, c)).astype(np.float32))
        b = self.const("fc.bias", self.rng.standard_normal(classes).astype(np.float32))
        self.nodes.append(helper.make_node("Gemm", ["flat", w, b], ["logits"], name="fc", transB=1))
        graph = helper.make_graph(
            self.nodes, "net", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, self.size, self.size])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", classes])], self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        onnx.checker.check_model(model, full_check=True)
        return model


def _groups(model: onnx.ModelProto, size: int = 8) -> dict:
    normalise_onnx(model)
    analysis = analyse_channels(Graph.from_model(model, (3, size, size)))
    return {g.id: g for g in analysis.groups}


def test_resize_with_scales_is_channelwise():
    net = _Net()
    up = net.op("Resize", [net.x, "", net.const("scales", np.array([1, 1, 2, 2], np.float32))], mode="linear")[0]
    down = net.op("MaxPool", [up], kernel_shape=[2, 2], strides=[2, 2])[0]
    groups = _groups(net.model(net.conv(down, 8, 6, "head"), 6))
    assert groups["stem"].prunable and groups["stem"].size == 8


def test_resize_with_stored_full_sizes_is_frozen():
    net = _Net()
    sizes = net.const("sizes", np.array([2, 8, 16, 16], np.int64))  # spells out batch and channels
    up = net.op("Resize", [net.x, "", "", sizes], mode="nearest")[0]
    groups = _groups(net.model(net.conv(up, 8, 6, "head"), 6))
    assert "Resize node" in groups["stem"].frozen_reason and "sizes" in groups["stem"].frozen_reason


def test_upsample_is_channelwise():
    net = _Net()
    up = net.op("Upsample", [net.x, net.const("scales", np.array([1, 1, 2, 2], np.float32))], mode="nearest")[0]
    groups = _groups(net.model(net.conv(up, 8, 6, "head"), 6, opset=9), 8)
    assert groups["stem"].prunable


def test_split_over_space_keeps_channels_and_over_channels_ties_each_part():
    net = _Net()
    top, bottom = net.op("Split", [net.x, net.const("halves", np.array([4, 4], np.int64))], outputs=2, axis=2)
    joined = net.op("Concat", [bottom, top], axis=2)[0]
    groups = _groups(net.model(net.conv(joined, 8, 6, "head"), 6))
    assert groups["stem"].prunable

    net = _Net()
    a, b = net.op("Split", [net.x, net.const("halves", np.array([4, 4], np.int64))], outputs=2, axis=1)
    joined = net.op("Add", [a, b])[0]
    groups = _groups(net.model(net.conv(joined, 4, 6, "head"), 6))
    # Each part ties to its offset in the input; the Add ties channel j of one part to channel j of the other.
    assert groups["stem"].prunable and groups["stem"].size == 4
    assert [sorted(u["stem_relu"]) for u in groups["stem"].units] == [[j, 4 + j] for j in range(4)]


def test_gather_over_space_is_channelwise_over_channels_frozen():
    net = _Net()
    rows = net.op("Gather", [net.x, net.const("rows", np.array([0, 2, 4, 6], np.int64))], axis=2)[0]
    groups = _groups(net.model(net.conv(rows, 8, 6, "head"), 6))
    assert groups["stem"].prunable

    net = _Net()
    picked = net.op("Gather", [net.x, net.const("channels", np.array([0, 2, 4, 6], np.int64))], axis=1)[0]
    groups = _groups(net.model(net.conv(picked, 4, 6, "head"), 6))
    assert "Gather node" in groups["stem"].frozen_reason


@pytest.mark.parametrize("op,attrs,fragment", [
    ("LRN", {"size": 3}, "neighbouring channels"),
    ("DepthToSpace", {"blocksize": 2}, "channels into space"),
    ("LpNormalization", {"axis": 1}, "across channels"),
])
def test_channel_mixing_operators_freeze_with_their_reason(op, attrs, fragment):
    net = _Net()
    y = net.op(op, [net.x], **attrs)[0]
    c = 2 if op == "DepthToSpace" else 8
    groups = _groups(net.model(net.conv(y, c, 6, "head"), 6))
    assert groups["stem"].frozen_reason.startswith(f"{op} node") and fragment in groups["stem"].frozen_reason
    assert groups["head"].prunable  # the rest of the network is still searched


def test_hand_written_onnx_with_these_operators_compiles_exactly(tmp_path):
    """Resize, a spatial Split and an ONNX LRN in one model, compiled from the .onnx file."""
    net = _Net(size=16)
    up = net.op("Resize", [net.x, "", net.const("scales", np.array([1, 1, 2, 2], np.float32))], mode="linear")[0]
    down = net.op("AveragePool", [up], kernel_shape=[2, 2], strides=[2, 2])[0]
    mid = net.conv(down, 8, 12, "mid")
    top, bottom = net.op("Split", [mid, net.const("halves", np.array([8, 8], np.int64))], outputs=2, axis=3)
    joined = net.op("Concat", [bottom, top], axis=3)[0]
    lrn = net.op("LRN", [net.conv(joined, 12, 10, "pre")], size=3)[0]
    model = net.model(net.conv(lrn, 10, 6, "head"), 6)
    path = tmp_path / "ops.onnx"
    onnx.save(model, str(path))
    data = write_random_images(tmp_path / "val.npz", 4, 16, classes=5)
    report = compile_and_check([path, "--data", data, *TINY], tmp_path / "out")
    by_id = {g["id"]: g for g in report["groups"]}
    assert by_id["stem"]["prunable"] and by_id["mid"]["prunable"] and by_id["head"]["prunable"]
    assert "LRN node" in by_id["pre"]["reason"]


@pytest.mark.parametrize("arch,followed", [
    ("tests.coverage.synthetic:resize_split_net", ["c4", "c4#2"]),  # each half of the channel chunk is a group
    ("tests.coverage.synthetic:shuffle_net", ["c1", "g"]),  # both sides of the grouped conv, through the shuffle
], ids=["resize_split_chunk", "grouped_conv_channel_shuffle"])
def test_pytorch_models_with_these_operators_compile_exactly(arch, followed, tmp_path):
    module = randomise_batchnorm(build_architecture(arch), seed=1)
    torch.save(module.state_dict(), tmp_path / "w.pt")
    data = write_random_images(tmp_path / "val.npz", 4, 32, classes=5)
    report = compile_and_check([tmp_path / "w.pt", "--arch", arch, "--data", data, *TINY], tmp_path / "out")
    by_id = {g["id"]: g for g in report["groups"]}
    assert all(by_id[gid]["prunable"] for gid in followed), [by_id[gid] for gid in followed]
    assert len(report["frozen_groups"]) == 2, report["frozen_groups"]  # the model input and output only
    assert any(g["prunable"] and g["kept"] < g["channels"] for g in report["groups"])
