"""Simplification must not change what a model computes."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from adans_toolchain.lowering.emit import simplify
from adans_toolchain.frontend.export import export_onnx
from adans_toolchain.frontend.architectures.tf_mobilenet_v1 import Conv2dSame
from adans_toolchain.runtime.sessions import run_onnx


class AsymmetricSamePadding(torch.nn.Module):
    """TF "SAME" padding of a stride-2 3x3 conv on an even input: 0 rows/columns before, 1 after,
    computed from the input's shape at run time as TF-slim MobileNetV1 does."""

    def __init__(self) -> None:
        super().__init__()
        # Several convolutions with equal pads: onnxsim shares one pads constant between them.
        self.convs = torch.nn.ModuleList([
            Conv2dSame(3, 8, 3, 2, bias=True),
            Conv2dSame(8, 8, 3, 1, groups=8, bias=True),
            Conv2dSame(8, 8, 3, 2, bias=True),
            Conv2dSame(8, 8, 3, 1, groups=8, bias=True),
        ])
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x):
        for conv in self.convs:
            x = F.relu6(conv(x))
        return self.head(x.mean((2, 3)))


def test_asymmetric_pad_before_a_conv_survives_simplification():
    torch.manual_seed(0)
    module = AsymmetricSamePadding().eval()
    model = export_onnx(module, (3, 16, 16))
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        expected = module(x).numpy()
    got = run_onnx(simplify(model), x.numpy())
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
