"""Channel-group analysis on real architectures: the groups a careful human would draw."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import randomise_batchnorm
from tests.helpers import build, export_and_analyse


@pytest.fixture(scope="module")
def resnet20():
    return export_and_analyse(randomise_batchnorm(build("cifar_resnet20")), (3, 32, 32))


def test_resnet20_inner_groups_one_per_block(resnet20):
    groups = {g.id: g for g in resnet20.analysis.groups}
    for stage, width in ((1, 16), (2, 32), (3, 64)):
        for block in range(3):
            g = groups[f"layer{stage}.{block}.conv1"]
            assert g.prunable and g.size == width
            # conv1 -> bn1 -> relu: three tensors, read only by the block's conv2.
            assert len(g.tensors) == 3
            assert g.consumers == (next(n.name for n in resnet20.analysis.graph.nodes if n.input[1:2] == [f"layer{stage}.{block}.conv2.weight"]),)


def test_resnet20_residual_stream_and_padded_shortcuts(resnet20):
    groups = {g.id: g for g in resnet20.analysis.groups}
    stream = groups["conv1"]  # the stem's 16 channels run through all three stages
    assert stream.prunable and stream.size == 16
    # Padded channels of stage 2 (8 + 8) and stage 3 (16 + 16) have their own producers.
    pad2, pad3 = groups["layer2.0.conv2"], groups["layer3.0.conv2"]
    assert pad2.size == 16 and pad3.size == 32
    # Stage-3 channel count = stem channels + stage-2 padding + stage-3 padding.
    stage3_tensor = next(t for t in pad3.tensors if t in stream.tensors)
    assert resnet20.analysis.channel_tensors[stage3_tensor] == stream.size + pad2.size + pad3.size
    # Each stream unit sits at the *middle* channels of stage 3 (after 16 leading pad channels).
    middle = np.concatenate([u[stage3_tensor] for u in stream.units])
    assert middle.min() >= 16 and middle.max() < 48


def test_resnet20_frozen_groups_are_model_input_and_output(resnet20):
    frozen = {g.id: g.frozen_reason for g in resnet20.analysis.frozen_groups}
    assert set(frozen) == {"input", "linear"}
    assert "model input" in frozen["input"] and "model output" in frozen["linear"]


def test_mobilenet_v2_groups():
    exported = export_and_analyse(randomise_batchnorm(build("mobilenet_v2")), (3, 64, 64))
    groups = {g.id: g for g in exported.analysis.groups}
    # Expansion channels: 1x1 conv -> BN -> ReLU6 -> depthwise -> BN -> ReLU6, one unit per channel.
    expand = groups["features.2.conv.0.0"]
    assert expand.prunable and expand.size == 96 and len(expand.tensors) == 6
    # Residual bottleneck stream of 24 channels couples features.2 and features.3 projections.
    stream = groups["features.2.conv.2"]
    assert stream.size == 24 and len(stream.producers) == 2
    assert len(exported.analysis.prunable_groups) == 25
    assert {g.id for g in exported.analysis.frozen_groups} == {"input", "classifier.1"}


def test_resnet18_downsample_couples_with_block_output():
    exported = export_and_analyse(randomise_batchnorm(build("resnet18")), (3, 64, 64))
    groups = {g.id: g for g in exported.analysis.groups}
    stage2 = groups["layer2.0.conv2"]
    # Stage 2 stream: block conv2 outputs and the 1x1 downsample conv are coupled by the residual adds.
    nodes = {n.name: n for n in exported.analysis.graph.nodes}
    producer_weights = {nodes[p].input[1] for p in stage2.producers}
    assert producer_weights == {"layer2.0.conv2.weight", "layer2.0.downsample.0.weight", "layer2.1.conv2.weight"}
    assert stage2.size == 128 and stage2.prunable


def test_unknown_operator_freezes_its_groups():
    import torch

    class TiledRows(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.b = torch.nn.Conv2d(8, 8, 1)
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, x):
            y = self.a(x).repeat(1, 1, 2, 1)  # exports as Expand/Tile, which the analysis has no rule for
            return self.fc(self.b(y).mean((2, 3)))

    exported = export_and_analyse(TiledRows(), (3, 8, 8))
    groups = {g.id: g for g in exported.analysis.groups}
    assert not groups["a"].prunable
    assert "not understood by the channel analysis" in groups["a"].frozen_reason
    assert groups["b"].prunable  # after the repeat, conv b's own output is ordinary
