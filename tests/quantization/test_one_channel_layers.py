"""A layer pruned to one output channel: its int8 bias has a one-element scale and no axis, read as per tensor."""

from __future__ import annotations

import torch

from adans_toolchain.frontend.export import export_onnx
from adans_toolchain.quantization import quantize_model, read_spec, validate_int8


class _OneChannelThenFour(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.narrow = torch.nn.Conv2d(3, 1, 3, padding=1)  # what a search may leave of a group: one unit
        self.wide = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.wide(torch.relu(self.narrow(x)))).mean((2, 3)))


def test_a_one_channel_layer_is_read_per_tensor_and_simulated_as_onnx_runtime_runs_it():
    torch.manual_seed(0)
    module = _OneChannelThenFour().eval()
    shape = (3, 8, 8)
    x = torch.randn(64, *shape).numpy()
    model = export_onnx(module, shape)
    int8 = quantize_model(model, x[:32], None)
    spec = read_spec(int8, model)
    narrow_bias = next(c for (node, index), c in spec.constants.items() if "narrow" in node and index == 2)
    assert narrow_bias.axis is None and narrow_bias.scale.size == 1
    validation = validate_int8(int8, model, x, image_shape=shape)
    assert validation.passed and validation.result.top1_agreement >= 0.99
